# SPDX-License-Identifier: Apache-2.0
"""Twilio Notifications, the worker: V1's requests in, Twilio's REST API out, a status back.

Input (V1's shapes): on `twilio/txt`
`{"request": {"recipient": {"name", "phone_number", "message"}, "from_number"?, "retries"?},
"id"}`; on `twilio/call` the same with `voice_message_location` (a TwiML URL) instead of
`message`. A message sent straight to the connector (`edge invoke`, no topic) is a call when
it carries `voice_message_location`, else a text.

Output, on `twilio/message/status` for every request, V1's shape:
`{"response": {"status": "success", "payload": {"from_number", "messages": {"message_status",
"to_number", "name", "sid"}}}, "id"}` or `{"response": {"status": "fail", "error",
"error_message", "payload": null}, "id"}`. `error` is `InvalidParameter` (the request is
wrong; `error_message` names the field), `TwilioError` (Twilio refused; its message and code),
`SecretError` (the auth token can't be read) or `ConnectionError`.

The auth token is read from the core for every message, so a token rotated by a redeployment
is used by the next message. 429 and 5xx answers (and network errors) are retried `retries`
times (V1's default 0; at most MAX_RETRIES) with jittered, capped backoff; other 4xx are not.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Final

from connectors import kit

TXT_TOPIC: Final = "twilio/txt"
CALL_TOPIC: Final = "twilio/call"
STATUS_TOPIC: Final = "twilio/message/status"
DEFAULT_BASE_URL: Final = "https://api.twilio.com"
API_VERSION: Final = "2010-04-01"
#: Upper bound on a request's `retries` (larger values are lowered to it): with the backoff cap
#: and the per-attempt timeout this fits the connector's Timeout.
MAX_RETRIES: Final = 5
_PHONE: Final = re.compile(r"\+[1-9][0-9]{1,14}")


@dataclass(frozen=True, slots=True)
class Notification:
    """One validated request: a text (`content` is the body) or a call (a TwiML URL)."""

    call: bool
    name: str
    to_number: str
    from_number: str
    content: str
    retries: int


def function_handler(event: object, context: Any) -> dict[str, Any]:  # noqa: ANN401
    """Serve one request and publish its status on twilio/message/status."""
    return kit.serve(handle, STATUS_TOPIC, event, context)


def handle(
    event: object, topic: str | None, until: float, parameters: dict[str, str]
) -> dict[str, Any]:
    """Validate and send one request; return its status document."""
    request_id: str | None = None
    try:
        message = kit.as_object(event)
        request_id = kit.message_id(message)
        if request_id is None:
            raise kit.bad_request("id is required and must be a non-empty string")
        notification = parse(message, topic, parameters.get("DefaultFromPhoneNumber") or None)
        answer = send(notification, parameters, until)
    except kit.ConnectorError as exc:
        return kit.failure(request_id, exc)
    messages = {
        "message_status": answer.get("status", "queued"),
        "to_number": notification.to_number,
        "name": notification.name,
        "sid": answer.get("sid"),
    }
    return kit.success(request_id, {"from_number": notification.from_number, "messages": messages})


def parse(message: dict[str, Any], topic: str | None, default_from: str | None) -> Notification:
    """Check a V1 request; raise InvalidParameter naming the first wrong field."""
    request = _object(message, "request", "request")
    recipient = _object(request, "recipient", "request.recipient")
    name = recipient.get("name")
    if not isinstance(name, str):
        raise kit.bad_request("request.recipient.name is required and must be a string")
    to_number = _phone(recipient.get("phone_number"), "request.recipient.phone_number")
    if topic is None:
        call = "voice_message_location" in recipient
    elif topic in {TXT_TOPIC, CALL_TOPIC}:
        call = topic == CALL_TOPIC
    else:
        raise kit.bad_request(f"topic {topic!r} is not one of {TXT_TOPIC}, {CALL_TOPIC}")
    field, other = (
        ("voice_message_location", "message") if call else ("message", "voice_message_location")
    )
    if other in recipient:
        raise kit.bad_request(
            f"request.recipient.{other} is not allowed on {CALL_TOPIC if call else TXT_TOPIC}; "
            f"it takes request.recipient.{field}"
        )
    content = recipient.get(field)
    if not isinstance(content, str) or not content:
        raise kit.bad_request(f"request.recipient.{field} is required and must be a string")
    if call and urllib.parse.urlsplit(content).scheme not in {"http", "https"}:
        raise kit.bad_request("request.recipient.voice_message_location must be an http(s) URL")
    if "from_number" in request:
        from_number = _phone(request["from_number"], "request.from_number")
    elif default_from:
        from_number = default_from
    else:
        raise kit.bad_request(
            "request.from_number is required: the connector has no DefaultFromPhoneNumber"
        )
    retries = request.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise kit.bad_request("request.retries must be a non-negative integer")
    return Notification(
        call=call,
        name=name,
        to_number=to_number,
        from_number=from_number,
        content=content,
        retries=min(retries, MAX_RETRIES),
    )


def _object(parent: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise kit.bad_request(f"{path} is required and must be an object")
    return value


def _phone(value: object, path: str) -> str:
    if value is None:
        raise kit.bad_request(f"{path} is required")
    if not isinstance(value, str) or not _PHONE.fullmatch(value):
        raise kit.bad_request(f"{path} must be an E.164 number such as +12345000000")
    return value


def send(notification: Notification, parameters: dict[str, str], until: float) -> dict[str, Any]:
    """Create the Message or Call through Twilio's REST API; return Twilio's answer.

    Raises:
        kit.ConnectorError: The token can't be read, Twilio can't be reached or refused.
    """
    sid = parameters["TWILIO_ACCOUNT_SID"]
    token = kit.read_secret_string(parameters["TwilioAuthTokenSecretArn"], "Twilio auth token")
    base = (parameters.get("TwilioBaseUrl") or DEFAULT_BASE_URL).rstrip("/")
    resource = "Calls" if notification.call else "Messages"
    url = f"{base}/{API_VERSION}/Accounts/{urllib.parse.quote(sid)}/{resource}.json"
    form = {"To": notification.to_number, "From": notification.from_number}
    form["Url" if notification.call else "Body"] = notification.content
    credentials = base64.b64encode(f"{sid}:{token}".encode()).decode("ascii")
    answer = kit.post(
        url,
        body=urllib.parse.urlencode(form).encode(),
        headers={
            "Authorization": f"Basic {credentials}",
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        },
        retries=notification.retries,
        until=until,
    )
    body = answer.json()
    if 200 <= answer.status < 300:  # noqa: PLR2004 - HTTP success
        return body
    # Twilio's error shape: {"code": 20003, "message": "Authenticate", "more_info": ..., ...}.
    text = body.get("message") or f"HTTP {answer.status}"
    code = body.get("code")
    detail = f" (Twilio error {code}, HTTP {answer.status})" if code else f" (HTTP {answer.status})"
    raise kit.ConnectorError("TwilioError", f"{str(text)[:200]}{detail}")
