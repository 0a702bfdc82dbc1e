# SPDX-License-Identifier: Apache-2.0
"""Webhook, the worker: POST each message as JSON to a URL with a bearer token from a secret.

Input on `webhook/send`: any JSON object; it is POSTed as is (`Content-Type: application/json`,
`Authorization: Bearer <token>`). An optional `id` is echoed in the status, an optional
`retries` (0 to MAX_RETRIES, default 0) retries 429, 5xx and network errors with backoff.
Output on `webhook/status`: `{"response": {"status": "success", "payload": {"status_code"}},
"id"}` or `{"response": {"status": "fail", "error", "error_message", "payload": null}, "id"}`.
"""

from __future__ import annotations

import json
from typing import Any, Final

from connectors import kit

INPUT_TOPIC: Final = "webhook/send"
STATUS_TOPIC: Final = "webhook/status"
MAX_RETRIES: Final = 5


def function_handler(event: object, context: Any) -> dict[str, Any]:  # noqa: ANN401
    """Deliver one message and publish its status on webhook/status."""
    return kit.serve(handle, STATUS_TOPIC, event, context)


def handle(
    event: object, topic: str | None, until: float, parameters: dict[str, str]
) -> dict[str, Any]:
    """Validate and deliver one message; return its status document."""
    request_id: str | None = None
    try:
        message = kit.as_object(event)
        request_id = kit.message_id(message)
        if topic not in {None, INPUT_TOPIC}:
            raise kit.bad_request(f"topic {topic!r} is not {INPUT_TOPIC}")
        status_code = deliver(message, parameters, until)
    except kit.ConnectorError as exc:
        return kit.failure(request_id, exc)
    return kit.success(request_id, {"status_code": status_code})


def deliver(message: dict[str, Any], parameters: dict[str, str], until: float) -> int:
    """POST the message with the bearer token; return the 2xx status.

    Raises:
        kit.ConnectorError: Bad `retries`, the token can't be read, or the server refused.
    """
    retries = message.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise kit.bad_request("retries must be a non-negative integer")
    token = kit.read_secret_string(parameters["BearerTokenSecretArn"], "bearer token")
    answer = kit.post(
        parameters["WebhookUrl"],
        body=json.dumps(message).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        retries=min(retries, MAX_RETRIES),
        until=until,
    )
    if not 200 <= answer.status < 300:  # noqa: PLR2004 - HTTP success
        text = answer.body[:200].decode("utf-8", "replace")
        raise kit.ConnectorError("HttpError", f"HTTP {answer.status}: {text}")
    return answer.status
