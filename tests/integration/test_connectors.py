"""Connectors end to end: Twilio Notifications and Webhook on a real core, broker and moto."""

from __future__ import annotations

import json
import queue
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge.fixtures.core import edge_cli, next_created_at, secret_resource
from edge.fixtures.services import TEST_REGION
from edge.workers.process import resident_kb
from tests.support.env import Env
from tests.support.fake_twilio import HttpRequest, LoopbackServer, json_answer, run_fake_twilio
from tests.support.functions import build_package

pytestmark = pytest.mark.network

TWILIO = f"arn:aws:greengrass:{TEST_REGION}::/connectors/TwilioNotifications/versions/4"
WEBHOOK = f"arn:aws:greengrass:{TEST_REGION}::/connectors/Webhook/versions/1"
PUBLISHER = f"arn:aws:lambda:{TEST_REGION}:123456789012:function:publisher:1"
SID = "AC" + "0123456789abcdef" * 2
FROM = "+15005550006"
STATUS_TOPIC = "twilio/message/status"


def text(request_id: str, *, retries: int = 0) -> dict[str, Any]:
    """V1's twilio/txt request (the documentation's example)."""
    recipient = {"name": "Darla", "phone_number": "+12345000000", "message": "Hello from the edge"}
    return {"request": {"recipient": recipient, "retries": retries}, "id": request_id}


def call(request_id: str) -> dict[str, Any]:
    """V1's twilio/call request."""
    recipient = {
        "name": "Darla",
        "phone_number": "+12345000000",
        "voice_message_location": "https://example.com/twiml.xml",
    }
    return {"request": {"recipient": recipient, "from_number": "+19999999999"}, "id": request_id}


def twilio_connector(token_arn: str, base_url: str) -> dict[str, Any]:
    """The Twilio Notifications connector object of a group, pointed at the fake Twilio."""
    return {
        "Id": "twilio",
        "ConnectorArn": TWILIO,
        "Parameters": {
            "TWILIO_ACCOUNT_SID": SID,
            "TwilioAuthTokenSecretArn": token_arn,
            "TwilioAuthTokenSecretArn-ResourceId": "twilio-token",
            "DefaultFromPhoneNumber": FROM,
            "IsolationMode": "NoContainer",
            "TwilioBaseUrl": base_url,
        },
    }


def route(route_id: str, source: str, subject: str, target: str) -> dict[str, str]:
    """A subscription."""
    return {"Id": route_id, "Source": source, "Subject": subject, "Target": target}


TWILIO_ROUTES = [
    route("txt", "cloud", "twilio/txt", TWILIO),
    route("call", "cloud", "twilio/call", TWILIO),
    route("status", TWILIO, STATUS_TOPIC, "cloud"),
]


def deploy(
    env: Env,
    *,
    resources: list[dict[str, Any]],
    connectors: list[dict[str, Any]],
    functions: list[dict[str, Any]] | None = None,
    subscriptions: list[dict[str, Any]] | None = None,
    deployment_type: str = "NewDeployment",
) -> dict[str, Any]:
    """Publish a deployment document with connectors; return its final status document."""
    deployment_id = str(uuid.uuid4())
    document = {
        "DeploymentId": deployment_id,
        "DeploymentType": deployment_type,
        "GroupId": "group-1",
        "GroupVersionId": uuid.uuid4().hex,
        "CreatedAt": next_created_at(),
        "Group": {
            "Resources": resources,
            "Functions": functions or [],
            "Connectors": connectors,
            "Subscriptions": subscriptions or [],
        },
    }
    env.operator.publish_raw(json.dumps(document))
    return env.operator.final_status(deployment_id)


