# SPDX-License-Identifier: Apache-2.0
"""Built-in connectors, one package each; `connectors/README.md` says how to write one.

The core finds them through each package's `MANIFEST` (`connectors.schema`). Kept empty on
purpose: a connector's worker imports `connectors.kit`, and nothing here may cost it memory.
"""
