# SPDX-License-Identifier: Apache-2.0
"""The control plane's store: SQLite (one file, the default) or PostgreSQL, through SQLAlchemy.

Several processes use one database at once: `edge cloud` commands beside each other (a CI job
deploying while an operator lists), and `edge cloud serve` replicas sharing one PostgreSQL
database. Every read-modify-write runs in `Database.write()`, which takes the write lock
*before* anything is read, so two processes can't both read "latest version is 3" and both
write version 4. Each engine gets that guarantee its own way:

* SQLite: WAL journal mode (readers never block the writer, nor the writer them), and writes
  open their transaction with `BEGIN IMMEDIATE`, which takes the file's write lock at once;
  plain `BEGIN` would take it only at the first write, and the loser would fail with
  SQLITE_BUSY instead of waiting. A busy timeout makes a process wait rather than fail.
* PostgreSQL: a write transaction starts with `pg_advisory_xact_lock` on a key named after what
  it guards (`write(lock=...)`; one key for the control plane's tables today), and runs at READ
  COMMITTED, so every statement after the lock sees what the previous holder committed. That is
  the SQLite model, wait instead of fail, with no retry loop around callers that have side
  effects (a publish, a file written); SERIALIZABLE would need one. The lock is released by
  the commit or rollback, even when the client dies. A table that needs finer locking (row
  locks, `FOR UPDATE SKIP LOCKED`) passes `lock=None` and takes its own. Reads run at
  REPEATABLE READ: one snapshot for the whole block, as SQLite's deferred transaction gives.

`open` applies the missing migrations (`edge.cloud.migrations`) in one write transaction: on
SQLite under the IMMEDIATE lock, on PostgreSQL under an advisory lock of its own (DDL is
transactional there), so processes starting together migrate exactly once. A database written
by a newer `edge` is refused, never downgraded.

A PostgreSQL connection the server dropped (a restart, a failover) surfaces as an unavailable
`CloudDatabaseError`, which `edge cloud serve` answers with 503; the pool checks connections
before handing them out, so the next request gets a fresh one once the server is back.

SQL is written once for both engines: `text()` statements with named binds (`:name`; a list
value is expanded, `IN :names`), and rows are read by column name.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Self

from sqlalchemy import Connection as SqlConnection
from sqlalchemy import Engine, bindparam, create_engine, event, exc, text
from sqlalchemy.engine import URL, CursorResult, RowMapping, make_url
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql.elements import TextClause

from edge.cloud.config import CloudConfig
from edge.cloud.errors import ClientTokenInUseError, CloudDatabaseError, SignatureReplayError
from edge.cloud.ids import timestamp
from edge.cloud.migrations import MIGRATIONS, Migration
from edge.errors import ConfigError
from edge.fsutil import read_private_file

__all__ = [
    "MIGRATIONS",
    "Claim",
    "Connection",
    "Database",
    "Migration",
    "Row",
    "is_url",
    "open_database",
    "read_password",
]

#: How long a command waits for another one's write lock before giving up, in seconds. Writes
#: take milliseconds; a minute covers a machine stalled by swapping without hanging forever.
BUSY_TIMEOUT_SECONDS: Final = 60.0
#: Mode of a new database file: it holds no secret values, but it holds the whole fleet's
#: layout, which is nobody else's business.
DATABASE_MODE: Final = 0o600
#: The write lock every control-plane table shares (see the module docstring).
CONTROL_PLANE_LOCK: Final = "edge.control-plane"
#: The lock migrations run under on PostgreSQL.
MIGRATION_LOCK: Final = "edge.migrations"
#: How long a client token is remembered: a retry comes within minutes; a day covers a retry
#: queued over a night's outage, and keeps the table from growing with every call.
CLIENT_TOKEN_LIFETIME: Final = timedelta(days=1)
#: How long PostgreSQL may take to accept a connection before the request fails as unavailable.
CONNECT_TIMEOUT_SECONDS: Final = 10
_URL_SCHEMES: Final = ("postgresql://", "postgres://", "postgresql+psycopg://")
#: A password file is one line; anything bigger is the wrong file.
_MAX_PASSWORD_BYTES: Final = 4096

#: A row, read by column name: `row["status"]`.
Row = RowMapping


def is_url(where: Path | str) -> bool:
    """Whether `[cloud] database` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(where, str) and where.startswith(_URL_SCHEMES)


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