def status_of(received: queue.Queue[tuple[str, Any]], request_id: str | None) -> dict[str, Any]:
    """The next status document on the watched topics for a request id."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            _topic, document = received.get(timeout=0.5)
        except queue.Empty:
            continue
        if document.get("id") == request_id:
            return document
    raise AssertionError(f"no status for {request_id!r}")


def response(document: dict[str, Any]) -> dict[str, Any]:
    """The `response` of a status document."""
    answer = document["response"]
    assert isinstance(answer, dict)
    return answer


def test_a_function_texts_and_the_cloud_calls_through_twilio(env: Env, tmp_path: Path) -> None:
    """SMS from a function's publish, a call from the cloud; each gets V1's success status."""
    arn, _, token = env.create_secret("greengrass-twilio-token")
    path, digest = build_package(tmp_path / "app.zip")
    publisher = {
        "Id": "publisher",
        "FunctionArn": PUBLISHER,
        "FunctionConfiguration": {
            "Handler": "app.publish",
            "Timeout": 10,
            "Code": {"Uri": path.as_uri(), "Sha256": digest},
        },
    }
    with run_fake_twilio(SID, str(token)) as twilio:
        statuses = env.operator.subscribe(STATUS_TOPIC)
        done = deploy(
            env,
            resources=[secret_resource("twilio-token", arn)],
            functions=[publisher],
            connectors=[twilio_connector(arn, twilio.base_url)],
            subscriptions=[*TWILIO_ROUTES, route("fn", PUBLISHER, "twilio/txt", TWILIO)],
        )
        assert done["DeploymentStatus"] == "Success", done
        invoked = edge_cli(
            "invoke",
            "--config",
            str(env.config),
            "--function-arn",
            PUBLISHER,
            "--payload",
            json.dumps({"topic": "twilio/txt", "message": text("request123")}),
        )
        env.cli_output.append(invoked.stdout + invoked.stderr)
        assert invoked.returncode == 0, invoked.stderr

        sms = twilio.wait_for(1)[0]
        assert (sms.resource, sms.account_sid, sms.auth) == ("Messages", SID, (SID, token))
        assert sms.form == {"To": "+12345000000", "From": FROM, "Body": "Hello from the edge"}
        status = status_of(statuses, "request123")
        payload = response(status)["payload"]
        assert response(status)["status"] == "success"
        assert payload["from_number"] == FROM
        messages = payload["messages"]
        assert (messages["message_status"], messages["to_number"], messages["name"]) == (
            "queued",
            "+12345000000",
            "Darla",
        )
        assert messages["sid"].startswith("SM")

        env.operator.publish("twilio/call", call("call-1"))
        placed = twilio.wait_for(2)[1]
        assert placed.resource == "Calls"
        assert placed.form == {
            "To": "+12345000000",
            "From": "+19999999999",
            "Url": "https://example.com/twiml.xml",
        }
        called = response(status_of(statuses, "call-1"))
        assert called["status"] == "success"
        assert called["payload"]["messages"]["sid"].startswith("CA")
        assert token not in json.dumps([status, called])
        # After an SMS and a call its resident set is well inside the manifest's MemorySize.
        worker = env.core.wait_for_event("worker.started", function_arn=TWILIO)
        rss = resident_kb(worker["pid"])
        assert rss is not None
        assert rss < worker["memory_kb"] == 40960


def test_bad_requests_and_twilio_errors_fail_and_retries_recover(env: Env) -> None:
    """Bad input names its field; 401 fails with Twilio's message; 429 is retried; no crash."""
    arn, _, token = env.create_secret("greengrass-twilio-token")
    with run_fake_twilio(SID, str(token)) as twilio:
        statuses = env.operator.subscribe(STATUS_TOPIC)
        done = deploy(
            env,
            resources=[secret_resource("twilio-token", arn)],
            connectors=[twilio_connector(arn, twilio.base_url)],
            subscriptions=TWILIO_ROUTES,
        )
        assert done["DeploymentStatus"] == "Success", done

        no_phone = text("no-phone")
        del no_phone["request"]["recipient"]["phone_number"]
        env.operator.publish("twilio/txt", no_phone)
        failed = response(status_of(statuses, "no-phone"))
        assert (failed["status"], failed["error"]) == ("fail", "InvalidParameter")
        assert failed["error_message"] == "request.recipient.phone_number is required"
        assert failed["payload"] is None
        assert env.operator.client is not None
        env.operator.client.publish("twilio/txt", b"{not json", qos=1).wait_for_publish(10)
        assert response(status_of(statuses, None))["error_message"] == (
            "the message is not valid JSON"
        )
        assert twilio.requests == []

        twilio.auth_token = "not-the-deployed-token"
        env.operator.publish("twilio/txt", text("wrong-token", retries=3))
        refused = response(status_of(statuses, "wrong-token"))
        assert (refused["status"], refused["error"]) == ("fail", "TwilioError")
        assert "Authenticate" in refused["error_message"]
        assert "20003" in refused["error_message"]
        assert [r.status for r in twilio.requests] == [401]  # a 4xx is not retried

        twilio.auth_token = str(token)
        twilio.fail_next(429)
        env.operator.publish("twilio/txt", text("throttled", retries=1))
        assert response(status_of(statuses, "throttled"))["status"] == "success"
        assert [r.status for r in twilio.requests[1:]] == [429, 201]

        twilio.fail_next(500, times=2)
        env.operator.publish("twilio/txt", text("down", retries=1))
        down = response(status_of(statuses, "down"))
        assert down["status"] == "fail"
        assert "Internal Server Error" in down["error_message"]
        assert [r.status for r in twilio.requests[3:]] == [500, 500]

        # Straight to the connector (no topic): a call, since it carries a TwiML URL.
        invoked = edge_cli(
            "invoke",
            "--config",
            str(env.config),
            "--function-arn",
            TWILIO,
            "--payload",
            json.dumps(call("direct")),
        )
        env.cli_output.append(invoked.stdout + invoked.stderr)
        assert invoked.returncode == 0, invoked.stderr
        assert json.loads(invoked.stdout)["response"]["status"] == "success"
        assert twilio.requests[-1].resource == "Calls"
        assert response(status_of(statuses, "direct"))["status"] == "success"
    # Every request was answered by the one worker the deployment started.
    assert (
        sum(
            1
            for e in env.core.events()
            if e.get("event") == "worker.started" and e.get("function_arn") == TWILIO
        )
        == 1
    )


