"""A careless V1 function for the masking tests: it prints the secret it reads, every usual way.

Packaged with the unmodified `greengrasssdk`. Each print is followed by a `done <how>` line on
stdout, so a test knows when the lines before it have reached the core's log.
"""

import json
import sys

import greengrasssdk

secrets_client = greengrasssdk.client("secretsmanager")
lambda_client = greengrasssdk.client("lambda")


def print_secret(event, context):
    """Print the secret `event["SecretId"]` as `event["how"]` says, or raise with it."""
    value = secrets_client.get_secret_value(SecretId=event["SecretId"])["SecretString"]
    how = event["how"]
    if how == "print":
        print(value)
    elif how == "lines":
        for line in value.splitlines():
            print(line.strip())
    elif how == "repr":
        print(repr(value))
    elif how == "json.dumps":
        print(json.dumps(value))
    elif how == "fields":
        document = json.loads(value)
        print(document)  # the dict's repr
        print(json.dumps(document))
        for key, field in document.items():
            print(key, "=", field)
    elif how == "raise":
        sys.stdout.flush()
        raise ValueError("could not use " + value)
    print("done " + how)
    return {"printed": how}


def relay(event, context):
    """Invoke another function, print its answer and return it (an error answer included)."""
    response = lambda_client.invoke(
        FunctionName=event["FunctionName"],
        InvocationType="RequestResponse",
        Payload=json.dumps(event["Payload"]),
    )
    payload = response["Payload"]
    # The SDK hands an error answer over as bytes, a result as a stream.
    body = payload if isinstance(payload, bytes) else payload.read()
    print("got " + body.decode())
    return {"FunctionError": response["FunctionError"], "Payload": json.loads(body)}
