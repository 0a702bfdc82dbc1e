# SPDX-License-Identifier: Apache-2.0
"""`edge cloud migrate`: copy a SQLite control plane into an empty PostgreSQL database.

Every table is copied as it is (ids, ARNs, versions, deployments and their events, statuses,
tags, client tokens, stored documents, published function code), so cores, scripts and the
AWS CLI see the same control plane afterwards. The copy is one transaction on the target:
it lands whole or not at all, and a target that already holds rows is refused before anything
is written, so a control plane is never merged into another.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

from edge.cloud.config import CloudConfig
from edge.cloud.db import Connection, Database, is_url, read_password
from edge.cloud.errors import CloudUsageError
from edge.cloud.migrations import TABLES

#: Rows sent per round trip: large enough to amortise the latency, small enough to bound memory.
BATCH_ROWS: Final = 500


def migrate(
    config: CloudConfig,
    source: Path,
    target: str,
    password_file: Path | None,
    *,
    progress: Callable[[str], None],
) -> int:
    """`edge cloud migrate --from FILE --to URL`; the password file defaults to the config's.

    `progress` gets whole stderr lines.
    """
    password_file = password_file or config.cloud.database_password_file
    password = None
    if password_file is not None:
        password = read_password(password_file, config_path=str(config.path))

    def line(text: str) -> None:
        progress(f"edge: migrate: {text}")

    copied = copy_control_plane(source, target, password=password, progress=line)
    line(f"copied {sum(copied.values())} rows from {source}; point [cloud] database at it")
    return 0


def copy_control_plane(
    source: Path,
    target: str,
    *,
    password: str | None,
    progress: Callable[[str], None],
) -> dict[str, int]:
    """Copy every control-plane row from the SQLite file `source` into the database `target`.

    Both are brought to the current schema first; `progress` gets one line per table.

    Returns:
        Rows copied, by table.

    Raises:
        CloudUsageError: `source` is no SQLite file, `target` no PostgreSQL URL, or `target`
            already holds rows.
        CloudDatabaseError: Either database can't be opened, or the copy failed (nothing of
            it is kept).
    """
    if is_url(str(source)) or not source.is_file():
        raise CloudUsageError("--from", f"{source} is not a SQLite control-plane file")
    if not is_url(target):
        raise CloudUsageError("--to", "must be a postgresql://USER@HOST:PORT/DBNAME URL")
    copied: dict[str, int] = {}
    with (
        Database.open(source) as src,
        Database.open(target, password=password) as dst,
        src.read() as reader,
        dst.write() as writer,
    ):
        for table in TABLES:
            if writer.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():  # noqa: S608
                raise CloudUsageError(
                    "--to",
                    f"{dst.name} already holds a control plane ({table} has rows); "
                    "migrate copies into an empty database only",
                )
        for table in TABLES:
            copied[table] = _copy_table(reader, writer, table)
            progress(f"{table}: {copied[table]} rows")
    return copied


def _copy_table(reader: Connection, writer: Connection, table: str) -> int:
    rows = reader.execute(f"SELECT * FROM {table}").fetchall()  # noqa: S608 - fixed names
    if not rows:
        return 0
    columns = list(rows[0].keys())
    insert = (
        f"INSERT INTO {table} ({', '.join(columns)})"  # noqa: S608 - fixed names
        f" VALUES ({', '.join(f':{c}' for c in columns)})"
    )
    for start in range(0, len(rows), BATCH_ROWS):
        writer.executemany(insert, [dict(row) for row in rows[start : start + BATCH_ROWS]])
    return len(rows)
