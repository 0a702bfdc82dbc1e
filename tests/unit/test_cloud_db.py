"""The control plane's store on SQLite and PostgreSQL: migrations, locking, claims.

Every test here runs on both engines (the `target` fixture), but for SQLite's own file rules.
"""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
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
from edge.cloud.errors import CloudDatabaseError, SignatureReplayError
from edge.cloud.groups import create_group, list_groups
from edge.cloud.ids import Arns
from edge.cloud.serve.reconcile import UNFINISHED_THINGS_SQL, unfinished_things_binds

pytestmark = pytest.mark.network

ARNS = Arns("us-east-1", "123456789012")
RESOURCES = KINDS["resource"]


@pytest.fixture(params=["postgresql", "sqlite"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a new control-plane database goes: an empty PostgreSQL schema or a new file."""
    if request.param == "sqlite":
        return tmp_path / "cloud.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


def test_open_creates_a_private_wal_database_with_every_migration(tmp_path: Path) -> None:
    """A new file is 0600, in WAL mode, with each migration recorded once."""
    path = tmp_path / "sub" / "cloud.db"
    with Database.open(path) as db:
        assert db.schema_version == MIGRATIONS[-1].version
        with db.read() as conn:
            mode = conn.execute("PRAGMA journal_mode").scalar()
            rows = conn.execute("SELECT version, name FROM schema_migrations").fetchall()
    assert mode == "wal"
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in MIGRATIONS]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_reopening_applies_only_new_migrations(target: Path | str) -> None:
    """Migrations already applied are skipped; a new one is applied on the next open."""
    Database.open(target).close()
    Database.open(target).close()
    extra = Migration(MIGRATIONS[-1].version + 1, "test column", "ALTER TABLE groups ADD x TEXT")
    with Database.open(target, migrations=(*MIGRATIONS, extra)) as db:
        assert db.schema_version == extra.version
        with db.write() as conn:
            conn.execute(
                "INSERT INTO groups (id, arn, created_at, updated_at, x)"
                " VALUES ('g', 'a', 't', 't', 'new column')"
            )
            assert conn.execute("SELECT x FROM groups").scalar() == "new column"
            versions = conn.execute("SELECT version FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in versions] == [m.version for m in (*MIGRATIONS, extra)]


def test_a_database_from_a_newer_edge_is_refused(target: Path | str) -> None:
    """A schema version this edge doesn't know is an error that says to upgrade."""
    with Database.open(target) as db, db.write() as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 'x')")
    with pytest.raises(CloudDatabaseError, match="upgrade edge"):
        Database.open(target)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    """Garbage in the database path is reported, not a traceback."""
    path = tmp_path / "cloud.db"
    path.write_bytes(b"not sqlite" * 100)
    with pytest.raises(CloudDatabaseError, match="can't be used"):
        Database.open(path)


def test_a_failed_write_rolls_back_everything(target: Path | str) -> None:
    """An exception inside write() leaves nothing of the transaction behind."""

    def insert_then_fail(db: Database) -> None:
        with db.write() as conn:
            conn.execute(
                "INSERT INTO groups (id, name, arn, created_at, updated_at)"
                " VALUES ('g', 'n', 'a', 't', 't')"
            )
            raise RuntimeError

    with Database.open(target) as db:
        with pytest.raises(RuntimeError):
            insert_then_fail(db)
        with db.read() as conn:
            assert conn.execute("SELECT count(*) FROM groups").scalar() == 0


def test_driver_errors_inside_a_write_become_database_errors(target: Path | str) -> None:
    """A constraint violation is a CloudDatabaseError naming the database, and is rolled back."""
    with Database.open(target) as db:
        insert = (
            "INSERT INTO groups (id, name, arn, created_at, updated_at)"
            " VALUES ('g', 'n', 'a', 't', 't')"
        )
        with db.write() as conn:
            conn.execute(insert)
        with pytest.raises(CloudDatabaseError) as raised, db.write() as conn:
            conn.execute(insert)
        assert raised.value.path == db.name
        assert not raised.value.unavailable
        with db.read() as conn:
            assert conn.execute("SELECT count(*) FROM groups").scalar() == 1


def test_concurrent_writers_each_get_a_distinct_version(target: Path | str) -> None:
    """Eight connections adding versions at once: all succeed, in one gapless sequence."""
    path = target
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
                r["seq"]
                for r in conn.execute(
                    "SELECT seq FROM definition_versions WHERE definition_id = :id ORDER BY seq",
                    {"id": definition_id},
                )
            ]
    assert {v["Version"] for v in listed} == set(results)
    assert seqs == list(range(1, 41))


