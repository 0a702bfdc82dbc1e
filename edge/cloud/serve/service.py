# SPDX-License-Identifier: Apache-2.0
"""Start and stop the service: keys, TLS, database, HTTP server, status follower, signals."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from edge.cloud.bulk import replica
from edge.cloud.bulk.sqlstore import SqlBulkStore
from edge.cloud.config import CloudConfig, ServeSettings
from edge.cloud.db import open_database
from edge.cloud.ids import Arns
from edge.cloud.serve.app import Service, build_app
from edge.cloud.serve.auth import Verifier, load_secret_keys
from edge.cloud.serve.connections import (
    HEAD_TIMEOUT_SECONDS,
    IDLE_TIMEOUT_SECONDS,
    Connections,
    connection_cap,
)
from edge.cloud.serve.context import Context
from edge.cloud.serve.dbthread import DatabaseThread
from edge.cloud.serve.drain import outbox_drain, replica_publisher
from edge.cloud.serve.follow import Health, follow_statuses
from edge.cloud.serve.metrics import ServeCollector, ServeCounts, metrics_server
from edge.cloud.serve.reconcile import reconcile_statuses
from edge.cloud.serve.routes import Router
from edge.errors import ConfigError
from edge.fsutil import read_private_file
from edge.log import get_logger
from edge.signing import load_signing_key

#: Seconds requests in flight get to finish after SIGTERM before their connections close.
SHUTDOWN_SECONDS: Final = 10.0
#: Connections the kernel queues before the service accepts them (aiohttp's default). Accepting
#: is never held back: past the cap, `connections` makes room or closes the newcomer.
BACKLOG: Final = 128


def run(config: CloudConfig) -> int:
    """`edge cloud serve`: serve until SIGINT or SIGTERM, then stop cleanly and return 0.

    Raises:
        EdgeError: The service can't start (no key, unreadable files, port in use, ...).
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop=stop)

    asyncio.run(main())
    return 0


async def serve(config: CloudConfig, *, stop: asyncio.Event) -> None:
    """Run the API, the status follower and the bulk supervisor until `stop` is set.

    Raises:
        ConfigError: No access key is configured, a key or TLS file is wrong, or the address
            can't be listened on.
        InsecurePermissionsError: A secret access key or TLS key file is readable by others.
        SigningKeyError: The signing key is missing (run `edge cloud init`).
        CloudDatabaseError: The database can't be opened.
    """
    settings = config.cloud.serve
    where = str(config.path)
    if not settings.keys:
        raise ConfigError(
            where,
            "lists no access key, so nobody could call the API; add one (see docs/cloud.md)",
            key="cloud.auth.keys",
        )
    secrets = load_secret_keys(settings.keys, config_path=where)
    signing_key = load_signing_key(config.cloud.signing_key)
    tls = _tls_context(settings, config_path=where)
    log = get_logger("cloud.serve")
    connections = Connections(cap=connection_cap())
    counts = ServeCounts()
    async with (
        DatabaseThread(lambda: open_database(config)) as db,
        replica_publisher(config, log, observer=counts.publisher_event) as publisher,
    ):
        health = Health(publisher.connected)
        loop_db = open_database(config)
        drain = outbox_drain(config, db, publisher, log)
        bulk = replica.supervisor(
            config,
            SqlBulkStore(db.call),
            replica.deployer(config, loop_db, signing_key, drain.wake, run=db.call),
            replica.owner_name(),
        )
        try:
            service = Service(
                ctx=Context(
                    config=config,
                    arns=Arns(config.aws.region, config.cloud.account_id),
                    db=db,
                    loop_db=loop_db,
                    signing_key=signing_key,
                    log=log,
                    publisher=publisher,
                    wake_bulk=bulk.wake,
                    drain=drain.wake,
                ),
                verifier=Verifier(keys=secrets, region=config.aws.region),
                router=Router(),
                health=health,
                log=log,
                connections=connections,
            )
            runner = web.AppRunner(
                build_app(service),
                handle_signals=False,
                access_log=None,
                shutdown_timeout=SHUTDOWN_SECONDS,
                # The connection's own deadlines (`connections`) close idle connections; this
                # is aiohttp's copy of the same rule.
                keepalive_timeout=IDLE_TIMEOUT_SECONDS,
                # A request answered before its body was read is closed at once, not drained
                # for ten seconds (aiohttp's default) reading a body nobody wants.
                lingering_time=0,
                logger=_http_logger(),
            )
            await runner.setup()
            listener: asyncio.Server | None = None
            try:
                listener = await _listen(runner, connections, settings, tls, config_path=where)
                log.info(
                    "cloud.serve.listening",
                    url=_url(settings),
                    access_keys=sorted(secrets),
                    region=config.aws.region,
                    max_connections=connections.cap,
                )
                collector = ServeCollector(counts, publisher, db, loop_db, log)
                async with (
                    bulk,
                    metrics_server(settings.metrics_listen, collector, config_path=where),
                    asyncio.TaskGroup() as tasks,
                ):
                    follower = tasks.create_task(
                        follow_statuses(
                            config.mqtt,
                            publisher.received,
                            db,
                            log=log,
                            on_ingest=counts.status_ingested,
                        ),
                        name="edge-cloud-status-follower",
                    )
                    drainer = tasks.create_task(drain.run(), name="edge-cloud-outbox-drain")
                    background = [follower, drainer]
                    if config.pacing.shared_group is not None:
                        # Only a shared subscription hands a report to one replica alone.
                        background.append(
                            tasks.create_task(
                                reconcile_statuses(config, publisher, db, log=log),
                                name="edge-cloud-status-reconcile",
                            )
                        )
                    await stop.wait()
                    for task in background:
                        task.cancel()
            finally:
                if listener is not None:
                    listener.close()
                # Shielded: a second signal must not leave the port or requests half-closed.
                await asyncio.shield(runner.cleanup())
        finally:
            loop_db.close()
    log.info("cloud.serve.stopped")


