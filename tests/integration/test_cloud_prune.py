"""`edge cloud prune` on both engines: what goes, what stays, dry runs and bad ages."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.cloud.db import Database
from edge.cloud.ids import precise_timestamp, timestamp
from edge.cloud.outbox import enqueue
from edge.fixtures.core import edge_cli
from tests.support.controlplane import dump_tables, open_configured

ACCOUNT = "123456789012"
NOW = datetime.now(UTC)
#: Each group's deployments and their ages in days; the last one listed is the group's last.
DEPLOYMENTS = {
    "group-a": [("a1", 200), ("a2", 120), ("a3", 100)],
    "group-b": [("b1", 10)],
    "group-c": [("c1", 300)],
}
#: Bulk deployments: id, age in days, state, how many records.
BULKS = [
    ("bulk-old", 120, "Completed", 3),
    ("bulk-old-stopped", 95, "Stopped", 2),
    ("bulk-running", 120, "Running", 2),
    ("bulk-new", 5, "Completed", 1),
]


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def write_config(root: Path, database: str) -> Path:
    config = root / "cloud.toml"
    config.write_text(
        f"""
[cloud]
database = "{database}"
account_id = "{ACCOUNT}"

[mqtt]
url = "mqtt://127.0.0.1:1"

[aws]
region = "us-east-1"
"""
    )
    return config


def seed(db: Database) -> None:
    """Groups with two versions each, deployments of several ages, bulk deployments, tokens."""
    with db.write() as conn:
        for group in DEPLOYMENTS:
            at = timestamp(ago(400))
            conn.execute(
                "INSERT INTO groups (id, name, arn, created_at, updated_at, latest_version_id)"
                " VALUES (:id, :id, :arn, :at, :at, :latest)",
                {"id": group, "arn": f"arn:group/{group}", "at": at, "latest": f"{group}-v2"},
            )
            for seq in (1, 2):
                conn.execute(
                    "INSERT INTO group_versions (id, group_id, seq, arn, created_at, body)"
                    " VALUES (:id, :group, :seq, :arn, :at, '{}')",
                    {
                        "id": f"{group}-v{seq}",
                        "group": group,
                        "seq": seq,
                        "arn": f"arn:group/{group}/versions/{seq}",
                        "at": timestamp(ago(400 - seq)),
                    },
                )
        for group, deployments in DEPLOYMENTS.items():
            for deployment, days in deployments:
                at = precise_timestamp(ago(days))
                conn.execute(
                    "INSERT INTO deployments (id, group_id, group_version_id, arn,"
                    " deployment_type, thing_name, created_at, status, updated_at, envelope)"
                    " VALUES (:id, :group, :version, :arn, 'NewDeployment', 'thing', :at,"
                    " 'Success', :at, :envelope)",
                    {
                        "id": deployment,
                        "group": group,
                        "version": f"{group}-v1",
                        "arn": f"arn:deployment/{deployment}",
                        "at": at,
                        "envelope": b"sealed",
                    },
                )
                for seq, status in enumerate(("InProgress", "Success")):
                    conn.execute(
                        "INSERT INTO deployment_events (deployment_id, seq, status, updated_at,"
                        " recorded_at) VALUES (:id, :seq, :status, :at, :at)",
                        {"id": deployment, "seq": seq, "status": status, "at": at},
                    )
        # A deployment the broker never acknowledged, superseded by a3 since: it goes too.
        enqueue(conn, "a1", "edge/things/thing/deployments")
        for bulk, days, state, records in BULKS:
            arn = f"arn:bulk/{bulk}"
            conn.execute(
                "INSERT INTO bulk_deployments (id, arn, created_at, input_uri, execution_role_arn,"
                " state, tags, retry_attempts, lines_loaded, error_details) VALUES (:id, :arn,"
                " :at, 's3://b/k', 'arn:role', :state, '{}', 0, :lines, '[]')",
                {
                    "id": bulk,
                    "arn": arn,
                    "at": timestamp(ago(days)),
                    "state": state,
                    "lines": records,
                },
            )
            conn.execute(
                "INSERT INTO tags (resource_arn, key, value) VALUES (:arn, 'team', 'fleet')",
                {"arn": arn},
            )
            for line in range(records):
                conn.execute(
                    "INSERT INTO bulk_records (bulk_id, line, state) VALUES (:id, :line, 'Done')",
                    {"id": bulk, "line": line},
                )
        for token, days in (("old-token", 3), ("fresh-token", 0)):
            conn.execute(
                "INSERT INTO client_tokens (operation, token, input_sha256, answer, created_at)"
                " VALUES ('CreateDeployment', :token, 'digest', '{}', :at)",
                {"token": token, "at": timestamp(ago(days))},
            )
        for signature, expires in (("expired", -60), ("live", 300)):
            conn.execute(
                "INSERT INTO applied_signatures (signature, expires_at, applied_at)"
                " VALUES (:signature, :expires, :at)",
                {"signature": signature, "expires": int(time.time()) + expires, "at": timestamp()},
            )


def ids(tables: dict[str, list[dict[str, Any]]], table: str, column: str = "id") -> set[str]:
    return {row[column] for row in tables[table]}


def prune(config: Path, *args: str) -> Any:
    return edge_cli("cloud", "--config", str(config), "prune", *args)


@pytest.mark.parametrize("cloud_database", ["sqlite", "postgresql"], indirect=True)
def test_prune_removes_old_deployments_and_bulk_reports_and_keeps_each_groups_last(
    tmp_path: Path, cloud_database: str
) -> None:
    config = write_config(tmp_path, cloud_database)
    with open_configured(config) as db:
        seed(db)
        before = dump_tables(db)

    dry = prune(config, "--older-than", "90d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    expected = {
        "Deployments": 2,
        "DeploymentEvents": 4,
        "BulkDeployments": 2,
        "BulkDeploymentRecords": 5,
        "ClientTokens": 1,
        "AppliedSignatures": 1,
    }
    assert json.loads(dry.stdout) == {"DryRun": True, **expected}
    with open_configured(config) as db:
        assert dump_tables(db) == before

    # One row per transaction: every kind takes several batches.
    done = prune(config, "--older-than", "90d", "--batch-size", "1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"DryRun": False, **expected}
    assert "prune: 2 deployments, 4 events" in done.stderr
    assert "prune: 2 bulk deployments, 5 records" in done.stderr

    with open_configured(config) as db:
        after = dump_tables(db)
    # a1 and a2 are old and not group-a's last; c1 is older still but group-c's last.
    assert ids(after, "deployments") == {"a3", "b1", "c1"}
    assert ids(after, "deployment_events", "deployment_id") == {"a3", "b1", "c1"}
    assert len(after["deployment_events"]) == 6
    # Groups and every version, the latest among them, are untouched.
    assert after["groups"] == before["groups"]
    assert after["group_versions"] == before["group_versions"]
    # Finished old bulk deployments go with their records and tags; a running one stays.
    assert ids(after, "bulk_deployments") == {"bulk-running", "bulk-new"}
    assert ids(after, "bulk_records", "bulk_id") == {"bulk-running", "bulk-new"}
    assert ids(after, "tags", "resource_arn") == {"arn:bulk/bulk-running", "arn:bulk/bulk-new"}
    assert ids(after, "client_tokens", "token") == {"fresh-token"}
    assert ids(after, "applied_signatures", "signature") == {"live"}
    assert after["outbox"] == []

    again = prune(config, "--older-than", "90d")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"DryRun": False, **dict.fromkeys(expected, 0)}


@pytest.mark.parametrize("cloud_database", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("age", ["90", "90x", "0d", "-5d", "1.5d", "d", "90 days"])
def test_prune_refuses_a_bad_age_and_changes_nothing(
    tmp_path: Path, cloud_database: str, age: str
) -> None:
    config = write_config(tmp_path, cloud_database)
    with open_configured(config) as db:
        seed(db)
        before = dump_tables(db)
    result = prune(config, f"--older-than={age}")
    assert result.returncode == 2
    assert "--older-than: must be a duration such as 90d, 12h or 30m" in result.stderr
    assert "Traceback" not in result.stderr
    with open_configured(config) as db:
        assert dump_tables(db) == before


@pytest.mark.parametrize("cloud_database", ["postgresql"], indirect=True)
def test_prune_by_hours_and_minutes(tmp_path: Path, cloud_database: str) -> None:
    """12h and 30m reach younger rows: a five-day-old bulk deployment goes too."""
    config = write_config(tmp_path, cloud_database)
    with open_configured(config) as db:
        seed(db)
    for age in ("12h", "30m"):
        result = prune(config, "--older-than", age, "--dry-run")
        assert result.returncode == 0, result.stderr
        counts = json.loads(result.stdout)
        # b1 is ten days old, but group-b's only deployment.
        assert (counts["Deployments"], counts["BulkDeployments"]) == (2, 3)
