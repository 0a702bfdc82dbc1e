# SPDX-License-Identifier: Apache-2.0
"""One worker process: spawn it, talk to it over its control channel, watch it, kill it.

The child gets one end of a socketpair as EDGE_CONTROL_FD; invocations go out as `Invoke`
frames and answers come back as `InvokeResult`. Its stdout and stderr are read line by line
into the core's structured log, tagged with the function; the log's redaction masks every
secret value the core holds before anything is written. Its resident memory is sampled and
the process is killed when it exceeds the function's MemorySize (an RSS watch, never an
address-space rlimit, which breaks Python's allocator).

A root core runs a worker as its RunAs user, else as `[workers] default_user`, else as uid 0
without capabilities. Where workers mount their own view (edge/child/mountns.py) the worker
switches user itself, after mounting; elsewhere the child is started as that user.
`check_worker_users` finds out at deployment whether each such user can start its worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import pwd
import signal
import socket
import sys
import sysconfig
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from structlog.typing import FilteringBoundLogger

from edge.child import exits
from edge.config import WorkerUser
from edge.errors import WorkerUserError
from edge.ipc.protocol import NEED_DATA, Connection, Invoke, InvokeResult, Role
from edge.workers.sandbox import EDGE_ROOT, Sandbox
from edge.workers.spec import FunctionSpec, RunAs

#: Serves the core's end of a worker's socketpair, bound to the worker's token and pid.
Adopter = Callable[[socket.socket, str, int], Awaitable[None]]
SECRETS_MANAGER_FUNCTION_ARN = "arn:aws:lambda:::function:GGSecretManager:1"
ROUTER_FUNCTION_ARN = "arn:aws:lambda:::function:GGRouter:1"
SHADOW_FUNCTION_ARN = "arn:aws:lambda:::function:GGShadowService:1"
#: The newest SDK interface the core speaks (greengrasssdk 1.6 declares 1.5).
GGC_MAX_INTERFACE_VERSION = "1.5"
#: How often the resident set is sampled; a 100 ms window lets a runaway allocation overshoot
#: by at most what it can allocate in that time, at ~0.1 % of a core for the reads.
RSS_POLL_SECONDS = 0.1
_COMPAT_DIR = Path(__file__).resolve().parent.parent / "child" / "compat"
_RESERVED_ENV = frozenset(
    {
        "MY_FUNCTION_ARN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "SECRETS_MANAGER_FUNCTION_ARN",
        "ROUTER_FUNCTION_ARN",
        "SHADOW_FUNCTION_ARN",
        "GGC_MAX_INTERFACE_VERSION",
        "EDGE_IPC_SOCKET",
        "EDGE_CONTROL_FD",
        "EDGE_IPC_FD",
        "EDGE_IPC_WATCH_FD",
        "EDGE_HANDLER",
        "EDGE_MEMORY_KB",
        "EDGE_CODE_DIR",
        "EDGE_SANDBOX",
        "EDGE_DEFERRED_ENV",
        "PYTHONPATH",
    }
)
#: The PYTHON* variables a deployment may hand the worker's interpreter as it starts: none of
#: them loads code or moves the standard library. Any other (PYTHONHOME, PYTHONSTARTUP,
#: PYTHONWARNINGS, whose categories name modules to import, ...) would act before the worker
#: is confined and has left root, so the runtime sets those only once it is confined: the
#: function and its children see them, the worker's own interpreter never acts on them.
_INTERPRETER_SAFE_ENV: Final = frozenset(
    {"PYTHONIOENCODING", "PYTHONUTF8", "PYTHONHASHSEED", "PYTHONFAULTHANDLER", "PYTHONUNBUFFERED"}
)


@dataclass(frozen=True, slots=True)
class Launch:
    """How the core starts every worker: its socket, the interpreter, adoption, confinement."""

    #: The core's IPC socket, `{state_dir}/ipc/core.sock`.
    socket_path: Path
    python: Path = Path(sys.executable)
    #: Serves a RunAs worker's pre-connected socket (None: the socket isn't served).
    adopt: Adopter | None = None
    sandbox: Sandbox | None = None
    #: Who a root core's workers without RunAs run as (None: uid 0, capabilities dropped).
    default_user: WorkerUser | None = None


def worker_user(spec: FunctionSpec, default_user: WorkerUser | None) -> RunAs | None:
    """The uid/gid a function's worker runs as (None: the core's own, as it is not root)."""
    if os.geteuid() != 0:
        return None
    if spec.run_as is not None:
        return spec.run_as
    return None if default_user is None else RunAs(uid=default_user.uid, gid=default_user.gid)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an invocation produced: a payload and V1's FunctionError ('', Handled, Unhandled)."""

    payload: bytes
    function_error: str = ""


