# SPDX-License-Identifier: Apache-2.0
"""The servers, each a process of its own: (ipc) the core's code, (http) the baseline, bare."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.ipcbench.constants import ANSWER, SECRET_NAME

SECRETS = {SECRET_NAME: ANSWER, ANSWER["ARN"]: ANSWER}
#: `--server-timer`: the period of a real core's shortest timer, its workers' memory polls
#: (`edge.workers.process.RSS_POLL_SECONDS`).
CORE_TIMER_SECONDS = 0.1


def use_loop(no_uvloop: bool) -> str:  # noqa: FBT001 - a command-line switch
    """Install uvloop unless told not to or missing; return the loop's name."""
    if not no_uvloop:
        try:
            import uvloop  # noqa: PLC0415 - optional dependency
        except ImportError:
            pass
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            return f"uvloop {uvloop.__version__}"
    return "asyncio (default)"


def core_services() -> Any:
    """The core's own request handler, holding ANSWER's secret and granting it to "bench".

    The native mode answers with the code the core runs (name/ARN index, access check,
    answers encoded once per deployment), not with a stand-in.
    """
    from edge.secrets.contents import LocalSecret, SecretVersion, StoreContents  # noqa: PLC0415
    from edge.secrets.index import FixedIndex, SecretIndex  # noqa: PLC0415
    from edge.workers.services import CoreServices  # noqa: PLC0415

    version = SecretVersion(
        ANSWER["VersionId"],
        tuple(ANSWER["VersionStages"]),
        ANSWER["CreatedDate"],
        secret_string=ANSWER["SecretString"],
    )
    secret = LocalSecret(
        resource_id="bench-secret",
        arn=ANSWER["ARN"],
        name=ANSWER["Name"],
        labels={"AWSCURRENT": version.version_id},
        versions={version.version_id: version},
    )
    contents = StoreContents(secrets={secret.resource_id: secret})
    grant = SimpleNamespace(function_arn="bench", readable_resources=frozenset({"bench-secret"}))
    # Only get_secret_value is served here: no worker manager, nothing to publish to.
    index = SecretIndex.build(contents, (grant,))
    return CoreServices(manager=None, publish=None, secrets=FixedIndex(index))  # type: ignore[arg-type]


def run_ipc_server(socket_path: str, token: str, no_uvloop: bool, timer: bool) -> None:  # noqa: FBT001
    """Serve until stdin closes; print one ready line with the loop's name.

    With `timer`, a 100 ms timer is always pending, as in a real core (its workers' memory
    polls, MQTT's keepalive): the loop's every wait then arms a kernel timer.
    """
    from edge.ipc.server import IpcServer, WorkerIdentity  # noqa: PLC0415
    from edge.log import configure_logging  # noqa: PLC0415

    # Logs go to stderr: stdout carries the ready line to the conductor.
    configure_logging(level="warning", stream=sys.stderr)
    loop_name = use_loop(no_uvloop)

    async def serve() -> None:
        handler = core_services()
        async with IpcServer(socket_path=Path(socket_path), handler=handler) as server:
            server.register(token, WorkerIdentity(function_arn="bench", uid=os.getuid()))
            print(json.dumps({"loop": loop_name}), flush=True)
            ticking = asyncio.create_task(tick()) if timer else None
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            if ticking is not None:
                ticking.cancel()

    async def tick() -> None:
        while True:  # noqa: ASYNC110 - the pending timer is the point
            await asyncio.sleep(CORE_TIMER_SECONDS)

    asyncio.run(serve())


def run_bare_server(socket_path: str, no_uvloop: bool) -> None:  # noqa: FBT001
    """The machine's reference: length-prefixed msgpack in and out, no edge code at all.

    What the issue calls a bare Unix-socket msgpack round trip (~8 µs of server CPU with
    uvloop on its reference machine): the same loop and framing as the core, no checks.
    """
    import msgpack  # noqa: PLC0415

    loop_name = use_loop(no_uvloop)
    header = struct.Struct(">I")

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buffer = bytearray()

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while len(self.buffer) >= header.size:
                (size,) = header.unpack_from(self.buffer)
                if len(self.buffer) < header.size + size:
                    return
                request = msgpack.unpackb(self.buffer[header.size : header.size + size])
                del self.buffer[: header.size + size]
                body = msgpack.packb(
                    {
                        "type": "response",
                        "request_id": request["request_id"],
                        "ok": True,
                        "result": ANSWER,
                        "error": None,
                    }
                )
                self.transport.write(header.pack(len(body)) + body)  # type: ignore[attr-defined]

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_unix_server(Echo, path=socket_path)
        print(json.dumps({"loop": loop_name}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        server.close()

    asyncio.run(serve())


def run_http_server(token: str, no_uvloop: bool) -> None:  # noqa: FBT001
    """Serve the baseline until stdin closes; print one ready line with port and loop."""
    from aiohttp import web  # noqa: PLC0415 - only the baseline needs it

    loop_name = use_loop(no_uvloop)

    async def get_secret(request: web.Request) -> web.Response:
        if request.headers.get("X-Aws-Parameters-Secrets-Token") != token:
            return web.json_response({"Message": "missing or wrong token"}, status=401)
        secret = SECRETS.get(request.query.get("secretId", ""))
        if secret is None:
            return web.json_response({"Message": "no such secret"}, status=404)
        return web.json_response(secret)

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/secretsmanager/get", get_secret)
        # No access log: the agent-style servers don't write one per request either.
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(json.dumps({"loop": loop_name, "port": port}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    asyncio.run(serve())
