# SPDX-License-Identifier: Apache-2.0
"""Wires the core together in one TaskGroup: MQTT link, deployment agent, graceful stop.

Start-up order matters: the state directory and key are checked and the store is loaded
*before* any network is touched, so a core with no network at all still comes up with every
secret it had (offline start), and a damaged store stops the core with one clear error
instead of being overwritten by the next deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from edge.audit import AuditLog, audit_path
from edge.config import Config
from edge.deploy.agent import DeploymentAgent
from edge.deploy.journal import History, Inbox
from edge.errors import EdgeError, InsecurePermissionsError
from edge.ipc.limits import raise_open_files_limit
from edge.log import REDACTOR, get_logger
from edge.metrics import CoreCollector, DeploymentCounts, MetricsServer, TimedSource
from edge.mqtt.link import MqttLink
from edge.secrets.contents import StoreContents
from edge.secrets.fetch import AwsSecretSource
from edge.secrets.iot_credentials import aws_session
from edge.secrets.keys import CoreKey
from edge.secrets.refresh import RefreshCounts, Refresher, refreshed_topic
from edge.secrets.store import STORE_FILE_NAME, SecretStore
from edge.signing import DeploymentTrust
from edge.workers.code import LocalCodePolicy
from edge.workers.s3 import S3CodeReader
from edge.workers.sandbox import Sandbox
from edge.workers.workload import Workload

STATE_DIR_MODE = 0o700
#: On a requested stop, how long to wait for queued status documents to reach the broker.
#: Long enough for a healthy broker, short enough for a systemd stop timeout.
STOP_FLUSH_SECONDS = 3.0


class StateDirMissingError(EdgeError):
    """The state directory does not exist yet."""

    def __init__(self, path: Path, config_path: Path) -> None:
        self.path = path
        super().__init__(
            f"state directory {path} does not exist; run `edge init --config {config_path}`"
        )


def check_state_dir(path: Path, config_path: Path) -> None:
    """Refuse a missing state directory, or one that others can enter."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise StateDirMissingError(path, config_path) from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise InsecurePermissionsError(str(path), mode, STATE_DIR_MODE)


def open_store(config: Config) -> SecretStore:
    """Check the state directory and key, and return the store (not yet loaded)."""
    check_state_dir(config.core.state_dir, config.path)
    key = CoreKey.load(config.core.private_key)
    return SecretStore(path=config.core.state_dir / STORE_FILE_NAME, key=key)


def _refresher(
    config: Config,
    *,
    source: AwsSecretSource,
    store: SecretStore,
    agent: DeploymentAgent,
    workload: Workload,
    link: MqttLink,
) -> Refresher:
    """Build the secret refresher and let `Refresh: true` reads reach it."""
    services = workload.services
    topic = refreshed_topic(config.mqtt.topic_prefix, config.core.thing_name)

    def refreshed(new: StoreContents) -> None:
        # Only the secret index changes: grants, routes and workers stay as deployed.
        services.refresh_secrets(new)
        services.count_stale_reads(time.time(), config.metrics.stale_after_seconds)

    def publish(payload: bytes) -> None:
        # What changed, never a value; not retained: it is an event, not a state.
        link.publish(topic, payload, qos=1)

    refresher = Refresher(
        source=source,
        store=store,
        holder=agent,
        gate=agent.gate,
        settings=config.refresh,
        publish=publish,
        on_rotated=refreshed,
        deadline_seconds=config.fetch.deadline_seconds,
    )
    services.refresh_hint = refresher.hint
    return refresher


async def _start_metrics(
    stack: contextlib.AsyncExitStack,
    config: Config,
    *,
    counts: DeploymentCounts,
    source: AwsSecretSource,
    workload: Workload,
    store: SecretStore,
    refresh: RefreshCounts,
) -> None:
    """Start counting stale reads and, if `[metrics] listen` is set, serve `/metrics`."""
    with contextlib.suppress(FileNotFoundError):
        # One stat at start; afterwards each successful deployment restarts the clock.
        stored_at = store.path.stat().st_mtime
        workload.services.count_stale_reads(stored_at, config.metrics.stale_after_seconds)
    if config.metrics.listen is None:
        return
    workload.ipc.measure_latency = True
    collector = CoreCollector(
        counts=counts,
        source=source,
        ipc=workload.ipc,
        manager=workload.manager,
        services=workload.services,
        store=store,
        refresh=refresh,
    )
    await stack.enter_async_context(MetricsServer(config.metrics.listen, collector))


async def _load_store(
    config: Config, log: FilteringBoundLogger
) -> tuple[SecretStore, StoreContents]:
    """Open the store (empty if there is none yet) and mask its values in every log."""
    store = open_store(config)
    contents = await store.aload() or StoreContents()
    REDACTOR.update(contents.values())
    log.info(
        "core.store_loaded",
        path=str(store.path),
        secrets=len(contents.secrets),
        deployment_id=contents.deployment.deployment_id if contents.deployment else None,
    )
    return store, contents


def _worker_sandbox(config: Config, log: FilteringBoundLogger) -> Sandbox:
    """The workers' confinement; where the kernel lacks a wall, say so once, loudly."""
    sandbox = Sandbox.from_config(config)
    user = config.workers.default_user
    for level, event, fields in sandbox.notices(
        root=os.geteuid() == 0, default_user=None if user is None else user.name
    ):
        (log.warning if level == "warning" else log.info)(event, **fields)
    return sandbox


