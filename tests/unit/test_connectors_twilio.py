# SPDX-License-Identifier: Apache-2.0
"""The connectors' worker side, in-process: V1 request checks, HTTP retries, masking."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from connectors import kit
from connectors.twilio_notifications import connector as twilio
from connectors.webhook import connector as webhook
from edge.fixtures.services import free_port
from tests.support.fake_twilio import (
    FakeTwilio,
    HttpRequest,
    LoopbackServer,
    json_answer,
    run_fake_twilio,
)

SID = "AC0123"
TOKEN = "tw-token-5e1f"
TOKEN_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:greengrass-tw-AbC123"


class FakeSecrets:
    """greengrasssdk's secretsmanager client, answering one secret."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get_secret_value(self, **kwargs: str) -> dict[str, Any]:
        if kwargs["SecretId"] not in self.values:
            raise RuntimeError("Failed to get secret value: 403 may not read")  # the SDK's text
        return {"SecretString": self.values[kwargs["SecretId"]]}


@pytest.fixture(autouse=True)
def _sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand in for the SDK's clients; make backoff quick."""
    monkeypatch.setattr(kit, "_clients", {"secretsmanager": FakeSecrets({TOKEN_ARN: TOKEN})})
    monkeypatch.setattr(kit, "BACKOFF_INITIAL_SECONDS", 0.01)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with run_fake_twilio(SID, TOKEN) as server:
        yield server


def parameters(fake: FakeTwilio, **extra: str) -> dict[str, str]:
    return {
        "TWILIO_ACCOUNT_SID": SID,
        "TwilioAuthTokenSecretArn": TOKEN_ARN,
        "TwilioAuthTokenSecretArn-ResourceId": "tw",
        "DefaultFromPhoneNumber": "+15005550006",
        "TwilioBaseUrl": fake.base_url,
        **extra,
    }


def request(**changes: Any) -> dict[str, Any]:
    """V1's documented twilio/txt example; `changes` replace (None: drop) recipient fields."""
    recipient: dict[str, Any] = {
        "name": "Darla",
        "phone_number": "+12345000000",
        "message": "Hello from the edge",
    }
    for key, value in changes.items():
        if value is None:
            recipient.pop(key, None)
        else:
            recipient[key] = value
    return {"request": {"recipient": recipient}, "id": "request123"}


def later(seconds: float = 20) -> float:
    return time.monotonic() + seconds


# --- V1 requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "topic", "expected"),
    [
        (request(phone_number=None), "twilio/txt", "request.recipient.phone_number is required"),
        (
            request(phone_number="12345"),
            "twilio/txt",
            "request.recipient.phone_number must be an E.164 number such as +12345000000",
        ),
        (
            request(name=None),
            "twilio/txt",
            "request.recipient.name is required and must be a string",
        ),
        (
            request(message=None),
            "twilio/txt",
            "request.recipient.message is required and must be a string",
        ),
        (
            request(voice_message_location="https://x/t.xml"),
            "twilio/txt",
            (
                "request.recipient.voice_message_location is not allowed on twilio/txt; it takes "
                "request.recipient.message"
            ),
        ),
        (
            request(message=None, voice_message_location="ftp://x/t.xml"),
            "twilio/call",
            "request.recipient.voice_message_location must be an http(s) URL",
        ),
        (request(), "twilio/call", "request.recipient.message is not allowed on twilio/call"),
        (request(), "twilio/fax", "topic 'twilio/fax' is not one of twilio/txt, twilio/call"),
        ({"id": "request123"}, "twilio/txt", "request is required and must be an object"),
        (
            {"request": {"recipient": "Darla"}, "id": "request123"},
            "twilio/txt",
            "request.recipient is required and must be an object",
        ),
        (
            {**request(), "request": {**request()["request"], "retries": -1}},
            "twilio/txt",
            "request.retries must be a non-negative integer",
        ),
        (
            {**request(), "request": {**request()["request"], "from_number": 5}},
            "twilio/txt",
            "request.from_number must be an E.164 number such as +12345000000",
        ),
    ],
)
def test_bad_requests_fail_naming_the_field(
    fake: FakeTwilio, message: dict[str, Any], topic: str, expected: str
) -> None:
    """Each malformed V1 request gets InvalidParameter naming the field; Twilio isn't called."""
    status = twilio.handle(message, topic, later(), parameters(fake))
    assert status["id"] == "request123"
    assert status["response"]["status"] == "fail"
    assert status["response"]["error"] == "InvalidParameter"
    assert status["response"]["error_message"].startswith(expected)
    assert status["response"]["payload"] is None
    assert fake.requests == []