async def _listen(
    runner: web.AppRunner,
    connections: Connections,
    settings: ServeSettings,
    tls: ssl.SSLContext | None,
    *,
    config_path: str,
) -> asyncio.Server:
    """Listen with aiohttp's protocol wrapped in `connections`' deadlines and cap.

    A plain asyncio server rather than aiohttp's TCPSite, which takes aiohttp's protocol
    factory as it is; the runner still shuts the connections down gracefully at the end.
    """
    server = runner.server
    if server is None:
        raise RuntimeError("the runner is not set up")
    try:
        return await asyncio.get_running_loop().create_server(
            lambda: connections.protocol(server()),
            settings.host,
            settings.port,
            ssl=tls,
            # A TLS connection reaches `connections` only once its handshake is done; until
            # then this is its deadline (asyncio's default is 60 s), the head timeout's twin.
            ssl_handshake_timeout=HEAD_TIMEOUT_SECONDS if tls is not None else None,
            backlog=BACKLOG,
            reuse_address=True,
        )
    except OSError as exc:
        raise ConfigError(
            config_path,
            f"can't listen on {settings.host}:{settings.port}: {exc.strerror or exc}",
            key="cloud.listen",
        ) from None


class _NoClientErrors(logging.Filter):
    """Drop aiohttp's report of a request it could not parse: the client's fault, not ours.

    aiohttp answers such a request 400 itself and logs it with a traceback, one per request, so
    anyone who can connect could fill the log. Every other record passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether to keep the record."""
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HttpProcessingError)


def _http_logger() -> logging.Logger:
    logger = logging.getLogger("edge.cloud.serve.http")
    if not any(isinstance(f, _NoClientErrors) for f in logger.filters):
        logger.addFilter(_NoClientErrors())
    return logger


def _tls_context(settings: ServeSettings, *, config_path: str) -> ssl.SSLContext | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    try:
        # The key must be private like every key file here; the check reads it through fstat.
        read_private_file(settings.tls_key_file)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            config_path,
            f"can't use {settings.tls_cert_file} and {settings.tls_key_file}: "
            f"{getattr(exc, 'strerror', None) or exc}",
            key="cloud.tls_cert_file",
        ) from None
    return context


def _url(settings: ServeSettings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"{'https' if settings.tls else 'http'}://{host}:{settings.port}"