class Result:
    """What a statement returned: rows by column name, a scalar, or the count it changed."""

    def __init__(self, result: CursorResult[Any]) -> None:
        self._result = result

    def fetchone(self) -> Row | None:
        """The next row, or None."""
        return self._result.mappings().fetchone()

    def fetchall(self) -> list[Row]:
        """The remaining rows."""
        return list(self._result.mappings().fetchall())

    def scalar(self) -> Any:  # noqa: ANN401 - a column of any type
        """The first column of the first row, or None when there is no row."""
        return self._result.scalar()

    def __iter__(self) -> Iterator[Row]:
        """The rows, one by one."""
        return iter(self._result.mappings())

    @property
    def rowcount(self) -> int:
        """How many rows an UPDATE or DELETE changed."""
        return int(self._result.rowcount)


class Connection:
    """One transaction's connection: `execute(sql, params)` with SQL both engines read."""

    def __init__(self, conn: SqlConnection) -> None:
        self._conn = conn

    @property
    def dialect(self) -> str:
        """The engine: "sqlite" or "postgresql"."""
        return str(self._conn.dialect.name)

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Result:
        """Run one statement with named binds (`:name`); a list value binds `IN :name`."""
        statement, binds = _bind(sql, params or {})
        return Result(self._conn.execute(statement, binds))

    def executemany(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run one statement once per row of parameters (in one round trip where possible)."""
        if rows:
            self._conn.execute(_statement(sql, frozenset()), [dict(row) for row in rows])


class Database:
    """An open control-plane database. Use `open`, then `read()` and `write()` transactions."""

    def __init__(self, engine: Engine, name: str, *, claim: Claim | None = None) -> None:
        self._engine = engine
        #: What errors call it: the file, or the URL without its password.
        self.name = name
        self._claim = claim

    @property
    def dialect(self) -> str:
        """The engine: "sqlite" or "postgresql"."""
        return str(self._engine.dialect.name)

    def with_claim(self, claim: Claim) -> Database:
        """This database (the same pool), recording `claim` in its first write.

        Don't close the result: the pool is this object's.
        """
        return Database(self._engine, self.name, claim=claim)

    def release(self, claim: Claim) -> None:
        """Forget a recorded claim: its request failed, so a retry signed the same may pass."""
        if not claim.recorded:
            return
        with self._transaction(write=True, lock=CONTROL_PLANE_LOCK) as conn:
            if claim.signature is not None:
                conn.execute(
                    "DELETE FROM applied_signatures WHERE signature = :signature",
                    {"signature": claim.signature},
                )
            if claim.client_token is not None:
                operation, token, _ = claim.client_token
                conn.execute(
                    "DELETE FROM client_tokens WHERE operation = :operation AND token = :token",
                    {"operation": operation, "token": token},
                )
        claim.recorded = False

    @classmethod
    def open(
        cls,
        where: Path | str,
        *,
        password: str | None = None,
        migrations: tuple[Migration, ...] = MIGRATIONS,
    ) -> Database:
        """Open the database at `where` and bring its schema up to date.

        Args:
            where: A SQLite file (created if needed) or a `postgresql://` URL of an existing
                database (`sslmode` and other libpq settings go in its query string).
            password: The PostgreSQL password, kept out of the URL so it is never shown.
            migrations: The schema to bring it to.

        Raises:
            CloudDatabaseError: It can't be created or reached, isn't a database, or was
                written by a newer edge.
        """
        db = cls(*(_postgresql(str(where), password) if is_url(where) else _sqlite(Path(where))))
        try:
            db._migrate(migrations)
        except BaseException:
            db.close()
            raise
        return db

    def pool_use(self) -> tuple[int, int, int] | None:
        """The connection pool's (size, checked out, overflow); None for a pool without them."""
        pool = self._engine.pool
        if not isinstance(pool, QueuePool):
            return None
        return pool.size(), pool.checkedout(), max(pool.overflow(), 0)

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        """Use as a context manager that closes the database."""
        return self

    def __exit__(self, *_: object) -> None:
        """Close the database."""
        self.close()

    def _migrate(self, migrations: tuple[Migration, ...]) -> None:
        with self._transaction(write=True, lock=MIGRATION_LOCK) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            current_version = int(current.scalar())
            known = max((m.version for m in migrations), default=0)
            if current_version > known:
                raise CloudDatabaseError(
                    self.name,
                    f"its schema version is {current_version}, newer than this edge knows "
                    f"({known}); upgrade edge",
                )
            for migration in migrations:
                if migration.version <= current_version:
                    continue
                for statement in migration.statements(conn.dialect):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at)"
                    " VALUES (:version, :name, :at)",
                    {"version": migration.version, "name": migration.name, "at": timestamp()},
                )

    @property
    def schema_version(self) -> int:
        """The highest migration applied."""
        with self.read() as conn:
            return int(
                conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").scalar()
            )

    @contextlib.contextmanager
    def write(self, *, lock: str | None = CONTROL_PLANE_LOCK) -> Iterator[Connection]:
        """Run a read-modify-write transaction, holding the write lock from its start.

        Commits when the block ends, rolls back if it raises.

        Args:
            lock: The PostgreSQL advisory lock to hold (see the module docstring); None for a
                transaction that locks the rows it needs itself. SQLite has one lock.

        Raises:
            CloudDatabaseError: The lock could not be had within the busy timeout, the
                database failed, or it can't be reached (`unavailable`).
            SignatureReplayError: This database carries a claim (`with_claim`) whose signature
                is already recorded: the request was applied before.
        """
        claim = self._claim if self._claim is not None and not self._claim.recorded else None
        with self._transaction(write=True, lock=lock) as conn:
            if claim is not None:
                _record(conn, claim)
            yield conn
        if claim is not None:
            claim.recorded = True

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """Run reads that see one consistent snapshot."""
        with self._transaction(write=False, lock=None) as conn:
            yield conn

    @contextlib.contextmanager
    def _transaction(self, *, write: bool, lock: str | None) -> Iterator[Connection]:
        try:
            with self._engine.connect() as raw:
                if self.dialect == "sqlite":
                    raw.execution_options(edge_begin="BEGIN IMMEDIATE" if write else "BEGIN")
                else:
                    level = "READ COMMITTED" if write else "REPEATABLE READ"
                    raw.execution_options(isolation_level=level)
                with raw.begin():
                    if write and lock is not None and self.dialect == "postgresql":
                        raw.execute(
                            text("SELECT pg_advisory_xact_lock(CAST(:key AS BIGINT))"),
                            {"key": _lock_key(lock)},
                        )
                    yield Connection(raw)
        except exc.SQLAlchemyError as error:
            raise _database_error(self.name, self.dialect, error) from error


