"""V1 handlers that read a secret over and over through the unmodified greengrasssdk."""

import os
import time

import greengrasssdk

from edge.child.function import answers_cached

secrets_client = greengrasssdk.client("secretsmanager")


def read(event, context):
    """Read a secret `times` times; report the distinct values seen, or the SDK's error.

    With `wait_cached`, first wait (up to 5 s) until this worker caches answers.
    """
    deadline = time.monotonic() + 5
    while event.get("wait_cached") and not answers_cached() and time.monotonic() < deadline:
        time.sleep(0.01)
    seen = set()
    for _ in range(event.get("times", 1)):
        try:
            seen.add(secrets_client.get_secret_value(SecretId=event["SecretId"])["SecretString"])
        except Exception as exc:  # the SDK's own SecretsManagerError
            return {"error": type(exc).__name__, "message": str(exc), "pid": os.getpid()}
    return {"values": sorted(seen), "pid": os.getpid(), "cached": answers_cached()}
