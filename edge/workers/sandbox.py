# SPDX-License-Identifier: Apache-2.0
"""What the core hides from its workers, and the confinement plan each worker carries out.

The core knows which of its files hold what a worker must never see: the state directory (the
store, the inbox, the audit log, the socket directory), the core key or its PIN file, the MQTT
client key, the config, and the AWS credentials botocore reads. `Sandbox.from_config` gathers
them once and probes, once, which of the three walls this kernel allows a worker: its own
mount namespace (tried for real in a throwaway child), Landlock and seccomp; `notices` says
at start what is missing, and `plan` turns it all into the JSON a worker reads from
EDGE_SANDBOX and hands to `edge.child.confine` before any function code runs.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from edge.child.landlock import landlock_abi
from edge.child.mountns import AS_ROOT, AS_USER
from edge.config import Config, token_keys
from edge.errors import SandboxUnavailableError
from edge.secrets.keyref import TokenKeyRef
from edge.statedir import ipc_socket_path

SandboxMode = Literal["auto", "required", "off"]
#: Where the `edge` package (the worker runtime included) is imported from: on every worker's
#: path, read-only to all of them.
EDGE_ROOT = Path(__file__).resolve().parents[2]
#: How long the namespace probe's child may take before the wall counts as missing.
PROBE_TIMEOUT_SECONDS = 30


def _real(path: Path) -> str:
    return os.path.realpath(path)


def _resolved(paths: tuple[Path, ...]) -> tuple[str, ...]:
    return tuple(sorted({_real(p) for p in paths}))


def aws_credential_paths() -> tuple[Path, ...]:
    """The shared credentials and config files botocore would read for the core."""
    paths = [Path.home() / ".aws"]
    for variable in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        value = os.environ.get(variable)
        if value:
            paths.append(Path(value).expanduser())
    return tuple(paths)


def hidden_paths(config: Config) -> tuple[Path, ...]:
    """Every path of the core's that a worker may neither read nor write."""
    paths: list[Path] = [config.core.state_dir, config.path, *aws_credential_paths()]
    # The IoT key buys AWS credentials for the core's role; a token key's PIN file unlocks it.
    for key in token_keys(config.core, config.mqtt, config.aws):
        if isinstance(key, TokenKeyRef):
            if key.pin_source is not None:
                paths.append(key.pin_source)
        elif key is not None:
            paths.append(key)
    paths.extend(config.workers.hidden_paths)
    return tuple(paths)


#: What a notice at core start is: a log level, an event name and its fields.
Notice = tuple[Literal["info", "warning"], str, dict[str, object]]
_NAMESPACE_FIX = {
    AS_ROOT: "give the core CAP_SYS_ADMIN (a container drops it)",
    AS_USER: "allow unprivileged user namespaces (sysctl user.max_user_namespaces, "
    "kernel.unprivileged_userns_clone, kernel.apparmor_restrict_unprivileged_userns) "
    "or run the core as root",
}
_SECCOMP_FIX = "run a kernel with seccomp filters (CONFIG_SECCOMP_FILTER)"
_SECCOMP_MISSING = "the seccomp filter module is missing"


