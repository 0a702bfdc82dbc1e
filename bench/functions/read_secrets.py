# SPDX-License-Identifier: Apache-2.0
"""A Greengrass V1 Lambda handler that reads several secrets and labels through `greengrasssdk`.

`bench/core_crash.py` zips this file with the unmodified `greengrasssdk` from site-packages,
deploys it (on demand, not pinned) and invokes it after every restart of the core: its answer
proves that the core serves, and which store it serves from. Plain V1 code.

Event (JSON):
  SecretIds  names of the secrets to read
  Labels     staging labels to read of each (AWSCURRENT and the additional ones)

It answers {"<SecretId>|<label>": [VersionId, SecretString]} for every pair. The benchmark
compares the answer with what it put in Secrets Manager and never prints it.
"""

import greengrasssdk

secrets_client = greengrasssdk.client("secretsmanager")


def function_handler(event, context):  # noqa: ARG001 - V1's handler signature
    """Read every (secret, label) pair asked for; answer version ids and values."""
    answer = {}
    for secret_id in event["SecretIds"]:
        for label in event["Labels"]:
            response = secrets_client.get_secret_value(SecretId=secret_id, VersionStage=label)
            answer[f"{secret_id}|{label}"] = [response["VersionId"], response["SecretString"]]
    return answer