def test_a_rotated_token_is_used_after_a_redeploy(env: Env) -> None:
    """The deployed token is used until a redeploy brings the new one; bad groups change nothing."""
    arn, _, old_token = env.create_secret("greengrass-twilio-token")
    with run_fake_twilio(SID, str(old_token)) as twilio:
        statuses = env.operator.subscribe(STATUS_TOPIC)
        group: dict[str, Any] = {
            "resources": [secret_resource("twilio-token", arn)],
            "connectors": [twilio_connector(arn, twilio.base_url)],
            "subscriptions": TWILIO_ROUTES,
        }
        assert deploy(env, **group)["DeploymentStatus"] == "Success"
        env.operator.publish("twilio/txt", text("before"))
        assert response(status_of(statuses, "before"))["status"] == "success"

        new_token = "rotated-" + str(old_token)
        env.values.append(new_token)
        env.sm.put_secret_value(SecretId=arn, SecretString=new_token)
        twilio.auth_token = new_token
        env.operator.publish("twilio/txt", text("not-yet"))
        assert "Authenticate" in response(status_of(statuses, "not-yet"))["error_message"]

        redeployed = deploy(env, **group, deployment_type="Redeployment")
        assert redeployed["DeploymentStatus"] == "Success"
        env.operator.publish("twilio/txt", text("after"))
        assert response(status_of(statuses, "after"))["status"] == "success"
        assert twilio.requests[-1].auth == (SID, new_token)

        before = env.store_path.read_bytes()
        mystery = {"Id": "mystery", "ConnectorArn": TWILIO.replace("TwilioNotifications", "Nope")}
        failed = deploy(env, **{**group, "connectors": [*group["connectors"], mystery]})
        assert failed["DeploymentStatus"] == "Failure"
        assert 'Connectors[1] (Id "mystery")' in failed["ErrorMessage"]
        assert "not built into this core" in failed["ErrorMessage"]
        assert env.store_path.read_bytes() == before
        env.operator.publish("twilio/txt", text("still"))
        assert response(status_of(statuses, "still"))["status"] == "success"
    assert env.core.count("core.started") == 1


def test_the_webhook_connector_posts_with_its_bearer_token(env: Env) -> None:
    """A second connector POSTs with the token from its secret, also after an offline restart."""
    arn, _, token = env.create_secret("webhook-token")
    received: list[HttpRequest] = []

    def respond(request: HttpRequest) -> tuple[int, dict[str, str], bytes]:
        received.append(request)
        return json_answer(200, {"ok": True})

    server = LoopbackServer(respond)
    server.start()
    try:
        statuses = env.operator.subscribe("webhook/status")
        connector = {
            "Id": "hook",
            "ConnectorArn": WEBHOOK,
            "Parameters": {
                "WebhookUrl": server.url + "/hooks/door",
                "BearerTokenSecretArn": arn,
                "BearerTokenSecretArn-ResourceId": "hook-token",
            },
        }
        done = deploy(
            env,
            resources=[secret_resource("hook-token", arn)],
            connectors=[connector],
            subscriptions=[
                route("in", "cloud", "webhook/send", WEBHOOK),
                route("out", WEBHOOK, "webhook/status", "cloud"),
            ],
        )
        assert done["DeploymentStatus"] == "Success", done
        message = {"id": "door-1", "event": "door opened", "at": 1764331200}
        env.operator.publish("webhook/send", message)
        status = status_of(statuses, "door-1")
        assert status["response"] == {"status": "success", "payload": {"status_code": 200}}

        # A restarted core starts its connectors again from the store, offline.
        assert env.core.stop() == 0
        env.core.start()
        env.core.wait_for_event("worker.started", after=1, function_arn=WEBHOOK)
        env.operator.publish("webhook/send", {"id": "door-2"})
        assert status_of(statuses, "door-2")["response"]["status"] == "success"
    finally:
        server.stop()
    request = received[0]
    assert (request.method, request.path) == ("POST", "/hooks/door")
    assert request.headers["authorization"] == f"Bearer {token}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == message
    assert received[1].headers["authorization"] == f"Bearer {token}"