class WorkerStartError(OSError):
    """The worker's process could not be started; its `strerror` says who, with what, and why.

    Already logged as `worker.start_failed` where it was raised.
    """


class WorkerGoneError(Exception):
    """The worker died, was killed, or broke the protocol while an invocation waited."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def worker_environment(
    spec: FunctionSpec,
    *,
    token: str,
    socket_path: Path,
    code_dir: Path,
    control_fd: int,
    sandbox_plan: str | None = None,
) -> dict[str, str]:
    """The V1 environment of a worker, plus what the runtime needs to start."""
    variables = {k: v for k, v in spec.variables.items() if k not in _RESERVED_ENV}
    deferred = {
        k: v
        for k, v in variables.items()
        if k.startswith("PYTHON") and k not in _INTERPRETER_SAFE_ENV
    }
    env = {k: v for k, v in variables.items() if k not in deferred}
    if deferred:
        env["EDGE_DEFERRED_ENV"] = json.dumps(deferred)
    env.update(
        {
            **_base_environment(),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "MY_FUNCTION_ARN": spec.function_arn,
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": token,
            "SECRETS_MANAGER_FUNCTION_ARN": SECRETS_MANAGER_FUNCTION_ARN,
            "ROUTER_FUNCTION_ARN": ROUTER_FUNCTION_ARN,
            "SHADOW_FUNCTION_ARN": SHADOW_FUNCTION_ARN,
            "GGC_MAX_INTERFACE_VERSION": GGC_MAX_INTERFACE_VERSION,
            "AWS_LAMBDA_FUNCTION_NAME": spec.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(max(1, spec.memory_kb // 1024)),
            "EDGE_IPC_SOCKET": str(socket_path),
            "EDGE_CONTROL_FD": str(control_fd),
            "EDGE_HANDLER": spec.handler,
            "EDGE_MEMORY_KB": str(spec.memory_kb),
            "EDGE_CODE_DIR": str(code_dir),
        }
    )
    if sandbox_plan is not None:
        env["EDGE_SANDBOX"] = sandbox_plan
    return env


def _base_environment() -> dict[str, str]:
    """What any worker interpreter needs: PATH, a UTF-8 locale, the runtime's import path."""
    paths = [str(_COMPAT_DIR), str(EDGE_ROOT)]
    # `-S` skips site (and ~2.5 MB of resident memory); the core's libraries (msgpack, the
    # SDK) are found through their directories instead. code_dir is not on the path yet: the
    # runtime puts it first (a bundled SDK wins) only once it is confined, so a package's
    # `edge/` or `json.py` can't stand in for the runtime's own modules before that.
    for key in ("purelib", "platlib"):
        site = sysconfig.get_paths()[key]
        if site not in paths:
            paths.append(site)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join(paths),
    }


#: Run as a worker's user at deployment: the interpreter starts, imports the runtime as a
#: worker does, and opens every file of the code directories named (an exit status says which
#: failed: `_CANT_READ_CODE` or `_CANT_IMPORT`).
_CANT_READ_CODE: Final = 2
_CANT_IMPORT: Final = 3
_CAN_START = """
import os, sys
try:
    import edge.child.runtime
except Exception as exc:
    print(exc)
    sys.exit(3)
def fail(exc):
    raise exc
for index, code in enumerate(sys.argv[1:]):
    try:
        for top, _, names in os.walk(code, onerror=fail):
            for name in names:
                os.close(os.open(os.path.join(top, name), os.O_RDONLY))
    except OSError as exc:
        print(index, f"{exc.filename}: {exc.strerror}")
        sys.exit(2)
"""
#: How long the deployment-time check may take per user (an interpreter start and a walk).
CHECK_TIMEOUT_SECONDS = 60
_PYTHON_FIX = (
    "set [workers] python to an interpreter that user can execute (not one under a 0700 home "
    "directory), or give the user access to this one"
)