def open_database(config: CloudConfig) -> Database:
    """Open `[cloud] database`, with the password from `database_password_file` if set.

    Raises:
        ConfigError: The password file is missing, unreadable, or not one line of text.
        InsecurePermissionsError: Other users can reach the password file.
        CloudDatabaseError: The database can't be opened (see `Database.open`).
    """
    cloud = config.cloud
    password = None
    if cloud.database_password_file is not None:
        password = read_password(cloud.database_password_file, config_path=str(config.path))
    return Database.open(cloud.database, password=password)


def read_password(path: Path, *, config_path: str) -> str:
    """A database password file's one line (mode 0600 like every secret file).

    Raises:
        ConfigError: It is missing, unreadable, or not one line of text.
        InsecurePermissionsError: Other users can reach it.
    """
    key = "cloud.database_password_file"
    try:
        data = read_private_file(path, max_size=_MAX_PASSWORD_BYTES)
    except FileNotFoundError:
        raise ConfigError(config_path, f"{path} does not exist", key=key) from None
    except OSError as error:
        raise ConfigError(
            config_path, f"{path} can't be read: {error.strerror or error}", key=key
        ) from None
    try:
        password = data.decode("utf-8").strip("\r\n")
    except UnicodeDecodeError:
        password = ""
    if not password or "\n" in password:
        # Nothing about the content: it is a secret, even when it is a wrong one.
        raise ConfigError(config_path, f"{path} must hold the password on one line", key=key)
    return password


def _sqlite(path: Path) -> tuple[Engine, str]:
    """An engine on a SQLite file, created 0600 if missing, switched to WAL."""
    name = str(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DATABASE_MODE))
    except OSError as error:
        raise CloudDatabaseError(name, f"can't be opened: {error}") from None
    engine = create_engine(
        # URL.create: a path may hold '?' or '#', which a URL string would misread.
        URL.create("sqlite", database=str(path)),
        connect_args={"timeout": BUSY_TIMEOUT_SECONDS, "isolation_level": None},
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi: sqlite3.Connection, _record: object) -> None:
        dbapi.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        dbapi.execute("PRAGMA foreign_keys = ON")
        # NORMAL is durable in WAL mode except for the last transactions on power loss, and
        # what the control plane writes can be recreated; FULL would fsync every command.
        dbapi.execute("PRAGMA synchronous = NORMAL")

    @event.listens_for(engine, "begin")
    def _begin(conn: SqlConnection) -> None:
        # The driver starts no transaction of its own (isolation_level=None): this one says
        # which kind, IMMEDIATE for writes.
        conn.exec_driver_sql(conn.get_execution_options().get("edge_begin", "BEGIN"))

    try:
        _use_wal(engine, name)
    except (exc.SQLAlchemyError, sqlite3.Error) as error:
        engine.dispose()
        raise CloudDatabaseError(name, f"can't be used: {_reason(error)}") from None
    return engine, name


