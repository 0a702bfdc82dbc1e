# SPDX-License-Identifier: Apache-2.0
"""The control plane's store: one SQLite file, WAL, versioned schema, safe for concurrent commands.

Several `edge cloud` processes may run at once (a CI job deploying while an operator lists,
eight scripts creating versions). Three rules make that safe:

* WAL journal mode: readers never block the writer and the writer never blocks readers.
* Every read-modify-write runs in `Database.write()`, which opens the transaction with
  `BEGIN IMMEDIATE`: the write lock is taken *before* anything is read, so two processes can't
  both read "latest version is 3" and both write version 4. Plain `BEGIN` would take the lock
  only at the first write, and the loser would fail with SQLITE_BUSY instead of waiting.
* A busy timeout makes a process wait for the lock rather than fail; commands hold it for
  milliseconds.

The schema is versioned: `schema_migrations` lists the migrations applied, and `open` applies
the missing ones in one IMMEDIATE transaction, so two processes opening a new file at once
migrate it exactly once. A database written by a newer `edge` is refused, never downgraded.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self

from edge.cloud.ids import timestamp
from edge.errors import ClientTokenInUseError, CloudDatabaseError, SignatureReplayError

#: How long a command waits for another one's write lock before giving up, in seconds. Writes
#: take milliseconds; a minute covers a machine stalled by swapping without hanging forever.
BUSY_TIMEOUT_SECONDS: Final = 60.0
#: Mode of a new database file: it holds no secret values, but it holds the whole fleet's
#: layout, which is nobody else's business.
DATABASE_MODE: Final = 0o600


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change: applied once, in order, recorded in `schema_migrations`."""

    version: int
    name: str
    sql: str


MIGRATIONS: Final = (
    Migration(
        1,
        "definitions, groups, deployments, function code",
        """
        CREATE TABLE definitions (
            id                TEXT PRIMARY KEY,
            kind              TEXT NOT NULL,
            name              TEXT,
            arn               TEXT NOT NULL UNIQUE,
            created_at        TEXT NOT NULL,
            updated_at        TEXT NOT NULL,
            latest_version_id TEXT
        );
        CREATE INDEX definitions_by_kind ON definitions (kind, created_at);
        CREATE TABLE definition_versions (
            id            TEXT PRIMARY KEY,
            definition_id TEXT NOT NULL REFERENCES definitions (id) ON DELETE CASCADE,
            seq           INTEGER NOT NULL,
            arn           TEXT NOT NULL UNIQUE,
            created_at    TEXT NOT NULL,
            body          TEXT NOT NULL,
            UNIQUE (definition_id, seq)
        );
        CREATE TABLE groups (
            id                TEXT PRIMARY KEY,
            name              TEXT,
            arn               TEXT NOT NULL UNIQUE,
            created_at        TEXT NOT NULL,
            updated_at        TEXT NOT NULL,
            latest_version_id TEXT
        );
        CREATE TABLE group_versions (
            id         TEXT PRIMARY KEY,
            group_id   TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
            seq        INTEGER NOT NULL,
            arn        TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            body       TEXT NOT NULL,
            UNIQUE (group_id, seq)
        );
        CREATE TABLE deployments (
            id               TEXT PRIMARY KEY,
            group_id         TEXT NOT NULL REFERENCES groups (id),
            group_version_id TEXT NOT NULL,
            arn              TEXT NOT NULL UNIQUE,
            deployment_type  TEXT NOT NULL,
            redeployment_of  TEXT,
            thing_name       TEXT NOT NULL,
            created_at       TEXT NOT NULL,
            status           TEXT NOT NULL,
            error_message    TEXT,
            updated_at       TEXT NOT NULL,
            envelope         BLOB NOT NULL
        );
        CREATE INDEX deployments_by_group ON deployments (group_id, created_at);
        CREATE TABLE deployment_events (
            deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
            seq           INTEGER NOT NULL,
            status        TEXT NOT NULL,
            error_message TEXT,
            updated_at    TEXT NOT NULL,
            recorded_at   TEXT NOT NULL,
            PRIMARY KEY (deployment_id, seq)
        );
        CREATE TABLE function_code (
            function_arn TEXT PRIMARY KEY,
            handler      TEXT NOT NULL,
            uri          TEXT NOT NULL,
            sha256       TEXT NOT NULL,
            size         INTEGER NOT NULL,
            published_at TEXT NOT NULL
        );
        """,
    ),
    Migration(
        2,
        "applied request signatures",
        # One row per signed API request that changed something, until its signature expires:
        # `edge cloud serve` refuses the same signature again (a replay). Keyed by signature so
        # that replicas sharing this database refuse each other's replays too.
        """
        CREATE TABLE applied_signatures (
            signature  TEXT PRIMARY KEY,
            expires_at INTEGER NOT NULL,
            applied_at TEXT NOT NULL
        );
        CREATE INDEX applied_signatures_by_expiry ON applied_signatures (expires_at);
        """,
    ),
    Migration(
        3,
        "tags and client tokens",
        # Tags are keyed by ARN (what TagResource names); a client token by operation and token,
        # with a digest of the input it came with and the first answer (NULL while the first
        # request is still running). Both live here so that replicas sharing the database agree.
        """
        CREATE TABLE tags (
            resource_arn TEXT NOT NULL,
            key          TEXT NOT NULL,
            value        TEXT NOT NULL,
            PRIMARY KEY (resource_arn, key)
        );
        CREATE TABLE client_tokens (
            operation    TEXT NOT NULL,
            token        TEXT NOT NULL,
            input_sha256 TEXT NOT NULL,
            answer       TEXT,
            created_at   TEXT NOT NULL,
            PRIMARY KEY (operation, token)
        );
        """,
    ),
    Migration(
        4,
        "deployment notes",
        # What the core ignores of a deployment (AWSCloudWatch loggers, devices), for edge's own
        # CLI to show: AWS's GetDeploymentStatus has no field for it.
        """
        ALTER TABLE deployments ADD COLUMN note TEXT;
        """,
    ),
    Migration(
        5,
        "stored documents",
        # What the API keeps and returns while edge doesn't act on it (role associations,
        # connectivity info, runtime configuration, group CAs, software update jobs): one JSON
        # document per kind and subject (a group id, a thing name, a CA or job id, "" for the
        # account). A group's documents go with the group.
        """
        CREATE TABLE documents (
            kind       TEXT NOT NULL,
            subject    TEXT NOT NULL,
            group_id   TEXT REFERENCES groups (id) ON DELETE CASCADE,
            document   TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (kind, subject)
        );
        CREATE INDEX documents_by_group ON documents (group_id, kind);
        """,
    ),
    Migration(
        6,
        "deployment error details",
        # A failed deployment's ErrorDetails as the core reported them (a JSON list), for
        # GetDeploymentStatus.
        """
        ALTER TABLE deployments ADD COLUMN error_details TEXT;
        """,
    ),
)