class NamespaceProbe:
    """A worker's namespace step tried in a throwaway child, started now and read later.

    A child, since the step can't be undone in the core itself; the core's own interpreter,
    since only the kernel and the core's uid matter. `edge run` starts it before it imports
    the core's modules, so the child's start-up overlaps theirs; `Sandbox.create` reads it.
    """

    def __init__(self, hidden: tuple[str, ...]) -> None:
        """Start the child for the (resolved) `hidden` paths; don't wait for it."""
        self.hidden = hidden
        self.kind = AS_ROOT if os.geteuid() == 0 else AS_USER
        self._child: subprocess.Popen[str] | None = None
        self._failed = ""
        try:
            self._child = subprocess.Popen(
                [
                    sys.executable,
                    "-S",
                    "-P",
                    "-m",
                    "edge.child.mountns",
                    "probe",
                    self.kind,
                    *hidden,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={"PYTHONPATH": str(EDGE_ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        except OSError as exc:
            self._failed = f"the probe could not run: {exc}"

    @classmethod
    def for_config(cls, config: Config) -> NamespaceProbe:
        """The probe `Sandbox.from_config(config)` would run."""
        return cls(_resolved(hidden_paths(config)))

    def result(self) -> tuple[str, str]:
        """Wait for the child: (how a worker enters, '') or ('', why it can't)."""
        if self._child is None:
            return "", self._failed
        try:
            stdout, stderr = self._child.communicate(timeout=PROBE_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired as exc:
            self._child.kill()
            self._child.communicate()
            return "", f"the probe could not run: {exc}"
        if self._child.returncode == 0:
            return self.kind, ""
        return "", stdout.strip() or stderr.strip()[-300:] or f"status {self._child.returncode}"


def probe_namespace(hidden: tuple[str, ...]) -> tuple[str, str]:
    """Try a worker's namespace step in a throwaway child: (how it enters, '') or ('', why not)."""
    return NamespaceProbe(hidden).result()


def _namespace_fix() -> str:
    return _NAMESPACE_FIX[AS_ROOT if os.geteuid() == 0 else AS_USER]


def probe_seccomp() -> str:
    """'' if workers can install the seccomp filter, else why they can't."""
    try:
        module = importlib.import_module("edge.child.seccomp")
    except ImportError as exc:
        return f"{_SECCOMP_MISSING} ({exc})"
    return "" if module.seccomp_available() else "this kernel has no seccomp filters"


@dataclass(frozen=True, slots=True)
class Sandbox:
    """How the core confines its workers; `plan` gives one worker's EDGE_SANDBOX value."""

    mode: SandboxMode
    hidden: tuple[str, ...]
    protected: tuple[str, ...]
    writable: tuple[str, ...]
    #: The kernel's Landlock ABI (0: none); probed once when the core starts.
    abi: int
    #: Paths inside hidden ones that stay reachable by name: the core's IPC socket.
    reachable: tuple[str, ...] = ()
    #: How workers enter their mount namespace (mountns.AS_ROOT or AS_USER), '' where they can't.
    namespace: str = ""
    #: Why they can't, when `namespace` is ''.
    namespace_problem: str = ""
    #: Whether workers install the seccomp filter.
    seccomp: bool = False
    #: Why they can't, when `seccomp` is False.
    seccomp_problem: str = ""

    @classmethod
    def create(
        cls,
        *,
        mode: SandboxMode,
        hidden: tuple[Path, ...],
        protected: tuple[Path, ...],
        writable: tuple[Path, ...],
        reachable: tuple[Path, ...] = (),
        probe: NamespaceProbe | None = None,
    ) -> Sandbox:
        """Resolve the paths and probe the kernel; `required` without every wall is an error.

        `probe`, one already started, serves if it tried exactly these hidden paths.
        """
        interpreters = {Path(sys.prefix), Path(sys.base_prefix), EDGE_ROOT}
        sandbox = cls(
            mode=mode,
            hidden=_resolved(hidden),
            protected=tuple(sorted({_real(p) for p in (*protected, *interpreters)})),
            writable=tuple(sorted({_real(p) for p in writable})),
            reachable=tuple(sorted({_real(p) for p in reachable})),
            abi=0,
        )
        if mode == "off":
            return sandbox
        if probe is not None and probe.hidden == sandbox.hidden:
            namespace, problem = probe.result()
        else:
            namespace, problem = probe_namespace(sandbox.hidden)
        sandbox = replace(
            sandbox,
            abi=landlock_abi(),
            namespace=namespace,
            namespace_problem=problem,
            seccomp_problem=probe_seccomp(),
        )
        sandbox = replace(sandbox, seccomp=not sandbox.seccomp_problem)
        if mode == "required":
            missing = sandbox.missing()
            if missing:
                raise SandboxUnavailableError(
                    "; ".join(problem for problem, _ in missing),
                    fix="; ".join(fix for _, fix in missing),
                )
        return sandbox

    @classmethod
    def from_config(cls, config: Config, probe: NamespaceProbe | None = None) -> Sandbox:
        """The core's sandbox: its own secrets hidden, code and interpreters read-only."""
        return cls.create(
            probe=probe,
            mode=config.workers.sandbox,
            hidden=hidden_paths(config),
            protected=(config.core.code_dir, config.workers.python.parent),
            writable=config.workers.writable_paths,
            reachable=(ipc_socket_path(config.core.state_dir),),
        )

    def missing(self) -> list[tuple[str, str]]:
        """The walls this kernel lacks: (what is missing, how to fix it)."""
        out: list[tuple[str, str]] = []
        if self.abi == 0:
            out.append(("this kernel has no Landlock", "run Linux 5.13+ with lsm=landlock"))
        if not self.namespace:
            out.append((f"no private mount namespace ({self.namespace_problem})", _namespace_fix()))
        if not self.seccomp:
            out.append((f"no seccomp filter ({self.seccomp_problem})", self._seccomp_fix()))
        return out

    @property
    def switches_user(self) -> bool:
        """Whether the worker itself becomes its RunAs user (after mounting, as root)."""
        return self.mode != "off" and self.namespace == AS_ROOT

    def notices(self, *, root: bool, default_user: str | None) -> list[Notice]:
        """What the core says once at start about its workers' walls and user."""
        if self.mode == "off":
            out: list[Notice] = []
        else:
            out = [
                (
                    "info",
                    "workers.sandbox",
                    {
                        "landlock_abi": self.abi,
                        "namespace": self.namespace or None,
                        "seccomp": self.seccomp,
                        "hidden": len(self.hidden),
                    },
                )
            ]
            if self.mode == "auto":
                out += self._unavailable()
        if root and default_user is None:
            out.append(
                (
                    "info",
                    "workers.run_as_root",
                    {
                        "problem": "functions without RunAs run as uid 0 with every capability "
                        "dropped",
                        "fix": "set [workers] default_user to an unprivileged user",
                    },
                )
            )
        elif root:
            out.append(("info", "workers.default_user", {"user": default_user}))
        return out

    def _seccomp_fix(self) -> str:
        if self.seccomp_problem.startswith(_SECCOMP_MISSING):
            return "reinstall edge whole (edge/child/seccomp.py)"
        return _SECCOMP_FIX

    def _unavailable(self) -> list[Notice]:
        out: list[Notice] = []
        required = '[workers] sandbox = "required" to refuse'
        if self.abi == 0:
            out.append(
                (
                    "warning",
                    "workers.sandbox_unavailable",
                    {
                        "problem": "this kernel has no Landlock: a worker of the core's user "
                        "can read its key and store",
                        "fix": f"run Linux 5.13+ with lsm=landlock, or {required}",
                    },
                )
            )
        if not self.namespace:
            out.append(
                (
                    "warning",
                    "workers.namespace_unavailable",
                    {
                        "problem": "no private mount namespace, so workers see the core's "
                        f"files (Landlock alone denies them): {self.namespace_problem}",
                        "fix": f"{_namespace_fix()}, or {required}",
                    },
                )
            )
        if not self.seccomp:
            out.append(
                (
                    "warning",
                    "workers.seccomp_unavailable",
                    {
                        "problem": f"no seccomp filter ({self.seccomp_problem}): a worker may "
                        "set setuid bits on its own files and call mount, ptrace, unshare",
                        "fix": f"{self._seccomp_fix()}, or {required}",
                    },
                )
            )
        return out

    def plan(self, *, root_worker: bool, run_as: tuple[int, int] | None = None) -> str | None:
        """The EDGE_SANDBOX value for one worker (None: sandbox off).

        `run_as` is the uid/gid the worker switches to itself, after its mounts (only where
        `switches_user`; elsewhere the core starts it as that user).
        """
        if self.mode == "off":
            return None
        return json.dumps(
            {
                "landlock": self.abi > 0,
                "required": self.mode == "required",
                "namespace": self.namespace or None,
                "hidden": self.hidden,
                "reachable": self.reachable,
                "protected": self.protected,
                "writable": self.writable,
                "run_as": run_as if self.switches_user else None,
                # A worker left at uid 0 would otherwise keep the power to step around rules.
                "drop_capabilities": root_worker,
                "seccomp": self.seccomp,
            }
        )
