"""A loopback stand-in for Twilio's REST API (Messages and Calls), for connector tests.

`FakeTwilio` answers `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` and `/Calls.json`
as Twilio does: HTTP basic auth with the account SID and auth token (401 with Twilio's JSON
error otherwise), form fields checked (400 with Twilio's error codes), 201 with a Twilio-shaped
resource (`sid`, `status: "queued"`, `to`, `from`, ...). It records every request, can be told
to answer 429 or 500 the next N times, and its token can be changed (a rotation at Twilio).

`LoopbackServer` is the plain part: an HTTP server on a free 127.0.0.1 port, in a thread,
answering every request with a callback; the webhook connector's tests use it directly.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.leaks import LEAKS

API_VERSION = "2010-04-01"
_PATH = re.compile(rf"/{API_VERSION}/Accounts/(?P<sid>[^/]+)/(?P<resource>Messages|Calls)\.json")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")


@dataclass(frozen=True)
class HttpRequest:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, dict[str, str], bytes]


class LoopbackServer:
    """An HTTP server on 127.0.0.1:<free port> that answers every request with `respond`."""

    def __init__(self, respond: Callable[[HttpRequest], Answer]) -> None:
        self.respond = respond
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = HttpRequest(
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length),
                )
                status, headers, body = outer.respond(request)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _serve  # noqa: N815 - http.server's naming

            def log_message(self, *_: Any) -> None:  # quiet: the tests read `requests`
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits for the loop to notice, 0.5 s by default.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def json_answer(status: int, document: dict[str, Any], **headers: str) -> Answer:
    """A JSON response."""
    return status, {"Content-Type": "application/json", **headers}, json.dumps(document).encode()


def twilio_error(status: int, code: int, message: str, **headers: str) -> Answer:
    """Twilio's error document: `{"code", "message", "more_info", "status"}`."""
    return json_answer(
        status,
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        **headers,
    )


@dataclass
class TwilioRequest:
    """A request to the fake: which resource, whose credentials, which fields, what we said."""

    resource: str
    account_sid: str
    auth: tuple[str, str] | None
    form: dict[str, str]
    status: int


@dataclass
class FakeTwilio:
    """Twilio's Messages and Calls resources for one account, on loopback."""

    account_sid: str
    auth_token: str
    requests: list[TwilioRequest] = field(default_factory=list)
    _failures: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: LoopbackServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return self._server.url

    def fail_next(self, status: int, times: int = 1) -> None:
        """Answer the next `times` authenticated requests with 429 or 500 (Twilio's bodies)."""
        with self._lock:
            self._failures.extend([status] * times)

    def wait_for(self, count: int, timeout: float = 15) -> list[TwilioRequest]:
        """Wait until at least `count` requests arrived; return them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.02)
        raise AssertionError(f"Twilio got {len(self.requests)} requests, not {count}")

    def _respond(self, request: HttpRequest) -> Answer:
        match = _PATH.fullmatch(urllib.parse.urlsplit(request.path).path)
        if request.method != "POST" or match is None:
            return twilio_error(404, 20404, f"The requested resource {request.path} was not found")
        auth = _basic_auth(request.headers.get("authorization", ""))
        form = dict(urllib.parse.parse_qsl(request.body.decode(), keep_blank_values=True))
        with self._lock:
            answer = self._answer(match["sid"], match["resource"], auth, form)
            self.requests.append(
                TwilioRequest(match["resource"], match["sid"], auth, form, answer[0])
            )
        return answer

    def _answer(
        self, sid: str, resource: str, auth: tuple[str, str] | None, form: dict[str, str]
    ) -> Answer:
        if auth != (self.account_sid, self.auth_token) or sid != self.account_sid:
            return twilio_error(
                401, 20003, "Authenticate", **{"WWW-Authenticate": 'Basic realm="Twilio API"'}
            )
        if self._failures:
            status = self._failures.pop(0)
            if status == 429:
                return twilio_error(429, 20429, "Too Many Requests", **{"Retry-After": "0"})
            return twilio_error(status, 20500, "Internal Server Error")
        return _invalid(resource, form) or _created(sid, resource, form)


def _invalid(resource: str, form: dict[str, str]) -> Answer | None:
    """Twilio's 400 for missing or malformed fields, or None if the form is good."""
    to = form.get("To")
    problems = [
        (not to, 21604, "A 'To' phone number is required."),
        (
            bool(to) and not _E164.fullmatch(to or ""),
            21211,
            f"The 'To' number {to} is not a valid phone number.",
        ),
        (not form.get("From"), 21603, "A 'From' phone number is required."),
        (resource == "Messages" and not form.get("Body"), 21602, "Message body is required."),
        (resource == "Calls" and not form.get("Url"), 21205, "Url parameter is required."),
    ]
    for failed, code, message in problems:
        if failed:
            return twilio_error(400, code, message)
    return None


def _created(sid: str, resource: str, form: dict[str, str]) -> Answer:
    """Twilio's 201 with the new Message or Call resource."""
    now = formatdate(usegmt=True)
    prefix = "SM" if resource == "Messages" else "CA"
    resource_sid = prefix + secrets.token_hex(16)
    document: dict[str, Any] = {
        "account_sid": sid,
        "api_version": API_VERSION,
        "date_created": now,
        "date_updated": now,
        "direction": "outbound-api",
        "from": form["From"],
        "price": None,
        "price_unit": "USD",
        "sid": resource_sid,
        "status": "queued",
        "to": form["To"],
        "uri": f"/{API_VERSION}/Accounts/{sid}/{resource}/{resource_sid}.json",
    }
    if resource == "Messages":
        document |= {
            "body": form["Body"],
            "num_segments": "1",
            "num_media": "0",
            "error_code": None,
            "error_message": None,
        }
    else:
        document |= {"duration": None, "start_time": None, "end_time": None, "answered_by": None}
    return json_answer(201, document)


def _basic_auth(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except ValueError:
        return None
    return (user, password) if sep else None


@contextmanager
def run_fake_twilio(account_sid: str, auth_token: str) -> Iterator[FakeTwilio]:
    """Start a FakeTwilio on a free loopback port; stop it afterwards."""
    LEAKS.add_secret(auth_token, f"Twilio auth token of {account_sid}")
    fake = FakeTwilio(account_sid=account_sid, auth_token=auth_token)
    server = LoopbackServer(fake._respond)
    fake._server = server
    server.start()
    try:
        yield fake
    finally:
        server.stop()