def _user_name(spec: FunctionSpec, run_as: RunAs | None, default_user: WorkerUser | None) -> str:
    if run_as is None:
        return "the core's own user"
    if spec.run_as is None and default_user is not None:
        return f"[workers] default_user {default_user.name} (uid {run_as.uid})"
    try:
        login = f" ({pwd.getpwuid(run_as.uid).pw_name})"
    except KeyError:
        login = ""  # a uid with no account: V1 allowed those too
    return f"RunAs uid {run_as.uid}{login} gid {run_as.gid}"


def _cannot_execute(python: Path, exc: OSError) -> str:
    return f"can't execute the interpreter {python} ({exc.strerror or exc}): {_PYTHON_FIX}"


async def check_worker_users(
    workers: Iterable[tuple[FunctionSpec, Path]], *, python: Path, default_user: WorkerUser | None
) -> None:
    """Check that each worker's user can run `python` and read its code; raise if one can't.

    Raises:
        WorkerUserError: naming the function, the user, and what to change.
    """
    by_user: dict[RunAs, list[tuple[FunctionSpec, Path]]] = {}
    for spec, code_dir in workers:
        run_as = worker_user(spec, default_user)
        if run_as is not None:
            by_user.setdefault(run_as, []).append((spec, code_dir))
    problems = await asyncio.gather(
        *(_check_user(run_as, [d for _, d in items], python) for run_as, items in by_user.items())
    )
    for (run_as, items), (index, problem) in zip(by_user.items(), problems, strict=True):
        if problem:
            spec = items[index][0]
            user = _user_name(spec, run_as, default_user)
            raise WorkerUserError(spec.function_arn, user, problem)


async def _check_user(run_as: RunAs, code_dirs: list[Path], python: Path) -> tuple[int, str]:
    """(index of the worker it concerns, what the user can't do), or (0, '') if nothing."""
    try:
        proc = await asyncio.create_subprocess_exec(
            str(python),
            "-S",
            "-P",
            "-c",
            _CAN_START,
            *map(str, code_dirs),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_base_environment(),
            cwd="/",
            preexec_fn=_drop_privileges(run_as.uid, run_as.gid),
        )
    except OSError as exc:
        return 0, _cannot_execute(python, exc)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 0, f"can't start the interpreter {python} within {CHECK_TIMEOUT_SECONDS} s"
    said = out.decode("utf-8", "replace").strip()
    if proc.returncode == 0:
        return 0, ""
    if proc.returncode == _CANT_READ_CODE:
        index, _, problem = said.partition(" ")
        return int(index), (
            f"can't read the function's code ({problem}): make [core] code_dir and the "
            "directories above it readable to that user"
        )
    if proc.returncode == _CANT_IMPORT:
        return 0, f"can't import the core's libraries with {python} ({said}): {_PYTHON_FIX}"
    last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"status {proc.returncode}"]
    return 0, f"can't start the interpreter {python} ({last[0]}): {_PYTHON_FIX}"


def _drop_privileges(uid: int, gid: int) -> Callable[[], None]:
    """A preexec function that switches the child to uid/gid with no supplementary groups."""

    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return drop


def resident_kb(pid: int) -> int | None:
    """Resident memory the process owns, in KB (None if it is gone).

    RssAnon + RssShmem: what the worker allocated itself. The interpreter's and libraries'
    file-backed pages (RssFile, ~7 MB) are shared with the core and every other worker and are
    not the function's to pay for, as a memory cgroup wouldn't charge them to it either. Kernels
    without the split (before 4.5) report VmRSS instead.
    """
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:  # noqa: PTH123 - hot loop
            for line in status:
                if line.startswith(("RssAnon:", "RssShmem:", "VmRSS:")):
                    name, value = line.split(":", 1)
                    fields[name] = int(value.split()[0])
    except (OSError, ValueError):
        return None
    if "RssAnon" in fields:
        return fields["RssAnon"] + fields.get("RssShmem", 0)
    return fields.get("VmRSS", 0)


