"""The V1 environment of a Lambda worker, read once at import as the V1 runtime did."""

import os

AUTH_TOKEN = os.getenv("AWS_CONTAINER_AUTHORIZATION_TOKEN")
MY_FUNCTION_ARN = os.getenv("MY_FUNCTION_ARN")
SHADOW_FUNCTION_ARN = os.getenv("SHADOW_FUNCTION_ARN")
ROUTER_FUNCTION_ARN = os.getenv("ROUTER_FUNCTION_ARN")
SECRETS_MANAGER_FUNCTION_ARN = os.getenv("SECRETS_MANAGER_FUNCTION_ARN")
GGC_MAX_INTERFACE_VERSION = os.getenv("GGC_MAX_INTERFACE_VERSION")
GG_DAEMON_PORT = os.getenv("GG_DAEMON_PORT", "8000")
# Where the core's IPC socket is; not a V1 variable (V1 used HTTP on GG_DAEMON_PORT).
EDGE_IPC_SOCKET = os.getenv("EDGE_IPC_SOCKET")