@pytest.mark.parametrize(
    ("event", "expected_id", "expected"),
    [
        (b"{not json", None, "the message is not valid JSON"),
        (None, None, "the message is not valid JSON"),
        (["a"], None, "the message must be a JSON object"),
        ({"request": {}}, None, "id is required and must be a non-empty string"),
        ({"request": {}, "id": 7}, None, "id is required and must be a non-empty string"),
    ],
)
def test_messages_that_are_not_requests_fail(
    fake: FakeTwilio, event: object, expected_id: str | None, expected: str
) -> None:
    """Not JSON, not an object, no id: a fail status with a null id, never an exception."""
    status = twilio.handle(event, "twilio/txt", later(), parameters(fake))
    assert (status["id"], status["response"]["error_message"]) == (expected_id, expected)


def test_the_default_sender_the_topic_and_retries_are_interpreted_as_v1_did() -> None:
    """from_number overrides the default; no topic means: call if there is a TwiML URL."""
    notification = twilio.parse(request(), "twilio/txt", "+15005550006")
    assert (notification.call, notification.from_number, notification.retries) == (
        False,
        "+15005550006",
        0,
    )
    call = request(message=None, voice_message_location="https://x/t.xml")
    call["request"] |= {"from_number": "+19999999999", "retries": 99}
    notification = twilio.parse(call, None, "+15005550006")
    assert (notification.call, notification.from_number, notification.retries) == (
        True,
        "+19999999999",
        twilio.MAX_RETRIES,
    )
    with pytest.raises(kit.ConnectorError, match="no DefaultFromPhoneNumber"):
        twilio.parse(request(), "twilio/txt", None)


# --- Twilio's API ---------------------------------------------------------------------------


def test_a_text_is_sent_with_basic_auth_and_reported_in_v1_shape(fake: FakeTwilio) -> None:
    """Messages.json gets To/From/Body with sid:token; the status is V1's success document."""
    status = twilio.handle(request(), "twilio/txt", later(), parameters(fake))
    (sent,) = fake.requests
    assert (sent.resource, sent.auth, sent.status) == ("Messages", (SID, TOKEN), 201)
    assert sent.form == {
        "To": "+12345000000",
        "From": "+15005550006",
        "Body": "Hello from the edge",
    }
    messages = status["response"]["payload"]["messages"]
    assert status["response"]["status"] == "success"
    assert status["response"]["payload"]["from_number"] == "+15005550006"
    assert (messages["message_status"], messages["to_number"], messages["name"]) == (
        "queued",
        "+12345000000",
        "Darla",
    )


def test_twilio_errors_are_reported_with_twilios_message(fake: FakeTwilio) -> None:
    """401 (a wrong token) fails at once with Twilio's message and code; no retry on 4xx."""
    fake.auth_token = "rotated-elsewhere"
    message = request()
    message["request"]["retries"] = 3
    status = twilio.handle(message, "twilio/txt", later(), parameters(fake))
    assert status["response"]["error"] == "TwilioError"
    assert status["response"]["error_message"] == "Authenticate (Twilio error 20003, HTTP 401)"
    assert [r.status for r in fake.requests] == [401]


def test_a_secret_the_core_refuses_fails_without_calling_twilio(fake: FakeTwilio) -> None:
    """A token that can't be read is a SecretError; nothing goes to Twilio."""
    other = parameters(fake, TwilioAuthTokenSecretArn=TOKEN_ARN.replace("tw-", "xx-"))
    status = twilio.handle(request(), "twilio/txt", later(), other)
    assert status["response"]["error"] == "SecretError"
    assert "could not read the Twilio auth token: " in status["response"]["error_message"]
    assert fake.requests == []