def _raise_descriptor_limit(log: FilteringBoundLogger) -> None:
    """The IPC keeps a reserve of descriptors below the soft limit: make that the hard one."""
    was, soft = raise_open_files_limit()
    if soft != was:
        log.info("core.descriptor_limit_raised", was=was, soft=soft)


async def _aws_clients(
    stack: contextlib.AsyncExitStack, config: Config
) -> tuple[AwsSecretSource, S3CodeReader]:
    """Secrets Manager and S3 clients, closed with `stack`.

    They share one session, so with `[aws] credentials = "iot"` one certificate exchange (and
    its refreshes) serves both.
    """
    session = aws_session(config.aws.iot)
    aws = config.aws
    source = AwsSecretSource(
        region=aws.region,
        endpoint_url=aws.endpoint_url,
        settings=config.fetch,
        session=session,
    )
    read_s3 = S3CodeReader(region=aws.region, endpoint_url=aws.endpoint_url, session=session)
    return (
        await stack.enter_async_context(source),
        await stack.enter_async_context(read_s3),
    )


async def run_core(
    config: Config, *, stop: asyncio.Event | None = None, logger: FilteringBoundLogger | None = None
) -> None:
    """Run the core until `stop` is set or the task is cancelled."""
    log = logger or get_logger("core", thing_name=config.core.thing_name)
    _raise_descriptor_limit(log)
    store, contents = await _load_store(config, log)
    state_dir, mqtt, thing = config.core.state_dir, config.mqtt, config.core.thing_name
    deployments_topic = mqtt.deployments_topic(thing)
    async with contextlib.AsyncExitStack() as stack:
        source, read_s3 = await _aws_clients(stack, config)
        counts = DeploymentCounts()
        link: MqttLink | None = None
        agent: DeploymentAgent | None = None
        workload: Workload | None = None

        def publish_status(payload: bytes) -> None:
            assert link is not None  # noqa: S101 - set before any deployment can run
            assert workload is not None  # noqa: S101
            if counts.status_published(payload) == "Success":
                # The store was just replaced: its age (for stale-read metrics) starts again.
                age_limit = config.metrics.stale_after_seconds
                workload.services.count_stale_reads(time.time(), age_limit)
            # Retained, so the control plane learns the latest status whenever it looks,
            # without a daemon of its own listening all the time.
            link.publish(mqtt.status_topic(thing), payload, qos=1, retain=True)

        def publish_cloud(topic: str, payload: bytes) -> None:
            assert link is not None  # noqa: S101 - set before any worker runs
            link.publish(topic, payload, qos=0)

        async def set_cloud_subscriptions(topics: list[str]) -> None:
            assert link is not None  # noqa: S101
            await link.set_extra_subscriptions(topics)

        async def on_message(topic: str, payload: bytes) -> None:
            assert agent is not None  # noqa: S101
            assert workload is not None  # noqa: S101
            if topic == deployments_topic:
                await agent.receive(topic, payload)
            else:
                await workload.router.from_cloud(topic, payload)

        link = MqttLink(
            settings=mqtt,
            client_id=mqtt.client_id or f"edge-core-{thing}",
            subscriptions=[deployments_topic],
            on_message=on_message,
        )
        audit = AuditLog(audit_path(state_dir), config.audit)
        workload = await stack.enter_async_context(
            Workload(
                state_dir=state_dir,
                audit=audit,
                code_root=config.core.code_dir,
                python=config.workers.python,
                sandbox=_worker_sandbox(config, log),
                default_user=config.workers.default_user,
                publish_cloud=publish_cloud,
                set_cloud_subscriptions=set_cloud_subscriptions,
                read_s3=read_s3,
                local_code=LocalCodePolicy.from_config(config),
            )
        )
        agent = DeploymentAgent(
            store=store,
            source=TimedSource(source, counts),
            inbox=Inbox(state_dir / "inbox"),
            history=History(state_dir / "deployments.json"),
            publish_status=publish_status,
            contents=contents,
            hooks=workload,
            trust=DeploymentTrust.load(
                thing,
                config.deployments.trusted_keys,
                allow_unsigned=config.deployments.allow_unsigned,
            ),
            log_file=state_dir / "logs" / "core.log",
        )
        refresher = _refresher(
            config, source=source, store=store, agent=agent, workload=workload, link=link
        )
        await _start_metrics(
            stack,
            config,
            counts=counts,
            source=source,
            workload=workload,
            store=store,
            refresh=refresher.counts,
        )
        await workload.restore(contents)
        log.info("core.started", pid=os.getpid(), mqtt=mqtt.url, topic=deployments_topic)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(link.run(), name="mqtt-link"),
                    tg.create_task(agent.run(), name="deployment-agent"),
                    tg.create_task(audit.run(), name="audit-log"),
                    tg.create_task(refresher.run(), name="secret-refresh"),
                ]
                if stop is not None:
                    await stop.wait()
                    await link.flush(within=STOP_FLUSH_SECONDS)
                    for task in tasks:
                        task.cancel()
        finally:
            log.info("core.stopped")
