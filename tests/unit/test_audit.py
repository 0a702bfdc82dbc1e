"""edge.audit: counting reads, appending JSON lines, rotation, reading back, filters."""

from __future__ import annotations

import asyncio
import errno
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest

from edge.audit import (
    ALLOWED,
    DENIED,
    AuditLog,
    matches,
    parse_since,
    read_entries,
    summarize,
)
from edge.config import AuditSettings
from edge.errors import UsageError
from edge.redaction import REDACTOR

FN = "arn:aws:lambda:us-east-1:123456789012:function:reader:1"


def log_at(tmp_path: Path, **settings: object) -> AuditLog:
    return AuditLog(tmp_path / "audit" / "audit.jsonl", AuditSettings(**settings))  # type: ignore[arg-type]


def test_reads_are_counted_and_appended_as_one_line_per_kind(tmp_path: Path) -> None:
    """Three identical reads and one refusal make two lines, with counts, in a private file."""
    audit = log_at(tmp_path)
    for _ in range(3):
        audit.record(
            FN, ALLOWED, secret_id="db", resource_id="r", label="AWSCURRENT", version_id="v"
        )
    audit.record_unknown(FN, DENIED, "other")
    asyncio.run(audit.flush())
    entries = list(read_entries(audit.path))
    assert [(e["outcome"], e["secret_id"], e["count"]) for e in entries] == [
        (ALLOWED, "db", 3),
        (DENIED, "other", 1),
    ]
    assert stat.S_IMODE(audit.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(audit.path.parent.stat().st_mode) == 0o700
    asyncio.run(audit.flush())  # nothing new: nothing appended
    assert len(list(read_entries(audit.path))) == 2


def test_a_value_sent_as_a_secret_id_is_masked(tmp_path: Path) -> None:
    """A function passing a secret's value as SecretId must not put the value in the log."""
    value = "hunter2-is-a-real-secret-value"
    REDACTOR.update([value])
    audit = log_at(tmp_path)
    audit.record_unknown(FN, DENIED, value, label=value)
    audit.record_unknown(FN, DENIED, {"not": "a string"})
    audit.record_unknown(FN, DENIED, "x" * 10_000)
    asyncio.run(audit.flush())
    text = audit.path.read_text()
    assert value not in text
    assert "<dict>" in text
    assert max(len(e["secret_id"]) for e in read_entries(audit.path)) == 256


def test_the_file_rotates_by_size_and_keeps_its_backups(tmp_path: Path) -> None:
    """Past max_bytes the file moves to .1, .1 to .2, and the oldest beyond `backups` goes."""
    audit = log_at(tmp_path, max_bytes=4096, backups=2)
    for i in range(60):
        audit.record(FN, ALLOWED, secret_id=f"secret-{i:03d}" + "x" * 100)
        asyncio.run(audit.flush())
    files = sorted(p.name for p in audit.path.parent.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(p.stat().st_size <= 4096 for p in audit.path.parent.iterdir())
    ids = [e["secret_id"][:10] for e in read_entries(audit.path)]
    assert ids == sorted(ids)  # oldest file first, in order
    assert ids[-1] == "secret-059"


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    """A crash mid-append leaves half a line; reading goes on without it."""
    audit = log_at(tmp_path)
    audit.record(FN, ALLOWED, secret_id="db")
    asyncio.run(audit.flush())
    with audit.path.open("ab") as f:
        f.write(b'{"time": "2026-')
    assert [e["secret_id"] for e in read_entries(audit.path)] == ["db"]


def test_a_full_disk_is_logged_and_serving_goes_on(tmp_path: Path) -> None:
    """ENOSPC while appending costs the interval's counts and one error line, not the core."""
    audit = log_at(tmp_path)
    audit.record(FN, ALLOWED, secret_id="db")
    with mock.patch("edge.audit.os.write", side_effect=OSError(errno.ENOSPC, "No space left")):
        asyncio.run(audit.flush())  # must not raise
    audit.record(FN, ALLOWED, secret_id="db2")
    asyncio.run(audit.flush())
    assert [e["secret_id"] for e in read_entries(audit.path)] == ["db2"]


def test_disabled_records_nothing(tmp_path: Path) -> None:
    """[audit] enabled = false: no file at all."""
    audit = log_at(tmp_path, enabled=False)
    audit.record(FN, ALLOWED, secret_id="db")
    asyncio.run(audit.flush())
    assert not audit.path.exists()


def test_run_flushes_what_is_left_when_cancelled(tmp_path: Path) -> None:
    """Stopping the core flushes the last interval's counts."""
    audit = log_at(tmp_path, flush_seconds=3600)

    async def scenario() -> None:
        task = asyncio.create_task(audit.run())
        await asyncio.sleep(0)
        audit.record(FN, ALLOWED, secret_id="db")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert [e["secret_id"] for e in read_entries(audit.path)] == ["db"]


def test_since_takes_iso_times_and_ages() -> None:
    """ISO 8601 (UTC when naive, Z accepted) or an age in s, m, h, d."""
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert parse_since("15m", now=now) == now - timedelta(minutes=15)
    assert parse_since("7d", now=now) == now - timedelta(days=7)
    assert parse_since("2026-11-28T10:00:00Z") == datetime(2026, 11, 28, 10, tzinfo=UTC)
    assert parse_since("2026-11-28T10:00:00") == datetime(2026, 11, 28, 10, tzinfo=UTC)
    for bad in ("yesterday", "15x", "m", ""):
        with pytest.raises(UsageError):
            parse_since(bad)


def test_function_filter_takes_a_name_or_an_arn() -> None:
    """--function matches the qualified ARN, the unqualified ARN or the bare name."""
    entry = {"function_arn": FN, "last": "2026-11-28T10:00:00.000+00:00"}
    for wanted in (FN, FN.rsplit(":", 1)[0], "reader"):
        assert matches(entry, since=None, function=wanted)
    assert not matches(entry, since=None, function="read")
    assert not matches(entry, since=datetime(2026, 11, 28, 11, tzinfo=UTC), function=None)
    assert json.dumps(entry)  # entries stay plain JSON


def test_summary_gives_each_read_once_with_its_first_and_last_time(tmp_path: Path) -> None:
    """Lines of one read from several flushes merge: earliest `time`, latest `last`, sum."""
    read = {"function_arn": FN, "secret_id": "db", "resource_id": "r", "label": "AWSCURRENT"}
    lines = [
        {**read, "time": "2026-11-28T10:00:00.000+00:00", "last": "2026-11-28T10:00:00.500+00:00"},
        {**read, "time": "2026-11-28T10:01:00.000+00:00", "last": "2026-11-28T10:01:00.000+00:00"},
        {**read, "time": "2026-11-28T11:00:00.000+00:00", "last": "2026-11-28T11:00:00.900+00:00"},
        {
            **read,
            "secret_id": "other",
            "outcome": DENIED,
            "time": "2026-11-28T10:00:30.000+00:00",
            "last": "2026-11-28T10:00:30.000+00:00",
        },
    ]
    path = tmp_path / "audit.jsonl"
    path.write_text(
        "".join(
            json.dumps({"version_id": "", "outcome": ALLOWED, "count": 2, **line}) + "\n"
            for line in lines
        )
    )
    summary = summarize(read_entries(path))
    assert [(e["outcome"], e["secret_id"], e["count"]) for e in summary] == [
        (ALLOWED, "db", 6),
        (DENIED, "other", 2),
    ]
    assert (summary[0]["time"], summary[0]["last"]) == (
        "2026-11-28T10:00:00.000+00:00",
        "2026-11-28T11:00:00.900+00:00",
    )
    assert summary[1]["time"] == summary[1]["last"] == "2026-11-28T10:00:30.000+00:00"


def test_reads_a_worker_reported_are_their_own_lines(tmp_path: Path) -> None:
    """Self-reported reads are summed per kind and marked; the core's own stay apart."""
    audit = log_at(tmp_path)
    ids = ("db", "r", "v")
    audit.record_read(FN, ids, "AWSCURRENT")
    audit.record_reported(FN, ids, "AWSCURRENT", 40)
    audit.record_reported(FN, ids, "AWSCURRENT", 2)
    asyncio.run(audit.flush())
    entries = list(read_entries(audit.path))
    assert [(e["count"], e.get("self_reported")) for e in entries] == [(1, None), (42, True)]
    assert [(e["count"], e.get("self_reported")) for e in summarize(entries)] == [
        (1, None),
        (42, True),
    ]
