# SPDX-License-Identifier: Apache-2.0
"""The HTTP layer: aiohttp's server, SigV4 on every API request, JSON in and out.

aiohttp because it is already installed (aiobotocore, which the core uses for Secrets Manager,
depends on it), it is asyncio-native (the service shares one event loop with its MQTT follower
and the shared async deployment code), and it serves HTTP/1.1 with keep-alive and TLS, which
is all AWS SDKs need. Each API request is handled in this order: check the Authorization
header (form, access key id, date, scope) from the head alone, read the body (bounded in size
and time), check the signature over it, find the operation in botocore's model, decode and
validate its input, run it (a state-changing one recording its signature, so that it can't be
replayed), answer JSON. `GET /health` is the one path that needs no signature.

A request refused before its body was read has its connection closed after the answer, so the
body is never read at all: a client without a key can make the service hold only the request
head (and aiohttp's read buffer, 128 KiB at most, until the connection closes).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, replace
from typing import Any, Final

import structlog
from aiohttp import web
from structlog.typing import FilteringBoundLogger

from edge.cloud.db import Claim
from edge.cloud.errors import CloudDatabaseError
from edge.cloud.serve.auth import SignedRequest, Verifier
from edge.cloud.serve.connections import Connections
from edge.cloud.serve.context import Context
from edge.cloud.serve.errors import INTERNAL, ApiError, bad_request, from_edge_error
from edge.cloud.serve.follow import Health
from edge.cloud.serve.operations import dispatch
from edge.cloud.serve.routes import Router, decode_input
from edge.errors import EdgeError

#: Largest request body accepted. A deployment document (everything a group version holds) is
#: at most 1 MiB, so no definition version a core could receive is bigger; the margin is JSON
#: whitespace.
MAX_BODY_BYTES: Final = 2 * 1024 * 1024
#: Seconds a signed request's body may take to arrive in full: 2 MiB at 100 KB/s, a slow link.
#: The head's time is bounded in `connections`; this bounds a client that knows a key id but
#: sends its body a byte at a time.
BODY_TIMEOUT_SECONDS: Final = 20.0
HEALTH_PATH: Final = "/health"
#: Methods of the operations that change something: their signatures are recorded when applied
#: and refused again (a replay) until they expire.
STATE_CHANGING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Service:
    """Everything a request needs."""

    ctx: Context
    verifier: Verifier
    router: Router
    health: Health
    log: FilteringBoundLogger
    connections: Connections


def build_app(service: Service) -> web.Application:
    """The aiohttp application: `/health`, and every other path as the Greengrass API."""

    async def health(request: web.Request) -> web.Response:
        with service.connections.busy(request.transport):
            return await _health(service)

    async def api(request: web.Request) -> web.Response:
        with service.connections.busy(request.transport):
            return await _api(service, request)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_get(HEALTH_PATH, health)
    app.router.add_route("*", "/{path:.*}", api)
    return app


async def _health(service: Service) -> web.Response:
    try:
        await service.ctx.db.call(lambda db: db.schema_version)
        database = "ok"
    except (CloudDatabaseError, RuntimeError):
        database = "unavailable"
    mqtt = "connected" if service.health.mqtt_connected else "disconnected"
    healthy = database == "ok" and mqtt == "connected"
    body = {"Status": "ok" if healthy else "degraded", "Database": database, "Mqtt": mqtt}
    return _json(200 if healthy else 503, body, request_id=str(uuid.uuid4()))


async def _api(service: Service, request: web.Request) -> web.Response:
    request_id = str(uuid.uuid4())
    path, _, query = request.raw_path.partition("?")
    fields: dict[str, Any] = {"method": request.method, "path": path}
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await _answer(
                service, request, path, query, request_id=request_id, fields=fields
            )
        except ApiError as exc:
            response = _error(exc, request_id)
        except EdgeError as exc:
            response = _error(from_edge_error(exc), request_id)
        except UnicodeError:
            # Text that isn't Unicode (a header's bytes that aren't UTF-8, a lone surrogate
            # escaped in JSON) can't be encoded for the database, a log or a signature check;
            # it is the request's fault, wherever it is found.
            response = _error(
                bad_request(
                    "the request holds text that is not valid Unicode (bytes that are not "
                    "UTF-8, or a lone UTF-16 surrogate such as \\ud800)"
                ),
                request_id,
            )
        except Exception:
            service.log.exception("cloud.api.internal_error", **fields)
            response = _error(
                ApiError(
                    500, INTERNAL, f"internal error; the service's log has request {request_id}"
                ),
                request_id,
            )
        if request.body_exists and not request.content.is_eof():
            # Refused before its body was read (or while reading it): close the connection
            # rather than read the rest to find the next request.
            response.force_close()
        error = response.headers.get("x-amzn-ErrorType")
        if error is None:
            service.log.info("cloud.api.request", status=response.status, **fields)
        else:
            service.log.warning("cloud.api.refused", status=response.status, error=error, **fields)
    return response


async def _answer(
    service: Service,
    request: web.Request,
    path: str,
    query: str,
    *,
    request_id: str,
    fields: dict[str, Any],
) -> web.Response:
    headers = tuple(request.headers.items())
    _check_headers(headers)
    head = SignedRequest(method=request.method, path=path, query=query, headers=headers, body=b"")
    authorized = service.verifier.authorize(head)
    fields["access_key_id"] = authorized.access_key_id
    body = await _read_body(request)
    service.verifier.check_signature(replace(head, body=body), authorized)
    match = service.router.match(request.method, path)
    fields["operation"] = match.route.operation
    params = decode_input(match, query=query, headers=request.headers, body=body)
    claim = None
    if request.method in STATE_CHANGING:
        claim = Claim(authorized.signature, int(authorized.expires_at.timestamp()))
    result = await dispatch(service.ctx, match.route.operation, params, claim=claim)
    return _json(match.route.status, result, request_id=request_id)


def _check_headers(headers: tuple[tuple[str, str], ...]) -> None:
    """Refuse a header whose bytes aren't UTF-8 (aiohttp keeps them as lone surrogates).

    No SDK sends one, and such a value can be neither signed over nor logged.
    """
    for name, value in headers:
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise bad_request(f"header {name} is not UTF-8 text") from None


async def _read_body(request: web.Request) -> bytes:
    too_large = ApiError(
        413,
        "RequestEntityTooLargeException",
        f"the request body is larger than {MAX_BODY_BYTES} bytes",
    )
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise too_large
    try:
        async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    except TimeoutError:
        raise ApiError(
            408,
            "RequestTimeoutException",
            f"the request body did not arrive within {BODY_TIMEOUT_SECONDS:g} seconds",
        ) from None


def _json(status: int, body: dict[str, Any], *, request_id: str) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode("utf-8"),
        content_type="application/json",
        headers={"x-amzn-RequestId": request_id},
    )


def _error(exc: ApiError, request_id: str) -> web.Response:
    response = _json(exc.status, {"Message": exc.message}, request_id=request_id)
    # botocore's rest-json parser takes the code from this header (what follows a ":" is
    # ignored), and the message from the body.
    response.headers["x-amzn-ErrorType"] = exc.code
    return response
