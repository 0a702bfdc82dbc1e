"""V1 handlers that read a secret over and over through the unmodified greengrasssdk."""

import json
import os
import subprocess
import sys
import time

import greengrasssdk

from edge.child.function import answers_cached

secrets_client = greengrasssdk.client("secretsmanager")


def _wait_cached(event):
    """With `wait_cached`, wait (up to 5 s) until this worker caches answers."""
    deadline = time.monotonic() + 5
    while event.get("wait_cached") and not answers_cached() and time.monotonic() < deadline:
        time.sleep(0.01)


def read(event, context):
    """Read a secret `times` times; report the distinct values seen, or the SDK's error.

    With `wait_cached`, first wait (up to 5 s) until this worker caches answers.
    """
    _wait_cached(event)
    seen = set()
    for _ in range(event.get("times", 1)):
        try:
            seen.add(secrets_client.get_secret_value(SecretId=event["SecretId"])["SecretString"])
        except Exception as exc:  # the SDK's own SecretsManagerError
            return {"error": type(exc).__name__, "message": str(exc), "pid": os.getpid()}
    return {
        "values": sorted(seen),
        "pid": os.getpid(),
        "uid": os.getuid(),
        "cached": answers_cached(),
    }


# Run by `fork_and_exec`: which of the sockets the core handed the worker this program holds.
_HELD = """
import json, os
held = {}
for name in ("EDGE_IPC_FD", "EDGE_IPC_WATCH_FD"):
    try:
        os.fstat(int(os.environ[name]))
        held[name] = True
    except (KeyError, OSError):
        held[name] = False
print(json.dumps(held))
"""


def fork_and_exec(event, context):
    """What a forked child and a program run with every inheritable descriptor get of the core.

    The forked child reads the secret (or says why it can't) and says whether it caches; the
    program says which of the sockets the core handed the worker it holds. Then this worker
    reads again. With `wait_cached`, all that once this worker caches answers.
    """
    _wait_cached(event)
    cached_before = answers_cached()
    secret_id = event["SecretId"]
    readable, writable = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(readable)
        try:
            got = {"value": secrets_client.get_secret_value(SecretId=secret_id)["SecretString"]}
        except Exception as exc:
            got = {"error": type(exc).__name__, "message": str(exc)}
        got["cached"] = answers_cached()
        os.write(writable, json.dumps(got).encode())
        os._exit(0)
    os.close(writable)
    with os.fdopen(readable) as pipe:
        forked = json.loads(pipe.read())
    os.waitpid(child, 0)
    program = subprocess.run(
        [sys.executable, "-S", "-c", _HELD],
        close_fds=False,
        capture_output=True,
        check=True,
        text=True,
    )
    again = secrets_client.get_secret_value(SecretId=secret_id)["SecretString"]
    return {
        "forked": forked,
        "executed": json.loads(program.stdout),
        "handed": {n: n in os.environ for n in ("EDGE_IPC_FD", "EDGE_IPC_WATCH_FD")},
        "again": again,
        "cached_before": cached_before,
        "cached": answers_cached(),
    }