def test_processes_opening_a_new_database_at_once_migrate_it_once(target: Path | str) -> None:
    """Six processes opening an empty database together: each migration is applied once."""
    script = (
        "import sys; from pathlib import Path; from edge.cloud.db import Database, is_url\n"
        "where = sys.argv[1] if is_url(sys.argv[1]) else Path(sys.argv[1])\n"
        "Database.open(where).close()\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(target)], stderr=subprocess.PIPE)
        for _ in range(6)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    failures = [err for p, err in zip(procs, errors, strict=True) if p.returncode != 0]
    assert failures == []
    with Database.open(target) as db, db.read() as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [r["version"] for r in rows] == [m.version for m in MIGRATIONS]


def names(db: Database) -> list[str]:
    return [d["Name"] for d in list_definitions(db, RESOURCES)["Definitions"]]


def test_a_claimed_signature_is_applied_once_even_across_connections(target: Path | str) -> None:
    """A signature recorded with its change is refused on another connection, changing nothing.

    Two connections stand for two replicas sharing the database.
    """
    expires = int(time.time()) + 300
    with Database.open(target) as one, Database.open(target) as two:
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


def test_definitions_and_groups_list_in_creation_order_even_within_a_millisecond(
    target: Path | str,
) -> None:
    """Created faster than the clock's millisecond ticks, they still list in the order made."""
    made = [f"n{i:02d}" for i in range(30)]
    with Database.open(target) as db:
        for name in made:
            create_definition(db, ARNS, RESOURCES, name=name, initial=None)
            create_group(db, ARNS, name=name, initial=None)
        assert names(db) == made
        assert [g["Name"] for g in list_groups(db)["Groups"]] == made


def test_a_claim_whose_change_failed_or_was_released_may_be_used_again(
    target: Path | str,
) -> None:
    """A request that failed leaves its signature free, so the same signed retry passes."""
    expires = int(time.time()) + 300
    with Database.open(target) as db:
        claim = Claim("ef" * 32, expires)
        with pytest.raises(CloudDatabaseError), db.with_claim(claim).write() as conn:
            conn.execute("INSERT INTO nowhere VALUES (1)")
        assert not claim.recorded
        create_definition(db.with_claim(claim), ARNS, RESOURCES, name="first", initial=None)
        assert claim.recorded
        db.release(claim)
        retry = Claim("ef" * 32, expires)
        create_definition(db.with_claim(retry), ARNS, RESOURCES, name="retry", initial=None)
        assert sorted(names(db)) == ["first", "retry"]  # created within one ms: either order


def test_expired_claims_are_pruned_by_the_next_one(target: Path | str) -> None:
    """Signatures past their expiry are deleted when another is recorded: the table stays small."""
    now = int(time.time())
    with Database.open(target) as db:
        for index in range(3):
            with db.with_claim(Claim(f"{index:064x}", now - 1)).write():
                pass
        with db.with_claim(Claim("f" * 64, now + 300)).write():
            pass
        with db.read() as conn:
            rows = conn.execute("SELECT signature FROM applied_signatures").fetchall()
    assert [r["signature"] for r in rows] == ["f" * 64]


def test_old_client_tokens_are_pruned_by_the_next_one(target: Path | str) -> None:
    """A client token is remembered for a day: the next token recorded after that drops it."""
    with Database.open(target) as db:
        with db.write() as conn:
            conn.execute(
                "INSERT INTO client_tokens (operation, token, input_sha256, answer, created_at)"
                " VALUES ('op', 'old', 'd', '{}', '2020-01-01T00:00:00.000Z')"
            )
        with db.with_claim(Claim(None, 0, client_token=("op", "new", "d"))).write():
            pass
        with db.read() as conn:
            rows = conn.execute("SELECT token FROM client_tokens").fetchall()
    assert [r["token"] for r in rows] == ["new"]


def test_an_existing_sqlite_file_of_the_plain_sqlite3_layer_opens_unchanged(
    tmp_path: Path,
) -> None:
    """A file whose migrations were applied by sqlite3 directly keeps its rows and versions."""
    path = tmp_path / "cloud.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        for migration in MIGRATIONS:
            for statement in migration.statements("sqlite"):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, 'then')",
                (migration.version, migration.name),
            )
    with Database.open(path) as db:
        created = create_definition(db, ARNS, RESOURCES, name="kept", initial=None)
        assert db.schema_version == MIGRATIONS[-1].version
    with Database.open(path) as db:
        assert names(db) == ["kept"]
        assert created["Name"] == "kept"


def test_the_status_reread_reads_the_recent_deployments_through_an_index(
    target: Path | str,
) -> None:
    """Every replica runs it every 15 s: it must be a range of an index, not a full scan."""
    with Database.open(target) as db, db.read() as conn:
        if conn.dialect == "postgresql":
            # An empty table is cheapest to scan: tell the planner scans are dear, as they are
            # at a fleet's millions of rows. SQLite's planner takes a usable index anyway.
            conn.execute("SET LOCAL enable_seqscan = off")
        explain = "EXPLAIN QUERY PLAN " if conn.dialect == "sqlite" else "EXPLAIN "
        plan = conn.execute(explain + UNFINISHED_THINGS_SQL, unfinished_things_binds()).fetchall()
    assert "deployments_by_creation" in " ".join(str(dict(row)) for row in plan)
