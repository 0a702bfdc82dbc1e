# SPDX-License-Identifier: Apache-2.0
"""The core: one object that owns every running part and the tasks that drive them.

    async with Core(config) as core:
        await core.serve_forever(stop)

`Core(config)` checks the state directory, then builds the parts; nothing touches the network
or starts a task yet. `async with` opens the store (and so checks the key, in the crypto child
of `edge.secrets.seal_process`) into `LiveSecrets` *before* any network is touched, so a core
with no network at all still comes up with every secret it had (offline start), and a damaged
store stops the core with one clear error instead of being overwritten by the next deployment;
it then opens the IPC socket and starts the workers the store names. `serve_forever` runs the
MQTT link, the deployment agent, the audit log writer and the secret refresher in one TaskGroup
until `stop` is set (or the task is cancelled); leaving the block stops the workers and closes
what was opened.

Who owns what:

- `secrets` (`edge.secrets.live.LiveSecrets`): the store, the live contents and their
  generation, the IPC's secret index and the redactor's values. Only `agent` (a deployment)
  and `refresher` (a rotation seen in Secrets Manager) hand it new contents.
- `workload` (`edge.workers.workload.Workload`): the IPC server, the services answering it
  (from `secrets.index`), the worker processes and the message router.
- `agent` (`edge.deploy.agent.DeploymentAgent`): takes deployment documents from `link`.
- `link` (`edge.mqtt.link.MqttLink`): the one MQTT connection: deployments in, statuses,
  refresh reports and the functions' cloud messages out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from typing import Any, Self

from structlog.typing import FilteringBoundLogger

from edge.audit import AuditLog, audit_path
from edge.config import Config
from edge.deploy.agent import DeploymentAgent
from edge.deploy.journal import History, Inbox
from edge.deploy.trust import DeploymentTrust
from edge.eventloop import cancel_until_done
from edge.ipc.limits import raise_open_files_limit
from edge.log import get_logger
from edge.metrics import CoreCollector, DeploymentCounts, MetricsServer, TimedSource
from edge.mqtt.link import MqttLink
from edge.secrets.fetch_process import AwsTarget, ProcessS3Reader, ProcessSecretSource
from edge.secrets.live import LiveSecrets
from edge.secrets.refresh import Refresher, refreshed_topic
from edge.secrets.seal_process import ChildStore, Unsealing
from edge.secrets.storefile import STORE_FILE_NAME
from edge.statedir import check_state_dir, history_path
from edge.status import running_report
from edge.workers.code import LocalCodePolicy
from edge.workers.sandbox import NamespaceProbe, Sandbox
from edge.workers.workload import Workload

#: On a requested stop, how long to wait for queued status documents to reach the broker.
#: Long enough for a healthy broker, short enough for a systemd stop timeout.
STOP_FLUSH_SECONDS = 3.0


def _worker_sandbox(
    config: Config, log: FilteringBoundLogger, probe: NamespaceProbe | None
) -> Sandbox:
    """The workers' confinement; where the kernel lacks a wall, say so once, loudly."""
    sandbox = Sandbox.from_config(config, probe)
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


