"""Greengrass V1 Lambda handlers used by the worker tests; written for V1, never changed.

Packaged in a zip together with the unmodified `greengrasssdk` from PyPI.
"""

import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import greengrasssdk

secrets_client = greengrasssdk.client("secretsmanager")
lambda_client = greengrasssdk.client("lambda")
iot_client = greengrasssdk.client("iot-data")


def function_handler(event, context):
    """The reference document's handler: read a secret (name or ARN, optional label)."""
    kwargs = {"SecretId": event["SecretId"]}
    if "VersionStage" in event:
        kwargs["VersionStage"] = event["VersionStage"]
    try:
        response = secrets_client.get_secret_value(**kwargs)
    except Exception as exc:  # the SDK's own SecretsManagerError
        return {"error": type(exc).__name__, "message": str(exc)}
    response["CreatedDate"] = response["CreatedDate"].isoformat()
    return response


def leak(event, context):
    """Prints the secret it reads, as careless code does: the core must mask it."""
    value = secrets_client.get_secret_value(SecretId=event["SecretId"])["SecretString"]
    print("the password is " + value)
    return {"printed": True}


def context_fields(event, context):
    """Returns what V1's context and environment give a handler."""
    return {
        "function_name": context.function_name,
        "invoked_function_arn": context.invoked_function_arn,
        "aws_request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "MY_FUNCTION_ARN": os.environ.get("MY_FUNCTION_ARN"),
        "SECRETS_MANAGER_FUNCTION_ARN": os.environ.get("SECRETS_MANAGER_FUNCTION_ARN"),
        "GGC_MAX_INTERFACE_VERSION": os.environ.get("GGC_MAX_INTERFACE_VERSION"),
        "GREETING": os.environ.get("GREETING"),
        "PYTHONHOME": os.environ.get("PYTHONHOME"),
        "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS"),
        "has_token": bool(os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")),
        "event": event,
    }


def sleep(event, context):
    """Sleeps as long as asked."""
    time.sleep(float(event["seconds"]))
    return {"slept": event["seconds"]}


def crash(event, context):
    """Dies without answering."""
    os._exit(7)


def hog(event, context):
    """Allocates far more than its MemorySize allows."""
    blocks = [bytearray(1024 * 1024) for _ in range(int(event["megabytes"]))]
    time.sleep(2)
    return {"allocated": len(blocks)}


def fail(event, context):
    """Raises: a Handled function error."""
    raise ValueError("bad input: " + str(event))


def invoke_other(event, context):
    """Invokes another local function through the SDK and returns its answer."""
    response = lambda_client.invoke(
        FunctionName=event["FunctionName"],
        InvocationType="RequestResponse",
        Payload=json.dumps(event["Payload"]),
    )
    return {
        "FunctionError": response["FunctionError"],
        "Payload": json.loads(response["Payload"].read()),
    }


def publish(event, context):
    """Publishes through the core's router."""
    iot_client.publish(topic=event["topic"], payload=json.dumps(event["message"]))
    return {"published": event["topic"]}


def echo(event, context):
    """Returns its event; with a subject it republishes it to edge-test/echoed."""
    if context.client_context.custom and context.client_context.custom.get("subject"):
        iot_client.publish(
            topic="edge-test/echoed",
            payload=json.dumps({"got": event, "subject": context.client_context.custom["subject"]}),
        )
    return {"echo": event}


def whoami(event, context):
    """Reports the identity it runs under and reads a secret through the SDK."""
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "inherited_ipc": "EDGE_IPC_FD" in os.environ,
        "secret": secrets_client.get_secret_value(SecretId=event["SecretId"])["SecretString"],
    }


def copy_files(event, context):
    """Copies and chmods its own files, as V1 code does: shutil.copy, copy2, chmod, chown."""
    work = Path(tempfile.mkdtemp(prefix="v1-copy-"))
    source = work / "data.txt"
    source.write_text(event.get("text", "data"))
    source.chmod(0o600)
    copied = Path(shutil.copy(source, work / "copy.txt"))
    kept = Path(shutil.copy2(source, work / "copy2.txt"))
    tree = shutil.copytree(work, f"{work}-tree")
    os.chmod(copied, 0o644)
    readable = stat.S_IMODE(copied.stat().st_mode)
    os.chmod(kept, 0o755)  # noqa: S103 - a script of its own, made runnable
    runnable = stat.S_IMODE(kept.stat().st_mode)
    os.chown(copied, os.getuid(), os.getgid())
    text = copied.read_text()
    shutil.rmtree(work)
    shutil.rmtree(tree)
    return {"copy": oct(readable), "copy2": oct(runnable), "text": text}
