"""Greengrass V1 runtime modules that the `greengrasssdk` package imports but does not ship.

This directory is put on a worker's `sys.path` (not imported as `edge.child.compat`), so the
packages below it are importable under their V1 names: `greengrass_common` and
`greengrass_ipc_python_sdk`.
"""