class Core:
    """The running core: its parts, built once, started by `async with`, run by `serve_forever`.

    Not re-entrant: one `async with` per instance.
    """

    def __init__(
        self,
        config: Config,
        *,
        logger: FilteringBoundLogger | None = None,
        namespace_probe: NamespaceProbe | None = None,
        unsealing: Unsealing | None = None,
    ) -> None:
        """Check the state directory, and build every part (nothing runs yet).

        `namespace_probe`: the sandbox's kernel probe, if the caller started it already; the
        sandbox waits for its answer here, before any worker can start. `unsealing`: the
        store's unseal, if the caller started it already (`async with` awaits it; the key is
        checked there).

        Raises:
            StateDirMissingError: `edge init` has not been run.
            EdgeError: The state directory is unusable, or a setting is.
        """
        self.config = config
        core, mqtt, aws = config.core, config.mqtt, config.aws
        thing = core.thing_name
        self._log = logger or get_logger("core", thing_name=thing)
        self._deployments_topic = mqtt.deployments_topic(thing)
        self._status_topic = mqtt.status_topic(thing)
        self._refreshed_topic = refreshed_topic(mqtt.topic_prefix, thing)
        check_state_dir(core.state_dir, config.path)
        # Opened, sealed (and signatures checked) in short-lived children: the core never
        # imports `cryptography`.
        self.store = ChildStore(
            path=core.state_dir / STORE_FILE_NAME, key=core.private_key, unsealing=unsealing
        )
        self.secrets = LiveSecrets(self.store)
        # One target, so with `[aws] credentials = "iot"` one certificate exchange (and its
        # refreshes) serves Secrets Manager and S3. Both run in short-lived child processes:
        # the core never imports botocore.
        target = AwsTarget.of(aws.region, aws.endpoint_url, aws.iot)
        self.source = ProcessSecretSource(target, settings=config.fetch)
        self._read_s3 = ProcessS3Reader(target)
        self.counts = DeploymentCounts()
        self.audit = AuditLog(audit_path(core.state_dir), config.audit)
        self.link = MqttLink(
            settings=mqtt,
            client_id=mqtt.client_id or f"edge-core-{thing}",
            subscriptions=[self._deployments_topic],
            on_message=self._on_message,
        )
        self.workload = Workload(
            state_dir=core.state_dir,
            secrets=self.secrets,
            audit=self.audit,
            code_root=core.code_dir,
            python=config.workers.python,
            sandbox=_worker_sandbox(config, self._log, namespace_probe),
            default_user=config.workers.default_user,
            publish_cloud=functools.partial(self.link.publish, qos=0),
            set_cloud_subscriptions=self.link.set_extra_subscriptions,
            read_s3=self._read_s3,
            local_code=LocalCodePolicy.from_config(config),
        )
        self.agent = DeploymentAgent(
            secrets=self.secrets,
            source=TimedSource(self.source, self.counts),
            inbox=Inbox(core.state_dir / "inbox"),
            history=History(history_path(core.state_dir)),
            publish_status=self._publish_status,
            republish_status=functools.partial(self._publish_status, repeated=True),
            hooks=self.workload,
            trust=DeploymentTrust.load(
                thing,
                config.deployments.trusted_keys,
                allow_unsigned=config.deployments.allow_unsigned,
            ),
            log_file=core.state_dir / "logs" / "core.log",
        )
        self.refresher = Refresher(
            source=self.source,
            secrets=self.secrets,
            idle=self.agent.idle,
            settings=config.refresh,
            publish=self._publish_refreshed,
            deadline_seconds=config.fetch.deadline_seconds,
        )
        # `Refresh: true` reads reach the refresher; `edge status` gets `_status_report`.
        self.workload.services.refresh_hint = self.refresher.hint
        self.workload.services.status_report = self._status_report
        self.secrets.on_change(self._restart_stale_clock)
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        """Load the store, open the IPC, and start the stored workers."""
        _raise_descriptor_limit(self._log)
        async with contextlib.AsyncExitStack() as stack:
            contents = (await self.secrets.load()).contents
            self._log.info(
                "core.store_loaded",
                path=str(self.store.path),
                secrets=len(contents.secrets),
                deployment_id=contents.deployment.deployment_id if contents.deployment else None,
            )
            await stack.enter_async_context(self.workload)
            self.agent.apply_stored_logging()
            await self._start_metrics(stack)
            await self.workload.restore()
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop the workers and close the IPC and the metrics server."""
        self._log.info("core.stopped")
        await self._stack.aclose()

    async def serve_forever(self, stop: asyncio.Event | None = None) -> None:
        """Run the link, the agent, the audit log and the refresher until `stop` is set.

        On `stop`, queued status documents get `STOP_FLUSH_SECONDS` to reach the broker. With
        no `stop`, runs until cancelled. A task that fails stops the others and is raised.
        """
        self._log.info(
            "core.started",
            pid=os.getpid(),
            mqtt=self.config.mqtt.url,
            topic=self._deployments_topic,
        )
        async with asyncio.TaskGroup() as tg:
            link = tg.create_task(self.link.run(), name="mqtt-link")
            tasks = [
                tg.create_task(self.agent.run(), name="deployment-agent"),
                tg.create_task(self.audit.run(), name="audit-log"),
                tg.create_task(self.refresher.run(), name="secret-refresh"),
            ]
            if stop is not None:
                await stop.wait()
                await self.link.flush(within=STOP_FLUSH_SECONDS)
                self.link.stop(link)
                await cancel_until_done([link, *tasks])

    async def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self._deployments_topic:
            await self.agent.receive(topic, payload)
        else:
            await self.workload.router.from_cloud(topic, payload)

    def _publish_status(self, payload: bytes, *, repeated: bool = False) -> None:
        self.counts.status_published(payload, repeated=repeated)
        # Retained, so the control plane learns the latest status whenever it looks,
        # without a daemon of its own listening all the time.
        self.link.publish(self._status_topic, payload, qos=1, retain=True)

    def _status_report(self) -> dict[str, Any]:
        return running_report(
            thing_name=self.config.core.thing_name,
            mqtt_url=self.config.mqtt.url,
            connected=self.link.connected.is_set(),
            last_outcome=self.agent.last_outcome,
            last_refused=self.agent.last_refused,
            contents=self.secrets.contents,
            store_path=self.store.path,
            runners=self.workload.manager.runners.values(),
        )

    def _publish_refreshed(self, payload: bytes) -> None:
        # What changed, never a value; not retained: it is an event, not a state.
        self.link.publish(self._refreshed_topic, payload, qos=1)

    def _restart_stale_clock(self) -> None:
        # The store was just replaced: its age (for stale-read metrics) starts again.
        self.workload.services.count_stale_reads(
            time.time(), self.config.metrics.stale_after_seconds
        )

    async def _start_metrics(self, stack: contextlib.AsyncExitStack) -> None:
        """Start counting stale reads and, if `[metrics] listen` is set, serve `/metrics`."""
        services = self.workload.services
        with contextlib.suppress(FileNotFoundError):
            # One stat at start; afterwards each commit restarts the clock.
            stored_at = self.store.path.stat().st_mtime
            services.count_stale_reads(stored_at, self.config.metrics.stale_after_seconds)
        listen = self.config.metrics.listen
        if listen is None:
            return
        self.workload.ipc.measure_latency = True
        collector = CoreCollector(
            counts=self.counts,
            source=self.source,
            ipc=self.workload.ipc,
            manager=self.workload.manager,
            services=services,
            store=self.store,
            refresh=self.refresher.counts,
        )
        await stack.enter_async_context(MetricsServer(listen, collector))
