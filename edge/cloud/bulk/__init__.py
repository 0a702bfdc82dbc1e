# SPDX-License-Identifier: Apache-2.0
"""Bulk deployments and rollouts: V1's StartBulkDeployment, paced, ramped and abortable."""