@dataclass(slots=True)
class Claim:
    """A signed request's signature, to record with the first change the request makes.

    `Database.with_claim` hands it to the shared code unseen: the first `write()` transaction
    inserts it before anything else, so the change and the record of the signature commit or
    roll back together, and a second request with the same signature fails in its own
    transaction with `SignatureReplayError`, changing nothing.
    """

    #: None for a command's claim, which carries a client token only.
    signature: str | None
    #: When the signature stops being accepted anyway (Unix seconds); the row is pruned then.
    expires_at: int
    #: Whether a committed transaction holds it.
    recorded: bool = False
    #: The request's client token, recorded with the signature: (operation, token, input digest).
    client_token: tuple[str, str, str] | None = None


class Database:
    """An open control-plane database. Use `open`, then `read()` and `write()` transactions."""

    def __init__(
        self, path: Path, connection: sqlite3.Connection, *, claim: Claim | None = None
    ) -> None:
        self.path = path
        self._conn = connection
        self._claim = claim

    def with_claim(self, claim: Claim) -> Database:
        """This database (the same connection), recording `claim` in its first write.

        Don't close the result: the connection is this object's.
        """
        return Database(self.path, self._conn, claim=claim)

    def release(self, claim: Claim) -> None:
        """Forget a recorded claim: its request failed, so a retry signed the same may pass."""
        if not claim.recorded:
            return
        with self._transaction("BEGIN IMMEDIATE") as conn:
            if claim.signature is not None:
                conn.execute(
                    "DELETE FROM applied_signatures WHERE signature = ?", (claim.signature,)
                )
            if claim.client_token is not None:
                operation, token, _ = claim.client_token
                conn.execute(
                    "DELETE FROM client_tokens WHERE operation = ? AND token = ?",
                    (operation, token),
                )
        claim.recorded = False

    @classmethod
    def open(cls, path: Path, *, migrations: tuple[Migration, ...] = MIGRATIONS) -> Database:
        """Open (creating if needed) the database at `path` and bring its schema up to date.

        Raises:
            CloudDatabaseError: It can't be created or opened, isn't a database, or was written
                by a newer edge.
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DATABASE_MODE))
            # isolation_level=None: no implicit transactions; `read`/`write` say where they are.
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise CloudDatabaseError(str(path), f"can't be opened: {exc}") from None
        db = cls(path, conn)
        try:
            db._configure()
            db._migrate(migrations)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise CloudDatabaseError(str(path), f"can't be used: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return db

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> Self:
        """Use as a context manager that closes the database."""
        return self

    def __exit__(self, *_: object) -> None:
        """Close the database."""
        self.close()

    def _configure(self) -> None:
        conn = self._conn
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        # Switching a new file to WAL takes an exclusive lock, and SQLite answers SQLITE_BUSY
        # at once (without the busy handler) when another process holds it. It is a one-time
        # switch that lasts in the file, so a short retry loop is all that's needed.
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        while True:
            try:
                (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            raise CloudDatabaseError(str(self.path), f"can't use WAL journal mode (got {mode})")
        # NORMAL is durable in WAL mode except for the last transactions on power loss, and
        # what the control plane writes can be recreated; FULL would fsync every command.
        conn.execute("PRAGMA synchronous = NORMAL")

    def _migrate(self, migrations: tuple[Migration, ...]) -> None:
        with self.write() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            (current,) = conn.execute(
                "SELECT coalesce(max(version), 0) FROM schema_migrations"
            ).fetchone()
            known = max((m.version for m in migrations), default=0)
            if current > known:
                raise CloudDatabaseError(
                    str(self.path),
                    f"its schema version is {current}, newer than this edge knows ({known}); "
                    f"upgrade edge",
                )
            for migration in migrations:
                if migration.version <= current:
                    continue
                for statement in _statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, timestamp()),
                )

    @property
    def schema_version(self) -> int:
        """The highest migration applied."""
        (version,) = self._conn.execute(
            "SELECT coalesce(max(version), 0) FROM schema_migrations"
        ).fetchone()
        return int(version)

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """Run a read-modify-write transaction, holding the write lock from its start.

        Commits when the block ends, rolls back if it raises.

        Raises:
            CloudDatabaseError: The lock could not be had within the busy timeout, or SQLite
                failed.
            SignatureReplayError: This database carries a claim (`with_claim`) whose signature
                is already recorded: the request was applied before.
        """
        claim = self._claim if self._claim is not None and not self._claim.recorded else None
        with self._transaction("BEGIN IMMEDIATE") as conn:
            if claim is not None:
                _record(conn, claim)
            yield conn
        if claim is not None:
            claim.recorded = True

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """Run reads that see one consistent snapshot (a deferred transaction)."""
        with self._transaction("BEGIN") as conn:
            yield conn

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        try:
            conn.execute(begin)
        except sqlite3.Error as exc:
            raise CloudDatabaseError(str(self.path), f"can't start a transaction: {exc}") from None
        try:
            yield conn
        except sqlite3.Error as exc:
            _rollback(conn)
            raise CloudDatabaseError(str(self.path), f"failed: {exc}") from exc
        except BaseException:
            _rollback(conn)
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise CloudDatabaseError(str(self.path), f"can't commit: {exc}") from None


def _record(conn: sqlite3.Connection, claim: Claim) -> None:
    """Insert a claim (inside a write transaction), pruning the expired ones first."""
    if claim.signature is not None:
        conn.execute("DELETE FROM applied_signatures WHERE expires_at < ?", (int(time.time()),))
        try:
            conn.execute(
                "INSERT INTO applied_signatures (signature, expires_at, applied_at)"
                " VALUES (?, ?, ?)",
                (claim.signature, claim.expires_at, timestamp()),
            )
        except sqlite3.IntegrityError:
            raise SignatureReplayError from None
    if claim.client_token is not None:
        operation, token, digest = claim.client_token
        try:
            conn.execute(
                "INSERT INTO client_tokens (operation, token, input_sha256, created_at)"
                " VALUES (?, ?, ?, ?)",
                (operation, token, digest, timestamp()),
            )
        except sqlite3.IntegrityError:
            # Another request with this token got there first, since the caller looked.
            raise ClientTokenInUseError(token) from None


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back, if SQLite has not already done so on its own."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (migrations hold no ';' inside literals)."""
    return [s.strip() for s in script.split(";") if s.strip()]
