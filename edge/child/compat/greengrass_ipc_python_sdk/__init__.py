"""Greengrass V1's `greengrass_ipc_python_sdk` package, backed by the edge core's IPC."""