def test_secret_values_echoed_by_a_server_are_masked() -> None:
    """A server quoting the token back never gets it into a published status."""
    server = LoopbackServer(lambda _r: json_answer(400, {"message": f"bad token {TOKEN}"}))
    server.start()
    try:
        params = {
            "TWILIO_ACCOUNT_SID": SID,
            "TwilioAuthTokenSecretArn": TOKEN_ARN,
            "TwilioBaseUrl": server.url,
            "DefaultFromPhoneNumber": "+15005550006",
        }
        status = twilio.handle(request(), "twilio/txt", later(), params)
    finally:
        server.stop()
    assert status["response"]["error_message"] == "bad token **** (HTTP 400)"
    assert TOKEN not in json.dumps(status)


# --- kit.post: retries, deadlines, redirects -------------------------------------------------


def test_429_and_5xx_are_retried_up_to_the_limit(fake: FakeTwilio) -> None:
    """retries=N means at most N more attempts, then the last answer is reported."""
    fake.fail_next(429)
    fake.fail_next(500)
    message = request()
    message["request"]["retries"] = 2
    status = twilio.handle(message, "twilio/txt", later(), parameters(fake))
    assert status["response"]["status"] == "success"
    assert [r.status for r in fake.requests] == [429, 500, 201]
    fake.fail_next(503, times=2)
    message["request"]["retries"] = 1
    status = twilio.handle(message, "twilio/txt", later(), parameters(fake))
    assert status["response"]["error_message"].endswith("(Twilio error 20500, HTTP 503)")
    assert [r.status for r in fake.requests[3:]] == [503, 503]


def test_retries_stop_at_the_invocation_deadline() -> None:
    """No attempt starts that could not finish before the Timeout: the status still goes out."""
    seen: list[HttpRequest] = []
    server = LoopbackServer(lambda r: (seen.append(r), json_answer(500, {}))[1])
    server.start()
    try:
        answer = kit.post(server.url, body=b"", headers={}, retries=5, until=later(0.3))
        with pytest.raises(kit.ConnectorError, match="no time left"):
            kit.post(server.url, body=b"", headers={}, retries=0, until=later(-1))
    finally:
        server.stop()
    assert answer.status == 500
    assert 1 <= len(seen) < 6


def test_an_unreachable_server_is_a_connection_error_after_retries() -> None:
    """Network errors are retried like 5xx, then reported as ConnectionError."""
    url = f"http://127.0.0.1:{free_port()}/x"
    with pytest.raises(kit.ConnectorError) as info:
        kit.post(url, body=b"", headers={}, retries=1, until=later())
    assert info.value.kind == "ConnectionError"
    assert "could not reach" in info.value.message


def test_redirects_are_never_followed() -> None:
    """A 30x would make urllib resend our Authorization header elsewhere: it is the answer."""
    elsewhere: list[HttpRequest] = []
    target = LoopbackServer(lambda r: (elsewhere.append(r), json_answer(200, {}))[1])
    target.start()
    source = LoopbackServer(lambda _r: (302, {"Location": target.url + "/steal"}, b""))
    source.start()
    try:
        answer = kit.post(
            source.url, body=b"x", headers={"Authorization": "Basic x"}, retries=0, until=later()
        )
    finally:
        source.stop()
        target.stop()
    assert answer.status == 302
    assert elsewhere == []


# --- the webhook connector ------------------------------------------------------------------


def test_the_webhook_posts_json_with_a_bearer_token_and_reports_failures() -> None:
    """2xx is success with the status code; anything else fails with the server's words."""
    seen: list[HttpRequest] = []
    answers = [json_answer(202, {}), (500, {}, b"db down")]
    server = LoopbackServer(lambda r: (seen.append(r), answers.pop(0))[1])
    server.start()
    params = {"WebhookUrl": server.url + "/in", "BearerTokenSecretArn": TOKEN_ARN}
    try:
        ok = webhook.handle({"id": "a", "v": 1}, "webhook/send", later(), params)
        failed = webhook.handle({"v": 2}, None, later(), params)
        wrong = webhook.handle({"id": "b"}, "webhook/other", later(), params)
    finally:
        server.stop()
    assert ok == {"response": {"status": "success", "payload": {"status_code": 202}}, "id": "a"}
    assert seen[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(seen[0].body) == {"id": "a", "v": 1}
    assert failed["id"] is None
    assert failed["response"]["error_message"] == "HTTP 500: db down"
    assert wrong["response"]["error_message"] == "topic 'webhook/other' is not webhook/send"
    assert len(seen) == 2