def _use_wal(engine: Engine, name: str) -> None:
    """Switch a file to WAL, once: the mode lasts in the file.

    The switch takes an exclusive lock, and SQLite answers SQLITE_BUSY at once (without the
    busy handler) when another process holds it, so a short retry loop does the waiting.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    # The driver's own connection: SQLAlchemy's would open a transaction first, and the mode
    # can't change inside one.
    conn = engine.raw_connection()
    try:
        while True:
            try:
                (mode,) = conn.cursor().execute("PRAGMA journal_mode = WAL").fetchone()
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
    finally:
        conn.close()
    if str(mode).lower() != "wal":
        raise CloudDatabaseError(name, f"can't use WAL journal mode (got {mode})")


def _postgresql(url: str, password: str | None) -> tuple[Engine, str]:
    """A pooled engine on a PostgreSQL database through psycopg 3."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        raise CloudDatabaseError(_redacted(url), "is not a postgresql:// URL") from None
    parsed = parsed.set(drivername="postgresql+psycopg")
    if password is not None:
        parsed = parsed.set(password=password)
    name = parsed.set(drivername="postgresql").render_as_string(hide_password=True)
    engine = create_engine(
        parsed,
        # A connection the server dropped (restart, failover) is replaced before use.
        pool_pre_ping=True,
        pool_timeout=BUSY_TIMEOUT_SECONDS,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
    )
    return engine, name


def _redacted(url: str) -> str:
    """A URL with any password replaced, for an error message."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for a lock's name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _database_error(name: str, dialect: str, error: exc.SQLAlchemyError) -> CloudDatabaseError:
    """The edge error for a driver's, saying whether retrying later may help."""
    message = _reason(error)
    unavailable = (
        isinstance(error, exc.DBAPIError) and error.connection_invalidated
    ) or isinstance(error, exc.TimeoutError)
    if dialect == "postgresql":
        unavailable = unavailable or isinstance(error, exc.OperationalError | exc.InterfaceError)
    else:
        unavailable = unavailable or "locked" in message
    if unavailable:
        return CloudDatabaseError(name, f"unavailable: {message}", unavailable=True)
    return CloudDatabaseError(name, f"failed: {message}")


def _reason(error: BaseException) -> str:
    """The driver's own message, first line, without the statement and its parameters."""
    inner = getattr(error, "orig", None) or error
    lines = str(inner).strip().splitlines()
    return lines[0] if lines else type(inner).__name__


def _bind(sql: str, params: Mapping[str, Any]) -> tuple[TextClause, dict[str, Any]]:
    """The statement for `sql`, its list-valued binds expanded (`IN :names`)."""
    expanding = frozenset(k for k, v in params.items() if isinstance(v, list | tuple))
    return _statement(sql, expanding), dict(params)


@functools.lru_cache(maxsize=1024)
def _statement(sql: str, expanding: frozenset[str]) -> TextClause:
    statement = text(sql)
    if expanding:
        statement = statement.bindparams(*(bindparam(name, expanding=True) for name in expanding))
    return statement


def _record(conn: Connection, claim: Claim) -> None:
    """Insert a claim (inside a write transaction), pruning the expired ones first."""
    if claim.signature is not None:
        conn.execute(
            "DELETE FROM applied_signatures WHERE expires_at < :now", {"now": int(time.time())}
        )
        if conn.execute(
            "SELECT 1 FROM applied_signatures WHERE signature = :signature",
            {"signature": claim.signature},
        ).fetchone():
            raise SignatureReplayError
        conn.execute(
            "INSERT INTO applied_signatures (signature, expires_at, applied_at)"
            " VALUES (:signature, :expires_at, :at)",
            {"signature": claim.signature, "expires_at": claim.expires_at, "at": timestamp()},
        )
    if claim.client_token is not None:
        operation, token, digest = claim.client_token
        cutoff = timestamp(datetime.now(UTC) - CLIENT_TOKEN_LIFETIME)
        conn.execute("DELETE FROM client_tokens WHERE created_at < :cutoff", {"cutoff": cutoff})
        if conn.execute(
            "SELECT 1 FROM client_tokens WHERE operation = :operation AND token = :token",
            {"operation": operation, "token": token},
        ).fetchone():
            # Another request with this token got there first, since the caller looked.
            raise ClientTokenInUseError(token)
        conn.execute(
            "INSERT INTO client_tokens (operation, token, input_sha256, created_at)"
            " VALUES (:operation, :token, :digest, :at)",
            {"operation": operation, "token": token, "digest": digest, "at": timestamp()},
        )
