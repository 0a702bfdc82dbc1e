# SPDX-License-Identifier: Apache-2.0
"""Confine a worker before any function code runs: its own mounts, Landlock, its user, seccomp.

Runs inside the worker (`edge.child.runtime` calls `confine` first thing) with the plan the
core's `edge.workers.sandbox` wrote into EDGE_SANDBOX.

A worker that stays uid 0 (a root core without RunAs) also drops every capability first:
otherwise it could read raw disks, load modules or remount, all of which step around any rule.
Landlock is the second wall: `edge.child.mountns` first covers the hidden paths in a mount
namespace of the worker's own, and `edge.child.seccomp` last refuses the calls no file rule
governs (a setuid chmod, mount, ptrace, new namespaces).
"""

from __future__ import annotations

import importlib
import os
import sys

from edge.child import landlock, mountns
from edge.child.privileges import (
    ConfinementError,
    drop_capabilities,
    load_libc,
    no_new_privs,
    switch_user,
)

# Annotations only: a worker loads no `typing` (see edge/child/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def confine(plan: dict[str, Any]) -> int:
    """Carry out the core's plan; return the Landlock ABI used (0: none).

    In this order: the private mount namespace (which needs root's or a new user namespace's
    powers), the Landlock rules listed and opened (uid 0 may need its powers to enter /home/*),
    the RunAs user or the capability drop, Landlock enforced, and seccomp last, since it
    denies the very calls that set up the namespace.
    """
    abi = landlock.landlock_abi() if plan.get("landlock") else 0
    if plan.get("landlock") and abi == 0 and plan.get("required"):
        raise ConfinementError("this kernel has no Landlock (Linux 5.13+ with lsm=landlock)")
    if plan.get("namespace"):
        mountns.isolate(plan)
    opened = landlock.open_rules(landlock.rules(plan, abi)) if abi else []
    run_as = plan.get("run_as")
    if run_as:
        switch_user(int(run_as[0]), int(run_as[1]))
        check_interpreter()
        ctypes, libc = load_libc()
        no_new_privs(ctypes, libc)
    elif plan.get("drop_capabilities"):
        drop_capabilities()
    if abi:
        landlock.restrict(opened, abi)
    if plan.get("seccomp"):
        install_seccomp()
    return abi


class InterpreterUnreachableError(ConfinementError):
    """The RunAs user can't execute the interpreter the worker was started with as root."""


def check_interpreter() -> None:
    """Refuse to go on as a user who can't execute this interpreter or read its library.

    Started as root and switched only now, the worker holds an interpreter its user couldn't
    have started (one under a 0700 home, as pyenv's or a venv's under /root): every module
    not imported yet would fail later with a bare "Permission denied".
    """
    library = os.path.dirname(os.__file__)  # noqa: PTH120 - os.path: already imported
    for path, mode in ((sys.executable, os.X_OK), (library, os.R_OK | os.X_OK)):
        if not os.access(path, mode):
            raise InterpreterUnreachableError(f"this user can't reach {path}")


def install_seccomp() -> None:
    """Install the seccomp filter (edge.child.seccomp); a missing module fails confinement."""
    try:
        module = importlib.import_module("edge.child.seccomp")
    except ImportError as exc:
        raise ConfinementError(f"the seccomp filter is missing: {exc}") from exc
    module.install_filter()
