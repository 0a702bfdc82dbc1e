# SPDX-License-Identifier: Apache-2.0
"""What `edge status` reports: the running core's own account, or what its state dir holds.

A running core answers `core.status` on its IPC, to its operator only (`edge invoke`'s token,
which holds no secret grant), from what it has in memory: its broker connection, the last
deployment that ended, the last document it refused (most refusals send no status document,
so this is where an operator sees them), its store and its workers. Asking the core, rather
than reading a file it keeps, gives the state at this instant and costs the core nothing while
nobody asks. A core that doesn't run is reported from its state directory: the store's
deployment and age, and the last outcome in its deployment history.

Never a value: ids, labels, counts, times and the core's own error messages (which never quote
one).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from edge.secrets.contents import StoreContents
    from edge.workers.manager import FunctionRunner

#: Exit statuses of `edge status`.
EXIT_HEALTHY: Final = 0
EXIT_DISCONNECTED: Final = 1
EXIT_NOT_RUNNING: Final = 3


def running_report(
    *,
    thing_name: str,
    mqtt_url: str,
    connected: bool,
    last_outcome: Mapping[str, Any] | None,
    last_refused: Mapping[str, Any] | None,
    contents: StoreContents,
    store_path: Path,
    runners: Iterable[FunctionRunner],
) -> dict[str, Any]:
    """The running core's report (the answer to `core.status`)."""
    report = stored_report(
        thing_name, last_outcome=last_outcome, contents=contents, store_path=store_path
    )
    report["Running"] = True
    report["Mqtt"] = {"Url": mqtt_url, "Connected": connected}
    report["LastRefused"] = dict(last_refused) if last_refused is not None else None
    report["Workers"] = [_worker(runner) for runner in runners]
    return report


def stored_report(
    thing_name: str,
    *,
    last_outcome: Mapping[str, Any] | None,
    contents: StoreContents,
    store_path: Path,
) -> dict[str, Any]:
    """What the state directory says about a core that doesn't run."""
    try:
        stored_at: float | None = store_path.stat().st_mtime
    except FileNotFoundError:
        stored_at = None
    record = contents.deployment
    return {
        "ThingName": thing_name,
        "Running": False,
        "Mqtt": None,
        "LastDeployment": _outcome(last_outcome),
        # Only the core's log has refusals while it doesn't run.
        "LastRefused": None,
        "Store": {
            "Path": str(store_path),
            "DeploymentId": record.deployment_id if record is not None else None,
            "Secrets": len(contents.secrets),
            "WrittenAt": _iso(stored_at),
            "AgeSeconds": round(time.time() - stored_at, 1) if stored_at is not None else None,
        },
        "Workers": [],
    }


def exit_status(report: Mapping[str, Any]) -> int:
    """0 running and connected to its broker, 1 running but not connected, 3 not running."""
    if not report["Running"]:
        return EXIT_NOT_RUNNING
    return EXIT_HEALTHY if report["Mqtt"]["Connected"] else EXIT_DISCONNECTED


def _outcome(status: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The fields of a status document an operator needs (it holds no value anyway)."""
    if status is None:
        return None
    keys = ("DeploymentId", "DeploymentType", "DeploymentStatus", "UpdatedAt", "ErrorMessage")
    return {key: status[key] for key in keys if key in status}


def _worker(runner: FunctionRunner) -> dict[str, Any]:
    worker = runner.worker
    if worker is None:
        state = "not started"
    elif worker.exited.is_set():
        state = "exited"
    else:
        state = "running"
    return {
        "FunctionArn": runner.spec.function_arn,
        "Pinned": runner.spec.pinned,
        "State": state,
        "Pid": worker.pid if worker is not None and state == "running" else None,
        "StartedAt": _iso(worker.started_at) if worker is not None else None,
        "Restarts": runner.restarts,
    }


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
