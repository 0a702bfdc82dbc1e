"""Recording cores' status reports in batches: each transition once, on both engines.

A replica records the reports that arrived together in one transaction
(`edge.cloud.status.record_many`); the broker may deliver a report twice, two replicas may both
see it (a catch-up's plain subscription beside the shared one), and a batch may hold a
deployment's every report at once. Whatever the mix, each transition is recorded once.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from edge.cloud.db import Database, is_url
from edge.cloud.status import IN_PROGRESS, StatusReport, parse_status, record_many

pytestmark = pytest.mark.network


#: Both engines: replicas record on PostgreSQL, `edge cloud` commands on SQLite too.
BOTH = pytest.mark.parametrize("cloud_database", ["postgresql", "sqlite"], indirect=True)


@pytest.fixture
def target(cloud_database: str, tmp_path: Path) -> Path | str:
    """The test's database: its PostgreSQL schema, or a SQLite file in its directory."""
    return cloud_database if is_url(cloud_database) else tmp_path / cloud_database


def _deployments(db: Database, things: dict[str, str]) -> None:
    """One Building deployment per (deployment id, thing)."""
    with db.write() as conn:
        conn.execute(
            "INSERT INTO groups (id, arn, created_at, updated_at) VALUES ('g', 'arn:g', 't', 't')"
        )
        conn.executemany(
            "INSERT INTO deployments (id, group_id, group_version_id, arn, deployment_type,"
            " thing_name, created_at, status, updated_at, envelope) VALUES (:id, 'g', 'v',"
            " :arn, 'NewDeployment', :thing, 't', 'Building', 't', :envelope)",
            [
                {"id": d, "arn": f"arn:{d}", "thing": thing, "envelope": b"sealed"}
                for d, thing in things.items()
            ],
        )


def _report(deployment_id: str, status: str, error: str | None = None) -> StatusReport:
    doc = {
        "DeploymentId": deployment_id,
        "DeploymentStatus": status,
        "UpdatedAt": f"2026-01-01T00:00:0{len(status) % 10}.000Z",
    }
    if error is not None:
        doc["ErrorMessage"] = error
        doc["ErrorDetails"] = [{"DetailedErrorCode": "Boom", "DetailedErrorMessage": error}]
    report = parse_status(json.dumps(doc).encode())
    assert report is not None
    return report


def _history(db: Database) -> dict[str, list[tuple[int, str]]]:
    with db.read() as conn:
        rows = conn.execute(
            "SELECT deployment_id, seq, status FROM deployment_events ORDER BY deployment_id, seq"
        ).fetchall()
    history: dict[str, list[tuple[int, str]]] = {}
    for row in rows:
        history.setdefault(row["deployment_id"], []).append((row["seq"], row["status"]))
    return history


def _statuses(db: Database) -> dict[str, tuple[str, str | None, str | None]]:
    with db.read() as conn:
        rows = conn.execute("SELECT id, status, error_message, error_details FROM deployments")
        return {r["id"]: (r["status"], r["error_message"], r["error_details"]) for r in rows}


@BOTH
def test_a_batch_with_duplicates_records_each_transition_once(target: Path | str) -> None:
    """InProgress, Success, a repeat of each, strays: one event per step, in order."""
    with Database.open(target) as db:
        _deployments(db, {"d1": "t1", "d2": "t2", "d3": "t3"})
        batch = [
            ("t1", _report("d1", "InProgress")),
            ("t2", _report("d2", "InProgress")),
            ("t1", _report("d1", "InProgress")),  # the broker's redelivery
            ("t1", _report("d1", "Success")),
            ("t2", _report("d2", "Failure", "the secret is gone")),
            ("t1", _report("d1", "Success")),
            ("t1", _report("d1", "InProgress")),  # late: can't undo the Success
            ("t1", _report("d3", "Success")),  # another thing's deployment
            ("t1", _report("nope", "Success")),  # not a deployment of this control plane
        ]
        with db.write() as conn:
            rows = record_many(conn, batch)
        assert [(r["id"], r["status"]) for r in rows] == [
            ("d1", "InProgress"),
            ("d2", "InProgress"),
            ("d1", "Success"),
            ("d2", "Failure"),
        ]
        assert rows[-1]["thing_name"] == "t2"
        assert rows[-1]["error_message"] == "the secret is gone"
        assert _history(db) == {
            "d1": [(1, "InProgress"), (2, "Success")],
            "d2": [(1, "InProgress"), (2, "Failure")],
        }
        statuses = _statuses(db)
        assert statuses["d1"] == ("Success", None, None)
        assert statuses["d3"] == ("Building", None, None)
        status, error, details = statuses["d2"]
        assert (status, error) == ("Failure", "the secret is gone")
        assert details is not None
        assert json.loads(details) == [
            {"DetailedErrorCode": "Boom", "DetailedErrorMessage": "the secret is gone"}
        ]

        # The whole batch again, as a second replica or a reconnection's retained copies bring
        # it: nothing moves and no event is added.
        with db.write() as conn:
            assert record_many(conn, batch) == []
        assert _history(db) == {
            "d1": [(1, "InProgress"), (2, "Success")],
            "d2": [(1, "InProgress"), (2, "Failure")],
        }


@BOTH
def test_a_later_batch_continues_the_history(target: Path | str) -> None:
    """A deployment whose InProgress came in one batch gets seq 2 for its Success in the next."""
    with Database.open(target) as db:
        _deployments(db, {"d1": "t1"})
        with db.write() as conn:
            record_many(conn, [("t1", _report("d1", IN_PROGRESS))])
        with db.write() as conn:
            rows = record_many(conn, [("t1", _report("d1", "Success"))])
        assert [r["status"] for r in rows] == ["Success"]
        assert _history(db) == {"d1": [(1, "InProgress"), (2, "Success")]}


@BOTH
def test_replicas_recording_the_same_reports_at_once_record_each_once(target: Path | str) -> None:
    """Two processes' connections record overlapping batches together: one event per step."""
    count = 200
    with Database.open(target) as first, Database.open(target) as second:
        _deployments(first, {f"d{i}": f"t{i}" for i in range(count)})
        reports = [
            (f"t{i}", _report(f"d{i}", status))
            for status in ("InProgress", "Success")
            for i in range(count)
        ]
        start = threading.Barrier(2)
        recorded: list[int] = []
        errors: list[BaseException] = []

        def replica(db: Database, batches: list[list[tuple[str, StatusReport]]]) -> None:
            start.wait()
            try:
                for batch in batches:
                    with db.write() as conn:
                        recorded.append(len(record_many(conn, batch)))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        # Each sees every report in order, in batches cut differently.
        threads = [
            threading.Thread(
                target=replica, args=(first, [reports[i : i + 50] for i in range(0, 400, 50)])
            ),
            threading.Thread(
                target=replica, args=(second, [reports[i : i + 70] for i in range(0, 400, 70)])
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert sum(recorded) == 2 * count
        history = _history(first)
        assert len(history) == count
        assert all(steps == [(1, "InProgress"), (2, "Success")] for steps in history.values())
        assert set(_statuses(first).values()) == {("Success", None, None)}
