# SPDX-License-Identifier: Apache-2.0
"""The control plane (`edge cloud`): versioned definitions, groups, signed deployments."""
