# SPDX-License-Identifier: Apache-2.0
"""Supervise the group's functions: start, invoke with timeouts, restart with backoff, replace.

One `FunctionRunner` per deployed function owns at most one worker process and serialises
its invocations (V1 ran one invocation per container at a time). Pinned functions start with
the deployment and are restarted with jittered, capped backoff when they die; on-demand ones
start on their first invocation and stay warm until the next deployment replaces them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from edge.ipc.protocol import Invoke
from edge.log import get_logger
from edge.mqtt.link import backoff_delays
from edge.redaction import mask_payload
from edge.workers.process import (
    Launch,
    Outcome,
    WorkerGoneError,
    WorkerProcess,
    WorkerStartError,
)
from edge.workers.spec import FunctionSpec

#: First restart delay of a crashed pinned function, doubling up to the cap.
RESTART_INITIAL_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
#: A worker that lived this long is healthy again: its next crash restarts quickly.
HEALTHY_AFTER_SECONDS = 30.0

TokenRegistrar = Callable[[str, FunctionSpec, int | None], None]
TokenRevoker = Callable[[str], None]


class UnknownFunctionError(LookupError):
    """No deployed function has that ARN."""


def unhandled(message: str) -> Outcome:
    """V1's answer for a failure the core detected (timeout, crash, memory)."""
    import json  # noqa: PLC0415 - tiny, and keeps the hot path's imports obvious

    return Outcome(
        json.dumps({"errorMessage": message, "errorType": "Unhandled"}).encode(), "Unhandled"
    )


class FunctionRunner:
    """One function: its worker, its invocation queue, its restarts."""

    def __init__(
        self,
        *,
        spec: FunctionSpec,
        code_dir: Path,
        launch: Launch,
        register: TokenRegistrar,
        revoke: TokenRevoker,
        logger: FilteringBoundLogger,
    ) -> None:
        self.spec = spec
        self.code_dir = code_dir
        self._launch = launch
        self._register = register
        self._revoke = revoke
        self._log = logger.bind(function_arn=spec.function_arn)
        self._lock = asyncio.Lock()
        self._worker: WorkerProcess | None = None
        self._closing = False
        self._restart_task: asyncio.Task[None] | None = None
        self._delay = backoff_delays(RESTART_INITIAL_SECONDS, RESTART_MAX_SECONDS)
        self._crashes = 0
        self.restarts = 0
        # The worker `restart_now` killed: its pinned successor starts without backoff.
        self._replaced: WorkerProcess | None = None

    @property
    def worker(self) -> WorkerProcess | None:
        """The current worker process, if one runs."""
        return self._worker

    async def start(self) -> None:
        """Start the worker now (pinned functions, at deployment)."""
        async with self._lock:
            await self._ensure_worker()

    async def _ensure_worker(self) -> WorkerProcess:
        worker = self._worker
        if worker is not None and not worker.exited.is_set():
            return worker
        if worker is not None:
            await worker.stop()
            self._revoke(worker.token)
        token = secrets.token_urlsafe(32)
        worker = WorkerProcess(
            spec=self.spec,
            code_dir=self.code_dir,
            token=token,
            launch=self._launch,
            logger=self._log,
        )
        # Registered before the child exists, so its first SDK call can't race the registration;
        # then bound to its pid so a token copied to another process is useless.
        self._register(token, self.spec, None)
        await worker.start()
        self._register(token, self.spec, worker.pid)
        self._worker = worker
        self._started_at = time.monotonic()
        if self.spec.pinned:
            task = asyncio.create_task(
                self._supervise(worker), name=f"supervise-{self.spec.function_id}"
            )
            self._restart_task = task
        return worker

    async def _supervise(self, worker: WorkerProcess) -> None:
        """Restart a pinned worker that died, with backoff."""
        await worker.exited.wait()
        if self._closing or self._worker is not worker:
            return
        lived = time.monotonic() - self._started_at
        if self._replaced is worker:
            wait = 0.0  # the core killed it, it didn't crash
        else:
            self._crashes = 0 if lived > HEALTHY_AFTER_SECONDS else self._crashes + 1
            wait = self._delay(self._crashes)
        self._log.warning(
            "worker.restarting", reason=worker.kill_reason or "exited", retry_in=round(wait, 2)
        )
        await asyncio.sleep(wait)
        if self._closing:
            return
        async with self._lock:
            if self._worker is worker:
                self.restarts += 1
                await self._ensure_worker()

    async def restart_now(self, worker: WorkerProcess, reason: str) -> None:
        """Kill `worker` at once and wait until it is gone; a pinned one is started again.

        Returns once the process is dead: nothing it held (its cache of answers) is served
        any more. An invocation it was running fails with `reason`.
        """
        self._replaced = worker
        worker.kill(reason)
        await worker.exited.wait()
        if not self.spec.pinned:
            return
        # Its supervisor starts the successor: make sure there is one (the task may be gone).
        if self._restart_task is None or self._restart_task.done():
            self._restart_task = asyncio.create_task(
                self._supervise(worker), name=f"supervise-{self.spec.function_id}"
            )

    async def invoke(self, payload: bytes, *, client_context: str = "") -> Outcome:
        """Run one invocation, enforcing the function's Timeout.

        A failed invocation's answer (V1's errorMessage, errorType and stackTrace, or the
        core's reason) is masked here, before it reaches any caller: `edge invoke`, another
        function or a log. A successful answer is the function's own, passed on as it is.
        """
        outcome = await self._invoke(payload, client_context)
        if not outcome.function_error:
            return outcome
        return Outcome(mask_payload(outcome.payload), outcome.function_error)

    async def _invoke(self, payload: bytes, client_context: str) -> Outcome:
        async with self._lock:
            if self._closing:
                return unhandled("the function is being replaced by a new deployment")
            try:
                worker = await self._ensure_worker()
            except OSError as exc:
                return unhandled(f"the worker could not start: {exc.strerror or exc}")
            timeout = self.spec.timeout_seconds
            invoke = Invoke(
                invocation_id=str(uuid.uuid4()),
                function_arn=self.spec.function_arn,
                payload=payload,
                client_context=client_context,
                invocation_type="RequestResponse",
                deadline_ms=int((time.monotonic() + timeout) * 1000),
            )
            try:
                async with asyncio.timeout(timeout):
                    return await worker.invoke(invoke)
            except TimeoutError:
                message = f"Task timed out after {timeout:g} seconds"
                worker.kill(message)
                self._log.warning("worker.timeout", timeout_seconds=timeout)
                return unhandled(message)
            except WorkerGoneError as exc:
                return unhandled(exc.reason)

    async def close(self) -> None:
        """Stop the worker and revoke its token; further invocations are refused."""
        self._closing = True
        if self._restart_task is not None:
            self._restart_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart_task
        worker = self._worker
        if worker is not None:
            await worker.stop()
            self._revoke(worker.token)


