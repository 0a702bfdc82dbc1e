# SPDX-License-Identifier: Apache-2.0
"""The group's running part: functions, connectors, the IPC that serves them, and routing.

A deployment goes through two steps here. `prepare` (before the store rotates) reads every
connector's and function's run configuration and fetches, verifies and unpacks the functions'
code (connectors' code is built in); anything wrong fails the deployment with nothing changed.
`activate` (after the deployment's secrets and grants went live in `LiveSecrets`) swaps the
routes, the subscriptions and the workers. `restore` does the same from the store at start,
without the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from structlog.typing import FilteringBoundLogger

from edge.audit import AuditLog
from edge.config import WorkerUser
from edge.errors import DeploymentInvalidError
from edge.fsutil import atomic_replace
from edge.ipc.invalidations import ACK_TIMEOUT_SECONDS
from edge.ipc.server import IpcServer, WorkerIdentity
from edge.log import get_logger
from edge.model import Deployment, parse_group
from edge.secrets.contents import StoreContents
from edge.secrets.live import LiveSecrets
from edge.statedir import ADMIN_TOKEN_FILE, ipc_dir, ipc_socket_path
from edge.workers.code import LocalCodePolicy, S3Reader, prepare_code
from edge.workers.connectors import connector_code_dirs, connector_specs
from edge.workers.manager import WorkerManager
from edge.workers.process import Launch, check_worker_users, worker_user
from edge.workers.router import Router, parse_routes
from edge.workers.sandbox import Sandbox
from edge.workers.services import OPERATOR_IDENTITY, CoreServices
from edge.workers.spec import FunctionSpec, function_specs

CloudPublisher = Callable[[str, bytes], None]
SubscriptionSetter = Callable[[list[str]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PreparedWorkload:
    """A deployment's workers, ready to start.

    `specs` and `code_dirs` are the functions and their unpacked code (recorded in the store);
    `connectors` run from their built-in folders, found again at every start.
    """

    specs: tuple[FunctionSpec, ...] = ()
    code_dirs: Mapping[str, Path] = field(default_factory=dict)
    connectors: tuple[FunctionSpec, ...] = ()

    @property
    def workers(self) -> tuple[FunctionSpec, ...]:
        """The functions and the connectors, each with the secrets it may read."""
        return (*self.specs, *self.connectors)


class Workload:
    """Owns the IPC server, the worker manager, the services and the router."""

    def __init__(
        self,
        *,
        state_dir: Path,
        code_root: Path,
        secrets: LiveSecrets,
        publish_cloud: CloudPublisher,
        set_cloud_subscriptions: SubscriptionSetter,
        read_s3: S3Reader | None = None,
        local_code: LocalCodePolicy | None = None,
        python: Path = Path(sys.executable),
        sandbox: Sandbox | None = None,
        default_user: WorkerUser | None = None,
        audit: AuditLog | None = None,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._log = logger or get_logger("workload")
        self.code_root = code_root
        self._read_s3 = read_s3
        self._local_code = local_code
        self._set_subscriptions = set_cloud_subscriptions
        self._python = python
        self._default_user = default_user
        self._secrets = secrets
        self.manager = WorkerManager(
            launch=Launch(
                socket_path=ipc_socket_path(state_dir),
                python=python,
                adopt=self._adopt,
                sandbox=sandbox,
                default_user=default_user,
            ),
            register=self._register,
            revoke=self._revoke,
            logger=self._log,
        )
        self.router = Router(manager=self.manager, publish_cloud=publish_cloud, logger=self._log)
        self.services = CoreServices(
            manager=self.manager,
            publish=self._publish,
            secrets=secrets,
            audit=audit,
            logger=self._log,
        )
        self.admin_token_path = ipc_dir(state_dir) / ADMIN_TOKEN_FILE
        self.ipc = IpcServer(
            socket_path=ipc_socket_path(state_dir), handler=self.services, logger=self._log
        )
        # Every commit waits until no worker's cache holds an answer from before it.
        secrets.after_commit(self._invalidate_caches)

    async def __aenter__(self) -> Self:
        """Start serving the IPC socket; give local operators (`edge invoke`) a token."""
        await self.ipc.__aenter__()
        token = secrets.token_urlsafe(32)
        self.ipc.register(token, WorkerIdentity(function_arn=OPERATOR_IDENTITY, uid=os.getuid()))
        await asyncio.to_thread(write_private, self.admin_token_path, token.encode())
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop every worker, then the IPC server (removing its socket)."""
        try:
            await self.manager.close()
        finally:
            # A read-only or vanished state dir must not turn a clean stop into a traceback.
            with contextlib.suppress(OSError):
                self.admin_token_path.unlink(missing_ok=True)
            await self.ipc.__aexit__(None, None, None)

    def _register(self, token: str, spec: FunctionSpec, pid: int | None) -> None:
        if worker_user(spec, self._default_user) is not None:
            # Its connection is the socketpair end the core handed it (see `_adopt`): the
            # kernel's peer credentials name the core, so only the token identifies it.
            identity = WorkerIdentity(function_arn=spec.function_arn, adopted_only=True)
        else:
            # Registered twice: before the child exists (so its first call can't race the
            # registration; its Hello waits) and then bound to its pid.
            identity = WorkerIdentity(
                function_arn=spec.function_arn, uid=os.getuid(), pid=pid, pid_pending=pid is None
            )
        self.ipc.register(token, identity)

    async def _adopt(self, sock: socket.socket, token: str, pid: int) -> None:
        await self.ipc.adopt(sock, token, pid=pid)

    async def _invalidate_caches(self) -> None:
        """Push the change to every worker's cache; restart the workers that don't acknowledge.

        Returns once every cache acknowledged or its worker is dead, so the deployment or
        refresh that committed reports its outcome only when no stale answer can be served.
        """
        invalidations = self.services.invalidations
        watches = invalidations.watches
        late = await invalidations.invalidate(ACK_TIMEOUT_SECONDS)
        self._log.info("caches.invalidated", seq=invalidations.seq, watches=watches, late=len(late))
        if not late:
            return
        reason = f"its cache of answers acknowledged no change within {ACK_TIMEOUT_SECONDS:g} s"
        pids = {identity.function_arn: identity.pid for identity in late}
        try:
            await self.manager.restart_workers(pids, reason)
        except Exception:  # noqa: BLE001 - logged; the commit is made
            # The commit is made and must be reported; a worker left running is logged here.
            self._log.exception("caches.restart_failed", functions=sorted(pids))

    def _revoke(self, token: str) -> None:
        self.ipc.revoke(token)

    async def _publish(self, source: str, topic: str, payload: bytes) -> None:
        await self.router.from_function(source, topic, payload)

    async def prepare(self, deployment: Deployment) -> PreparedWorkload:
        """Read run configurations and fetch every function's code (all or nothing)."""
        # Connectors first: checking them is cheap and needs no network.
        connectors = connector_specs(deployment.group)
        specs = function_specs(deployment.group)
        dirs = await asyncio.gather(
            *(
                prepare_code(
                    s.function_arn,
                    s.code,
                    code_root=self.code_root,
                    read_s3=self._read_s3,
                    local=self._local_code,
                )
                for s in specs
            )
        )
        connector_dirs = connector_code_dirs(connectors)
        # Another user than the core's (RunAs, default_user) must be able to start its worker:
        # found out now, the deployment fails saying what to change, with nothing changed.
        await check_worker_users(
            [
                *zip(specs, dirs, strict=True),
                *((c, connector_dirs[c.function_arn]) for c in connectors),
            ],
            python=self._python,
            default_user=self._default_user,
        )
        return PreparedWorkload(
            specs=specs,
            code_dirs={s.function_arn: d for s, d in zip(specs, dirs, strict=True)},
            connectors=connectors,
        )

    async def activate(self, contents: StoreContents, prepared: PreparedWorkload) -> None:
        """Switch to a deployment's routes and workers."""
        workers = prepared.workers
        self.router.update(
            parse_routes(parse_group(contents.group).subscriptions) if contents.group else ()
        )
        await self._set_subscriptions(self.router.cloud_subjects())
        await self.manager.apply(
            workers, {**prepared.code_dirs, **connector_code_dirs(prepared.connectors)}
        )

    async def restore(self) -> None:
        """Start what the live store says was deployed, from code already on disk."""
        contents = self._secrets.contents
        if not contents.group:
            return
        try:
            group = parse_group(contents.group)
            specs = function_specs(group)
        except DeploymentInvalidError as exc:
            self._log.warning("workload.restore_failed", error=str(exc))
            return
        try:
            connectors = connector_specs(group)
        except DeploymentInvalidError as exc:
            # The deployed connector is no longer built in (this core was upgraded since):
            # run the functions rather than nothing; the next deployment reports the problem.
            self._log.warning("workload.connectors_restore_failed", error=str(exc))
            connectors = ()
        dirs = {arn: Path(d) for arn, d in contents.code_dirs.items()}
        runnable = tuple(
            s for s in specs if s.function_arn in dirs and dirs[s.function_arn].is_dir()
        )
        if len(runnable) < len(specs):
            self._log.warning(
                "workload.code_missing",
                functions=[s.function_arn for s in specs if s not in runnable],
            )
        prepared = PreparedWorkload(specs=runnable, code_dirs=dirs, connectors=connectors)
        self._secrets.grant(prepared.workers)
        await self.activate(contents, prepared)


def write_private(path: Path, data: bytes) -> None:
    """Write a small 0600 file atomically."""
    atomic_replace(path, data)
