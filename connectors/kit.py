# SPDX-License-Identifier: Apache-2.0
"""What a built-in connector's worker uses: its parameters, secrets, topics, statuses, HTTP.

Runs inside the connector's worker process (never in the core), next to the unmodified
`greengrasssdk`: secrets come from `secretsmanager.get_secret_value` and statuses go out through
`iot-data.publish`, exactly as a V1 Lambda function would do it, over the core's IPC with the
connector's own identity (its ConnectorArn). Lean on purpose, like the Lambda runtime: the
standard library's `urllib.request` for HTTP, nothing else.

Secret values are read per message (an in-memory lookup on the core, so a token rotated by a
redeployment is used by the next message) and are never printed; `failure` masks every value
read in this process out of an error message before it is published, in case a remote server
echoes one back.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

#: The environment variable holding the connector's Parameters as a JSON object of strings.
PARAMETERS_VARIABLE: Final = "EDGE_CONNECTOR_PARAMETERS"
#: Retry delays: the first about this long, doubling up to the cap (with jitter).
BACKOFF_INITIAL_SECONDS: Final = 0.25
BACKOFF_MAX_SECONDS: Final = 8.0
#: Longest one HTTP attempt may take; less when the invocation's deadline is nearer.
ATTEMPT_TIMEOUT_SECONDS: Final = 10.0
#: Time kept back from the invocation's Timeout to publish the status after the last attempt.
STATUS_RESERVE_SECONDS: Final = 2.0
#: Bodies larger than this are not read (a status quotes only a short message anyway).
MAX_RESPONSE_BYTES: Final = 64 * 1024
_MASK: Final = "****"
#: Shortest time worth starting another attempt with.
_MIN_ATTEMPT: Final = 0.5

_clients: dict[str, Any] = {}
_secret_values: set[str] = set()


class ConnectorError(Exception):
    """A request that can't be served; `kind` goes to the status's `error` field."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(message)


def bad_request(message: str) -> ConnectorError:
    """The input message is wrong (V1's `InvalidParameter`)."""
    return ConnectorError("InvalidParameter", message)


def _client(name: str) -> Any:  # noqa: ANN401 - the SDK is untyped
    client = _clients.get(name)
    if client is None:
        # Imported on first use, so that the request logic can be tested outside a worker.
        import greengrasssdk  # type: ignore[import-untyped]  # noqa: PLC0415

        client = _clients[name] = greengrasssdk.client(name)
    return client


def parameters() -> dict[str, str]:
    """The connector's Parameters, as the group set them (validated by the core)."""
    value = json.loads(os.environ.get(PARAMETERS_VARIABLE) or "{}")
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def read_secret_string(arn: str, what: str) -> str:
    """Read the AWSCURRENT SecretString of a secret this connector was granted.

    Raises:
        ConnectorError: The core refused or doesn't hold it (`SecretError`); never the value.
    """
    try:
        answer = _client("secretsmanager").get_secret_value(SecretId=arn)
    except Exception as exc:  # noqa: BLE001 - the SDK raises its own SecretsManagerError
        raise ConnectorError("SecretError", f"could not read the {what}: {exc}") from None
    value = answer.get("SecretString")
    if not isinstance(value, str) or not value:
        raise ConnectorError("SecretError", f"the {what} secret has no SecretString")
    _secret_values.add(value)
    return value


def publish(topic: str, document: dict[str, Any]) -> None:
    """Publish a JSON document through the core's router (the group's subscriptions)."""
    _client("iot-data").publish(topic=topic, payload=json.dumps(document))


def subject(context: Any) -> str | None:  # noqa: ANN401 - V1's context object
    """The topic a routed message arrived on, or None when the connector was invoked directly."""
    client_context = getattr(context, "client_context", None)
    custom = getattr(client_context, "custom", None)
    topic = custom.get("subject") if isinstance(custom, dict) else None
    return topic if isinstance(topic, str) else None


def deadline(context: Any) -> float:  # noqa: ANN401 - V1's context object
    """The `time.monotonic()` by which the last HTTP attempt must be over."""
    remaining = float(context.get_remaining_time_in_millis()) / 1000
    return time.monotonic() + max(0.0, remaining - STATUS_RESERVE_SECONDS)