class WorkerManager:
    """All of a deployment's functions; swapped as a whole when a deployment applies."""

    def __init__(
        self,
        *,
        launch: Launch,
        register: TokenRegistrar,
        revoke: TokenRevoker,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._launch = launch
        self._register = register
        self._revoke = revoke
        self._log = logger or get_logger("workers")
        self._runners: dict[str, FunctionRunner] = {}
        self._background: set[asyncio.Task[Outcome]] = set()

    @property
    def runners(self) -> Mapping[str, FunctionRunner]:
        """Runners by qualified function ARN."""
        return self._runners

    def find(self, function_arn: str) -> FunctionRunner | None:
        """The runner for a qualified ARN, or an unqualified one if exactly one matches."""
        runner = self._runners.get(function_arn)
        if runner is not None:
            return runner
        matches = [r for r in self._runners.values() if r.spec.unqualified_arn == function_arn]
        return matches[0] if len(matches) == 1 else None

    async def apply(self, specs: tuple[FunctionSpec, ...], code_dirs: Mapping[str, Path]) -> None:
        """Replace the running functions with a deployment's: stop the old, start pinned new."""
        old = self._runners
        self._runners = {
            spec.function_arn: FunctionRunner(
                spec=spec,
                code_dir=code_dirs[spec.function_arn],
                launch=self._launch,
                register=self._register,
                revoke=self._revoke,
                logger=self._log,
            )
            for spec in specs
        }
        await asyncio.gather(*(runner.close() for runner in old.values()))
        for runner in self._runners.values():
            if runner.spec.pinned:
                try:
                    await runner.start()
                except WorkerStartError:
                    pass  # logged where it was raised, naming the user and the interpreter
                except OSError as exc:
                    self._log.warning(
                        "worker.start_failed", function_arn=runner.spec.function_arn, error=str(exc)
                    )
        self._log.info("workers.applied", functions=len(specs), pinned=sum(s.pinned for s in specs))

    async def invoke(
        self,
        function_arn: str,
        payload: bytes,
        *,
        client_context: str = "",
        invocation_type: str = "RequestResponse",
    ) -> Outcome:
        """Invoke a deployed function; `Event` returns at once and runs in the background."""
        runner = self.find(function_arn)
        if runner is None:
            raise UnknownFunctionError(function_arn)
        if invocation_type == "Event":
            task = asyncio.create_task(runner.invoke(payload, client_context=client_context))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return Outcome(b"")
        return await runner.invoke(payload, client_context=client_context)

    async def restart_workers(self, pids: Mapping[str, int | None], reason: str) -> None:
        """Kill the named workers at once and wait until they are gone; pinned ones start again.

        `pids` maps function ARNs to the worker's pid (None: whichever runs). Workers already
        replaced are left alone.
        """
        doomed = []
        for function_arn, pid in pids.items():
            runner = self._runners.get(function_arn)
            worker = None if runner is None else runner.worker
            if runner is None or worker is None or worker.exited.is_set():
                continue
            if pid is not None and worker.pid != pid:
                continue  # that worker is gone already; this one started after the change
            self._log.warning("worker.killed", function_arn=function_arn, reason=reason)
            doomed.append(runner.restart_now(worker, reason))
        await asyncio.gather(*doomed)

    async def close(self) -> None:
        """Stop every worker (on core shutdown)."""
        runners, self._runners = self._runners, {}
        await asyncio.shield(asyncio.gather(*(runner.close() for runner in runners.values())))
        for task in list(self._background):
            task.cancel()
