# SPDX-License-Identifier: Apache-2.0
"""`edge status`: ask the running core how it is, or read its state directory if it doesn't run."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from edge.cli_invoke import operator_call
from edge.errors import CoreNotRunningError
from edge.ipc.protocol import OP_CORE_STATUS
from edge.statedir import history_path
from edge.status import exit_status, stored_report

if TYPE_CHECKING:
    from edge.config import Config

#: How long `edge status` waits for the running core's answer.
STATUS_TIMEOUT_SECONDS = 10.0


def status_command(config: Config, *, as_json: bool) -> int:
    """Print the core's status; return `edge.status.exit_status` of it."""
    state_dir = config.core.state_dir
    try:
        report = operator_call(state_dir, OP_CORE_STATUS, {}, timeout=STATUS_TIMEOUT_SECONDS)
        reason = ""
    except CoreNotRunningError as exc:
        # Only without a running core: reading the store needs the core's key and modules.
        from edge.deploy.journal import History  # noqa: PLC0415
        from edge.secrets.contents import StoreContents  # noqa: PLC0415
        from edge.secrets.store import open_store  # noqa: PLC0415

        store = open_store(config)
        report = stored_report(
            config.core.thing_name,
            last_outcome=History(history_path(state_dir)).latest(),
            contents=store.load() or StoreContents(),
            store_path=store.path,
        )
        reason = str(exc)
    text = json.dumps(report, indent=2) if as_json else "\n".join(_lines(report, reason))
    sys.stdout.write(text + "\n")
    return exit_status(report)


def _lines(report: dict[str, Any], reason: str) -> list[str]:
    lines = [f"Thing {report['ThingName']}"]
    mqtt = report["Mqtt"]
    if not report["Running"]:
        lines.append(f"Core: not running: {reason}")
    else:
        state = "connected" if mqtt["Connected"] else "not connected"
        lines.append(f"Core: running, {state} to {mqtt['Url']}")
    last = report["LastDeployment"]
    if last is None:
        lines.append("Last deployment: none")
    else:
        line = f"Last deployment: {last['DeploymentId']} {last['DeploymentStatus']}"
        if last.get("UpdatedAt"):
            line += f" at {last['UpdatedAt']}"
        if last.get("ErrorMessage"):
            line += f": {last['ErrorMessage']}"
        lines.append(line)
    refused = report["LastRefused"]
    if refused is not None:
        lines.append(f"Last refused: {refused['Reason']} at {refused['At']}: {refused['Error']}")
    elif report["Running"]:
        lines.append("Last refused: none since the core started")
    store = report["Store"]
    if store["WrittenAt"] is None:
        lines.append("Store: none yet")
    else:
        lines.append(
            f"Store: deployment {store['DeploymentId']}, {store['Secrets']} secrets, written "
            f"{store['WrittenAt']} ({store['AgeSeconds']:.0f} s ago)"
        )
    for worker in report["Workers"]:
        pid = f" pid {worker['Pid']}" if worker["Pid"] is not None else ""
        since = f" since {worker['StartedAt']}" if worker["StartedAt"] else ""
        lines.append(f"Worker {worker['FunctionArn']}: {worker['State']}{pid}{since}")
    return lines
