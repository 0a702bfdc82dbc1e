"""The secret-access audit log, end to end: real core, real workers, `edge secrets audit`."""

from __future__ import annotations

import json
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.audit import audit_path
from edge.fixtures.core import edge_cli, secret_resource
from tests.support.env import Env
from tests.support.functions import build_package, function, function_arn, invoke

pytestmark = pytest.mark.network


def audit_entries(env: Env, *args: str) -> list[dict[str, Any]]:
    """`edge secrets audit --json` with extra arguments, parsed."""
    result = edge_cli("secrets", "audit", "--config", str(env.config), "--json", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def wait_for_counts(env: Env, wanted: dict[str, int], timeout: float = 15) -> list[dict[str, Any]]:
    """Poll the audit log until the counts per outcome reach `wanted` (flushes are periodic)."""
    deadline = time.monotonic() + timeout
    while True:
        entries = audit_entries(env)
        counts: dict[str, int] = {}
        for e in entries:
            counts[e["outcome"]] = counts.get(e["outcome"], 0) + e["count"]
        if all(counts.get(k, 0) >= n for k, n in wanted.items()):
            return entries
        assert time.monotonic() < deadline, f"audit counts {counts}, wanted {wanted}"
        time.sleep(0.3)


def test_every_secret_read_is_audited_without_values(env: Env, tmp_path: Path) -> None:
    """Allowed, denied and unknown reads are recorded with function, secret, label, count."""
    path, digest = build_package(tmp_path / "app.zip")
    package = {"Uri": path.as_uri(), "Sha256": digest}
    arn_db, version_db, value_db = env.create_secret("audit/db")
    arn_other, _, value_other = env.create_secret("audit/other")
    # Every read reaches the core: the worker's cache (self-reported reads) is tested with it.
    reader = function(
        "reader",
        "app.function_handler",
        package,
        policies=["db"],
        variables={"EDGE_ANSWER_CACHE": "off"},
    )
    dep = env.operator.deploy(
        [secret_resource("db", arn_db), secret_resource("other", arn_other)], functions=[reader]
    )
    env.operator.wait_status(dep, "Success")

    for _ in range(3):
        assert invoke(env, "reader", {"SecretId": "audit/db"})["SecretString"] == value_db
    assert invoke(env, "reader", {"SecretId": "audit/other"})["error"] == "SecretsManagerError"
    assert invoke(env, "reader", {"SecretId": "audit/nope"})["error"] == "SecretsManagerError"

    entries = wait_for_counts(env, {"allowed": 3, "denied": 1, "not_found": 1})
    allowed = [e for e in entries if e["outcome"] == "allowed"]
    assert sum(e["count"] for e in allowed) == 3
    assert {
        (e["function_arn"], e["secret_id"], e["resource_id"], e["label"], e["version_id"])
        for e in allowed
    } == {(function_arn("reader"), "audit/db", "db", "AWSCURRENT", version_db)}
    denied = next(e for e in entries if e["outcome"] == "denied")
    assert denied["secret_id"] == "audit/other"
    assert next(e for e in entries if e["outcome"] == "not_found")["secret_id"] == "audit/nope"

    # Filters: by function name or ARN, and by time.
    assert audit_entries(env, "--function", "reader") == entries
    assert audit_entries(env, "--function", function_arn("reader")) == entries
    assert audit_entries(env, "--function", "someone-else") == []
    assert audit_entries(env, "--since", "1h") == entries
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert audit_entries(env, "--since", later) == []

    # Never a value, and private files.
    log = audit_path(env.state_dir)
    text = log.read_bytes()
    for value in (value_db, value_other):
        assert value.encode() not in text
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    table = edge_cli("secrets", "audit", "--config", str(env.config))
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["First", "Last", "Function"]
    (db_row,) = [row.split() for row in rows if "audit/db" in row]
    first, last = (datetime.fromisoformat(t) for t in db_row[:2])
    assert first <= last
    assert db_row[-2:] == ["allowed", "3"]
    assert any("denied" in row for row in rows)


def test_a_bad_since_is_a_clear_error(env: Env) -> None:
    """A --since that is neither a time nor an age says what it wants."""
    result = edge_cli("secrets", "audit", "--config", str(env.config), "--since", "yesterday")
    assert result.returncode == 2
    assert "ISO 8601" in result.stderr
