"""A V1 handler that reads a secret through greengrasssdk, then reports its worker's modules."""

import sys

import greengrasssdk

secrets_client = greengrasssdk.client("secretsmanager")


def modules(event, context):
    """Read `SecretId`, then return the names of every module loaded in this worker."""
    secrets_client.get_secret_value(SecretId=event["SecretId"])
    return sorted(sys.modules)
