"""A loopback AWS IoT credentials provider: mutual TLS, the documented JSON, revocable.

The real `iot:CredentialProvider` endpoint can't be reached from the tests, so this one stands
in for it: it requires a client certificate from the test CA, checks the role alias in the path
and the thing name header, and answers `{"credentials": {...}}` as AWS documents it. Each
exchange hands out new random credentials, so a test can tell which exchange a request to
Secrets Manager was signed with.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from tests.support.tls import Pki

Mode = Literal["ok", "revoked", "no-alias"]


@dataclass
class Issued:
    """One set of credentials the provider handed out."""

    access_key_id: str
    secret_access_key: str
    session_token: str


@dataclass
class CredentialsProvider:
    """What the provider was asked and answered; `mode` and `lifetime` can change any time."""

    role_alias: str
    thing_name: str
    port: int = 0
    mode: Mode = "ok"
    #: How long each set of credentials is valid; botocore refreshes 15 minutes before expiry.
    lifetime: dt.timedelta = dt.timedelta(hours=1)
    issued: list[Issued] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def answer(self, path: str, thing: str | None) -> tuple[int, dict[str, object]]:
        if path != f"/role-aliases/{self.role_alias}/credentials" or self.mode == "no-alias":
            return 404, {"message": "Role alias does not exist"}
        if thing != self.thing_name:
            return 400, {"message": "Invalid thing name"}
        if self.mode == "revoked":
            return 403, {"message": "Access Denied"}
        issued = Issued(
            access_key_id="ASIA" + secrets.token_hex(8).upper(),
            secret_access_key=secrets.token_urlsafe(30),
            session_token=secrets.token_urlsafe(60),
        )
        expiration = dt.datetime.now(dt.UTC) + self.lifetime
        with self.changed:
            self.issued.append(issued)
            self.changed.notify_all()
        return 200, {
            "credentials": {
                "accessKeyId": issued.access_key_id,
                "secretAccessKey": issued.secret_access_key,
                "sessionToken": issued.session_token,
                "expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        }

    def wait_issued(self, count: int, timeout: float = 20) -> list[Issued]:
        """Wait until at least `count` exchanges succeeded."""
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.issued) >= count, timeout):
                raise AssertionError(f"{len(self.issued)} exchanges, not {count}, in {timeout} s")
            return list(self.issued)


@contextmanager
def run_credentials_provider(
    pki: Pki, *, role_alias: str, thing_name: str
) -> Iterator[CredentialsProvider]:
    """Serve the provider on a free loopback port with the test's server certificate."""
    provider = CredentialsProvider(role_alias=role_alias, thing_name=thing_name)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = provider.answer(self.path, self.headers.get("x-amzn-iot-thingname"))
            if status != 200:
                provider.refused.append(f"{status} {self.path}")
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args: object) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server.cert), str(pki.server.key))
    context.load_verify_locations(str(pki.ca.cert))
    context.verify_mode = ssl.CERT_REQUIRED
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    provider.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="iot-credentials", daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