def as_object(event: object) -> dict[str, Any]:
    """The input message as a JSON object (the runtime hands over bytes that aren't JSON)."""
    if isinstance(event, bytes | bytearray) or event is None:
        raise bad_request("the message is not valid JSON")
    if not isinstance(event, dict):
        raise bad_request("the message must be a JSON object")
    return event


def message_id(message: dict[str, Any]) -> str | None:
    """The message's `id` if it is a non-empty string; the status echoes it back."""
    value = message.get("id")
    return value if isinstance(value, str) and value else None


Handler = Callable[[object, str | None, float, dict[str, str]], dict[str, Any]]


def serve(handle: Handler, status_topic: str, event: object, context: Any) -> dict[str, Any]:  # noqa: ANN401 - V1's context object
    """Run one message through `handle(event, topic, deadline, parameters)`; publish its status."""
    status = handle(event, subject(context), deadline(context), parameters())
    publish(status_topic, status)
    return status


def success(request: str | None, payload: dict[str, Any]) -> dict[str, Any]:
    """A status document for a served request (V1's shape)."""
    return {"response": {"status": "success", "payload": payload}, "id": request}


def failure(request: str | None, exc: ConnectorError) -> dict[str, Any]:
    """A status document for a failed request (V1's shape), with secret values masked."""
    message = exc.message
    for value in _secret_values:
        message = message.replace(value, _MASK)
    print(f"request {request!r} failed: {exc.kind}: {message}")  # noqa: T201 - the core's log
    return {
        "response": {
            "status": "fail",
            "error": exc.kind,
            "error_message": message,
            "payload": None,
        },
        "id": request,
    }


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """An HTTP response: status, body (at most MAX_RESPONSE_BYTES) and Retry-After."""

    status: int
    body: bytes
    retry_after: float | None = None

    def json(self) -> dict[str, Any]:
        """The body as a JSON object, or {} if it isn't one."""
        try:
            value = json.loads(self.body)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: urllib would resend our Authorization header to its target."""

    def redirect_request(self, *_: Any) -> None:  # noqa: ANN401 - urllib's signature
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def _attempt(request: urllib.request.Request, timeout: float) -> HttpAnswer:
    try:
        with _opener.open(request, timeout=timeout) as response:
            return HttpAnswer(response.status, response.read(MAX_RESPONSE_BYTES))
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read(MAX_RESPONSE_BYTES)
        retry_after = exc.headers.get("Retry-After") if exc.headers else None
        seconds = float(retry_after) if retry_after and retry_after.isdigit() else None
        return HttpAnswer(exc.code, body, seconds)


def _retryable(status: int) -> bool:
    # 429 (rate limited) and 5xx may succeed later; any other 4xx will fail the same way again.
    return status == 429 or status >= 500  # noqa: PLR2004 - HTTP status codes


def post(
    url: str, *, body: bytes, headers: dict[str, str], retries: int, until: float
) -> HttpAnswer:
    """POST, retrying 429, 5xx and network errors up to `retries` times before `until`.

    Backoff is jittered and capped (BACKOFF_*), and honours a Retry-After in seconds up to the
    cap. Retrying stops early when another attempt couldn't finish before `until`.

    Returns:
        The last answer, whatever its status (the caller reports a non-2xx one).

    Raises:
        ConnectorError: The server could not be reached (`ConnectionError`).
    """
    attempt = 0
    while True:
        timeout = min(ATTEMPT_TIMEOUT_SECONDS, until - time.monotonic())
        if timeout <= 0:
            raise ConnectorError("ConnectionError", f"no time left to reach {url}")
        # http(s) only: the URL's scheme is checked at deployment.
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
        answer: HttpAnswer | None = None
        try:
            answer = _attempt(request, timeout)
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
            reason = getattr(exc, "reason", None) or exc
            error = ConnectorError("ConnectionError", f"could not reach {url}: {reason}")
        delay = _backoff(attempt, answer)
        settled = answer is not None and not _retryable(answer.status)
        if settled or attempt >= retries or time.monotonic() + delay + _MIN_ATTEMPT > until:
            if answer is None:
                raise error
            return answer
        time.sleep(delay)
        attempt += 1


def _backoff(attempt: int, answer: HttpAnswer | None) -> float:
    delay = min(BACKOFF_MAX_SECONDS, BACKOFF_INITIAL_SECONDS * 2.0**attempt)
    delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
    if answer is not None and answer.retry_after is not None:
        delay = max(delay, min(answer.retry_after, BACKOFF_MAX_SECONDS))
    return delay
