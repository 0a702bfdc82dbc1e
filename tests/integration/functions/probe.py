"""A hostile V1 function for the isolation tests: it tries every route to secrets not its own.

Packaged with the unmodified `greengrasssdk`. Each handler returns what it managed to read (a
real leak would show up in the test's assertions, in the core's log and in the session's leak
check), never raising, so one refusal doesn't hide the next attempt.
"""

import base64
import json
import os
import secrets
import sys
from pathlib import Path

import greengrasssdk

from edge.ipc.client import IpcClient  # the core's own client, as hostile code could use

secrets_client = greengrasssdk.client("secretsmanager")
lambda_client = greengrasssdk.client("lambda")
TOKEN_VARIABLE = "AWS_CONTAINER_AUTHORIZATION_TOKEN"


def _plain(value):
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def secret_ids(event, context):
    """Ask the SDK for each {SecretId, VersionId?, VersionStage?}; report answer or error."""
    results = []
    for given in event["attempts"]:
        attempt = dict(given)
        if "Repeat" in attempt:  # a huge SecretId, built here: argv can't carry megabytes
            text, times = attempt.pop("Repeat")
            attempt["SecretId"] = text * times
        try:
            if attempt.get("Raw"):  # past the SDK (it refuses VersionId itself), own token
                args = {k: v for k, v in attempt.items() if k != "Raw"}
                answer = _own_client().call("secretsmanager.get_secret_value", args)
            else:
                answer = secrets_client.get_secret_value(**attempt)
        except Exception as exc:  # the SDK's SecretsManagerError or a local refusal
            status = getattr(exc, "status", None)
            results.append({"ok": False, "error": f"({status}) {str(exc)[:300]}"})
        else:
            results.append({"ok": True, "answer": {k: _plain(v) for k, v in answer.items()}})
    return results


_client = []


def _own_client():
    if not _client:
        _client.append(IpcClient(os.environ["EDGE_IPC_SOCKET"], os.environ[TOKEN_VARIABLE]))
    return _client[0]


def _environ_of(pid):
    return Path(f"/proc/{pid}/environ").read_bytes()


def lifted_tokens():
    """Worker tokens found in other processes' /proc/<pid>/environ (readable as root)."""
    own = os.environ[TOKEN_VARIABLE]
    found = set()
    for entry_path in Path("/proc").iterdir():
        pid = entry_path.name
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            entries = _environ_of(pid).split(b"\0")
        except OSError:
            continue
        for entry in entries:
            name, _, value = entry.partition(b"=")
            if name == TOKEN_VARIABLE.encode() and value and value.decode() != own:
                found.add(value.decode())
    return sorted(found)


def raw_ipc(event, context):
    """Talk to a core's socket directly with forged, altered and lifted tokens."""
    own = os.environ[TOKEN_VARIABLE]
    socket_path = event.get("socket") or os.environ["EDGE_IPC_SOCKET"]
    tokens = {
        "own": own,
        "random": secrets.token_urlsafe(32),
        "empty": "",
        "own-altered": own[:-1] + ("A" if own[-1] != "A" else "B"),
        "own-truncated": own[:16],
    }
    operator_token = event.get("operator_token_file")
    results = {}
    if operator_token:
        try:
            tokens["operator"] = Path(operator_token).read_text().strip()
        except OSError as exc:  # confined: the state directory is hidden from workers
            results["operator-file"] = {"ok": False, "error": f"unreadable: {exc.strerror}"}
    for n, token in enumerate(lifted_tokens()):
        tokens[f"lifted-{n}"] = token
    for name, token in tokens.items():
        if name not in event.get("use", tokens):
            continue
        client = IpcClient(socket_path, token)
        try:
            answer = client.call("secretsmanager.get_secret_value", {"SecretId": event["SecretId"]})
        except Exception as exc:
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        else:
            results[name] = {"ok": True, "answer": {k: _plain(v) for k, v in answer.items()}}
        finally:
            client.close()
    return results


def snoop(event, context):
    """Everything the worker can see of itself and of the core that started it."""
    core = os.getppid()
    seen = {
        "own_environ": dict(os.environ),
        "own_argv": sys.argv,
        "core_pid": core,
        "lifted_tokens": len(lifted_tokens()),
    }
    for name in ("environ", "cmdline"):
        try:
            seen["core_" + name] = (
                Path(f"/proc/{core}/{name}").read_bytes().decode("utf-8", "replace")
            )
        except OSError as exc:
            seen["core_" + name] = f"unreadable: {exc.strerror}"
    return seen


def invoke(event, context):
    """Invoke another local function; return its answer as it came."""
    response = lambda_client.invoke(
        FunctionName=event["FunctionName"],
        InvocationType="RequestResponse",
        Payload=json.dumps(event.get("Payload", {})),
    )
    payload = response["Payload"]
    payload = payload if isinstance(payload, bytes) else payload.read()
    return {
        "FunctionError": response["FunctionError"],
        "Payload": payload.decode("utf-8", "replace"),
    }


def _attempt(action):
    try:
        value = action()
    except OSError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc.strerror}"}
    return {"ok": True, "value": _plain(value)}


def disk(event, context):
    """Go around the IPC: read the core's files, write code others run, signal the core."""
    results = {}
    for path in event["read"]:
        results["read " + path] = _attempt(lambda p=path: Path(p).read_bytes()[:64].hex())
    for path in event["list"]:
        results["list " + path] = _attempt(lambda p=path: sorted(e.name for e in Path(p).iterdir()))
    for path in event["write"]:
        results["write " + path] = _attempt(lambda p=path: Path(p).write_text("# planted\n"))
    for path in event["remove"]:
        results["remove " + path] = _attempt(lambda p=path: Path(p).unlink())
    for pid in event["environ_of"]:
        results[f"environ {pid}"] = _attempt(lambda p=pid: len(_environ_of(p)))
    for pid in event["signal"]:
        results[f"signal {pid}"] = _attempt(lambda p=pid: os.kill(p, 0))
    return results


def modes(event, context):
    """Change file modes around Landlock, which doesn't govern chmod: the core's files, setuid.

    `chmod`: [path, mode] pairs; `stat` and `list`: paths; `own_setuid`: a file this function
    creates and then tries to make setuid and setgid, by path and by descriptor.
    """
    results = {}
    for path, mode in event.get("chmod", []):
        results[f"chmod {mode:o} {path}"] = _attempt(lambda p=path, m=mode: os.chmod(p, m))
    for path in event.get("stat", []):
        results["stat " + path] = _attempt(lambda p=path: oct(Path(p).stat().st_mode))
    for path in event.get("list", []):
        results["list " + path] = _attempt(lambda p=path: sorted(e.name for e in Path(p).iterdir()))
    own = event.get("own_setuid")
    if own:
        Path(own).write_text("#!/bin/sh\n")
        results["chmod 4755 own"] = _attempt(lambda: os.chmod(own, 0o4755))  # noqa: S103
        results["chmod 2755 own"] = _attempt(lambda: os.chmod(own, 0o2755))  # noqa: S103
        fd = os.open(own, os.O_RDONLY)
        try:
            results["fchmod 4755 own"] = _attempt(lambda: os.fchmod(fd, 0o4755))
        finally:
            os.close(fd)
    return results
