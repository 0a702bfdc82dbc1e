"""The control plane's SQLite store: WAL, migrations at open, safe concurrent writers."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from edge.cloud.db import MIGRATIONS, Claim, Database, Migration
from edge.cloud.definitions import (
    KINDS,
    create_definition,
    create_version,
    list_definitions,
    list_versions,
)
from edge.cloud.ids import Arns
from edge.errors import CloudDatabaseError, SignatureReplayError

ARNS = Arns("us-east-1", "123456789012")
RESOURCES = KINDS["resource"]


def test_open_creates_a_private_wal_database_with_every_migration(tmp_path: Path) -> None:
    """A new file is 0600, in WAL mode, with each migration recorded once."""
    path = tmp_path / "sub" / "cloud.db"
    with Database.open(path) as db:
        assert db.schema_version == MIGRATIONS[-1].version
        with db.read() as conn:
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
            rows = conn.execute("SELECT version, name FROM schema_migrations").fetchall()
    assert mode == "wal"
    assert [tuple(r) for r in rows] == [(m.version, m.name) for m in MIGRATIONS]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_reopening_applies_only_new_migrations(tmp_path: Path) -> None:
    """Migrations already applied are skipped; a new one is applied on the next open."""
    path = tmp_path / "cloud.db"
    Database.open(path).close()
    Database.open(path).close()
    extra = Migration(MIGRATIONS[-1].version + 1, "test column", "ALTER TABLE groups ADD x TEXT")
    with Database.open(path, migrations=(*MIGRATIONS, extra)) as db:
        assert db.schema_version == extra.version
        with db.read() as conn:
            columns = [r["name"] for r in conn.execute("PRAGMA table_info(groups)")]
    assert "x" in columns


def test_a_database_from_a_newer_edge_is_refused(tmp_path: Path) -> None:
    """A schema version this edge doesn't know is an error that says to upgrade."""
    path = tmp_path / "cloud.db"
    Database.open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 'x')")
    with pytest.raises(CloudDatabaseError, match="upgrade edge"):
        Database.open(path)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    """Garbage in the database path is reported, not a traceback."""
    path = tmp_path / "cloud.db"
    path.write_bytes(b"not sqlite" * 100)
    with pytest.raises(CloudDatabaseError, match="can't be used"):
        Database.open(path)


def test_a_failed_write_rolls_back_everything(tmp_path: Path) -> None:
    """An exception inside write() leaves nothing of the transaction behind."""

    def insert_then_fail(db: Database) -> None:
        with db.write() as conn:
            conn.execute(
                "INSERT INTO groups (id, name, arn, created_at, updated_at)"
                " VALUES ('g', 'n', 'a', 't', 't')"
            )
            raise RuntimeError

    with Database.open(tmp_path / "cloud.db") as db:
        with pytest.raises(RuntimeError):
            insert_then_fail(db)
        with db.read() as conn:
            assert conn.execute("SELECT count(*) FROM groups").fetchone()[0] == 0


def test_sqlite_errors_inside_a_write_become_database_errors(tmp_path: Path) -> None:
    """A constraint violation is a CloudDatabaseError naming the file, and is rolled back."""
    with Database.open(tmp_path / "cloud.db") as db:
        insert = (
            "INSERT INTO groups (id, name, arn, created_at, updated_at)"
            " VALUES ('g', 'n', 'a', 't', 't')"
        )
        with db.write() as conn:
            conn.execute(insert)
        with pytest.raises(CloudDatabaseError, match=r"cloud\.db"), db.write() as conn:
            conn.execute(insert)


def test_concurrent_writers_each_get_a_distinct_version(tmp_path: Path) -> None:
    """Eight connections adding versions at once: all succeed, in one gapless sequence."""
    path = tmp_path / "cloud.db"
    with Database.open(path) as db:
        definition_id = create_definition(db, ARNS, RESOURCES, name="r", initial=None)["Id"]
    barrier = threading.Barrier(8)
    results: list[str] = []
    errors: list[BaseException] = []

    def add_versions() -> None:
        try:
            with Database.open(path) as own:
                barrier.wait()
                for _ in range(5):
                    created = create_version(own, ARNS, RESOURCES, definition_id, {"Resources": []})
                    results.append(created["Version"])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=add_versions) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(set(results)) == 40
    with Database.open(path) as db:
        listed = list_versions(db, RESOURCES, definition_id)["Versions"]
        with db.read() as conn:
            seqs = [
                r[0]
                for r in conn.execute(
                    "SELECT seq FROM definition_versions WHERE definition_id = ? ORDER BY seq",
                    (definition_id,),
                )
            ]
    assert {v["Version"] for v in listed} == set(results)
    assert seqs == list(range(1, 41))


def test_concurrent_first_opens_migrate_once(tmp_path: Path) -> None:
    """Several processes' worth of connections opening a new file at once migrate it once."""
    path = tmp_path / "cloud.db"
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            barrier.wait()
            Database.open(path).close()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(
            MIGRATIONS
        )


def names(db: Database) -> list[str]:
    return [d["Name"] for d in list_definitions(db, RESOURCES)["Definitions"]]


def test_a_claimed_signature_is_applied_once_even_across_connections(tmp_path: Path) -> None:
    """A signature recorded with its change is refused on another connection, changing nothing.

    Two connections stand for two replicas sharing the database.
    """
    path = tmp_path / "cloud.db"
    expires = int(time.time()) + 300
    with Database.open(path) as one, Database.open(path) as two:
        create_definition(
            one.with_claim(Claim("ab" * 32, expires)), ARNS, RESOURCES, name="a", initial=None
        )
        with pytest.raises(SignatureReplayError, match="already been used"):
            create_definition(
                two.with_claim(Claim("ab" * 32, expires)), ARNS, RESOURCES, name="a", initial=None
            )
        assert names(two) == ["a"]
        # Another signature is another request.
        create_definition(
            two.with_claim(Claim("cd" * 32, expires)), ARNS, RESOURCES, name="b", initial=None
        )
        assert names(one) == ["a", "b"]


def test_a_claim_whose_change_failed_or_was_released_may_be_used_again(tmp_path: Path) -> None:
    """A request that failed leaves its signature free, so the same signed retry passes."""
    expires = int(time.time()) + 300
    with Database.open(tmp_path / "cloud.db") as db:
        claim = Claim("ef" * 32, expires)
        with pytest.raises(CloudDatabaseError), db.with_claim(claim).write() as conn:
            conn.execute("INSERT INTO nowhere VALUES (1)")
        assert not claim.recorded
        create_definition(db.with_claim(claim), ARNS, RESOURCES, name="first", initial=None)
        assert claim.recorded
        db.release(claim)
        retry = Claim("ef" * 32, expires)
        create_definition(db.with_claim(retry), ARNS, RESOURCES, name="retry", initial=None)
        assert names(db) == ["first", "retry"]


def test_expired_claims_are_pruned_by_the_next_one(tmp_path: Path) -> None:
    """Signatures past their expiry are deleted when another is recorded: the table stays small."""
    now = int(time.time())
    with Database.open(tmp_path / "cloud.db") as db:
        for index in range(3):
            with db.with_claim(Claim(f"{index:064x}", now - 1)).write():
                pass
        with db.with_claim(Claim("f" * 64, now + 300)).write():
            pass
        with db.read() as conn:
            rows = conn.execute("SELECT signature FROM applied_signatures").fetchall()
    assert [r["signature"] for r in rows] == ["f" * 64]