class WorkerProcess:
    """A running worker; one invocation at a time (the caller serialises)."""

    def __init__(
        self,
        *,
        spec: FunctionSpec,
        code_dir: Path,
        token: str,
        launch: Launch,
        logger: FilteringBoundLogger,
    ) -> None:
        self.spec = spec
        self.code_dir = code_dir
        self.token = token
        self._launch = launch
        self._log = logger.bind(function_arn=spec.function_arn)
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._conn = Connection(Role.MANAGER)
        self._tasks: list[asyncio.Task[None]] = []
        self.kill_reason: str | None = None
        self.exited = asyncio.Event()
        #: When the child was spawned, wall-clock seconds (None before).
        self.started_at: float | None = None

    @property
    def pid(self) -> int | None:
        """The child's pid once started."""
        return None if self.proc is None else self.proc.pid

    async def start(self) -> None:
        """Spawn the child and start reading its output and watching its memory."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        run_as = worker_user(self.spec, self._launch.default_user)
        # An explicit RunAs Uid 0 is root with its powers, as on V1; an implicit one is not.
        root_worker = os.geteuid() == 0 and run_as is None
        sandbox = self._launch.sandbox
        # Where a root worker mounts its own view, it becomes its user only after: a child
        # started as that user couldn't mount without a user namespace.
        switched_in_worker = run_as is not None and sandbox is not None and sandbox.switches_user
        # The core's ends of the sockets handed to a worker of another user, and the worker's.
        handed: list[tuple[socket.socket, socket.socket]] = []
        try:
            env = worker_environment(
                self.spec,
                token=self.token,
                socket_path=self._launch.socket_path,
                code_dir=self.code_dir,
                control_fd=child.fileno(),
                sandbox_plan=None
                if sandbox is None
                else sandbox.plan(
                    root_worker=root_worker,
                    run_as=(run_as.uid, run_as.gid) if run_as is not None else None,
                ),
            )
            fds = [child.fileno()]
            if run_as is not None:
                # Another uid can't enter the core's 0700 socket directory: hand it connected
                # sockets instead (the core serves the other ends), one for its requests and
                # one for its cache's watch, unless the function turned its cache off.
                names = ["EDGE_IPC_FD"]
                if env.get("EDGE_ANSWER_CACHE") != "off":
                    names.append("EDGE_IPC_WATCH_FD")
                for name in names:
                    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                    handed.append(pair)
                    env[name] = str(pair[1].fileno())
                    fds.append(pair[1].fileno())
            self.proc = await self._spawn(
                env, tuple(fds), run_as=run_as, switched=switched_in_worker
            )
        except BaseException:
            for ours, _theirs in handed:
                ours.close()
            raise
        finally:
            child.close()
            for _ours, theirs in handed:
                theirs.close()
        for ours, _theirs in handed:
            if self._launch.adopt is None:
                ours.close()
            else:
                await self._launch.adopt(ours, self.token, self.proc.pid)
        self._reader, self._writer = await asyncio.open_unix_connection(sock=parent)
        assert self.proc.stdout is not None  # noqa: S101 - PIPE was asked for
        assert self.proc.stderr is not None  # noqa: S101
        self._tasks = [
            asyncio.create_task(
                self._pump(self.proc.stdout, "stdout"), name=f"out-{self.proc.pid}"
            ),
            asyncio.create_task(
                self._pump(self.proc.stderr, "stderr"), name=f"err-{self.proc.pid}"
            ),
            asyncio.create_task(self._watch_memory(), name=f"rss-{self.proc.pid}"),
            asyncio.create_task(self._wait_exit(), name=f"wait-{self.proc.pid}"),
        ]
        self.started_at = time.time()
        self._log.info(
            "worker.started",
            pid=self.proc.pid,
            pinned=self.spec.pinned,
            memory_kb=self.spec.memory_kb,
        )

    async def _spawn(
        self,
        env: dict[str, str],
        fds: tuple[int, ...],
        *,
        run_as: RunAs | None,
        switched: bool,
    ) -> asyncio.subprocess.Process:
        """Start the child; a start that fails says who it runs as, with what, and what to set."""
        try:
            return await asyncio.create_subprocess_exec(
                str(self._launch.python),
                "-S",
                "-P",  # cwd (the function's code) is not put first on sys.path: see above
                "-m",
                "edge.child.runtime",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=self.code_dir,
                pass_fds=fds,
                # uvloop's subprocess_exec takes no user/group arguments; preexec_fn works with
                # both loops (the child runs no Python threads before exec).
                preexec_fn=_drop_privileges(run_as.uid, run_as.gid)
                if run_as is not None and not switched
                else None,
                start_new_session=True,
            )
        except OSError as exc:
            problem = _cannot_execute(self._launch.python, exc)
            if run_as is not None:
                # The error doesn't say whether the exec or entering the code failed (both are
                # EACCES, no file name): the deployment's check, run again, does.
                _, found = await _check_user(run_as, [self.code_dir], self._launch.python)
                problem = found or problem
            raise WorkerStartError(exc.errno, self._start_failed(run_as, problem)) from exc

    def _start_failed(self, run_as: RunAs | None, problem: str) -> str:
        """Log `worker.start_failed` naming the user and what to change; return the message."""
        user = _user_name(self.spec, run_as, self._launch.default_user)
        error = str(WorkerUserError(self.spec.function_arn, user, problem))
        self._log.error(
            "worker.start_failed", user=user, python=str(self._launch.python), error=error
        )
        return error

    async def invoke(self, invoke: Invoke) -> Outcome:
        """Send one invocation and wait for its result (the caller applies the timeout)."""
        if self._writer is None or self._reader is None or self.exited.is_set():
            raise WorkerGoneError(self._gone_reason())
        try:
            self._writer.write(self._conn.send(invoke))
            await self._writer.drain()
            while True:
                event = self._conn.next_event()
                if event is NEED_DATA:
                    data = await self._reader.read(65536)
                    self._conn.receive_data(data)
                    if not data:
                        raise WorkerGoneError(await self._exit_reason())
                    continue
                if isinstance(event, InvokeResult) and event.invocation_id == invoke.invocation_id:
                    return Outcome(event.payload, event.function_error)
                raise WorkerGoneError("the worker answered out of turn")
        except (ConnectionError, OSError) as exc:
            raise WorkerGoneError(await self._exit_reason()) from exc

    async def _exit_reason(self) -> str:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self.exited.wait()
        return self._gone_reason()

    def _gone_reason(self) -> str:
        if self.kill_reason:
            return self.kill_reason
        code = None if self.proc is None else self.proc.returncode
        if code is None:
            return "the worker closed its channel"
        if code < 0:
            return f"the worker was killed by signal {-code}"
        if code == exits.HANDLER_LOAD_FAILED:
            return f"the handler {self.spec.handler} could not be loaded (see the core's log)"
        if code == exits.SANDBOX_FAILED:
            return "the worker could not be confined (see worker.output in the core's log)"
        return f"the worker exited with status {code}"

    def kill(self, reason: str) -> None:
        """Kill the worker's whole process group at once, remembering why."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.kill_reason = self.kill_reason or reason
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    async def stop(self, *, grace: float = 2.0) -> None:
        """Close the channel (the runtime exits), then kill if it lingers; reap everything."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self.exited.wait()
            self.kill("stopped by the core")
        await asyncio.shield(self._reap())

    async def _reap(self) -> None:
        if self.proc is not None:
            await self.proc.wait()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _wait_exit(self) -> None:
        assert self.proc is not None  # noqa: S101 - started
        code = await self.proc.wait()
        if code == exits.INTERPRETER_UNREACHABLE:
            # Started as root, it became its RunAs user and found it can't run this Python.
            run_as = worker_user(self.spec, self._launch.default_user)
            denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            problem = _cannot_execute(self._launch.python, denied)
            self.kill_reason = self.kill_reason or self._start_failed(run_as, problem)
        self.exited.set()
        self._log.info("worker.exited", pid=self.proc.pid, returncode=code, reason=self.kill_reason)

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        while True:
            line = await stream.readline()
            if not line:
                return
            # The logger's redaction masks secret values before the line is rendered.
            self._log.info(
                "worker.output", stream=name, line=line.decode("utf-8", "replace").rstrip("\n")
            )

    async def _watch_memory(self) -> None:
        assert self.proc is not None  # noqa: S101 - started
        limit = self.spec.memory_kb
        while self.proc.returncode is None:
            rss = resident_kb(self.proc.pid)
            if rss is None:
                return
            if rss > limit:
                self._log.warning("worker.memory_exceeded", rss_kb=rss, limit_kb=limit)
                self.kill(
                    f"the function exceeded its memory limit of {limit} KB (resident {rss} KB)"
                )
                return
            await asyncio.sleep(RSS_POLL_SECONDS)
