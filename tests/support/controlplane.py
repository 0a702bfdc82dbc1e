"""The control plane's database as tests read it, on either engine, through a config file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge.cloud.config import load_cloud_config
from edge.cloud.db import Database, open_database
from edge.cloud.migrations import TABLES


def open_configured(config: Path) -> Database:
    """The database a control-plane config names (SQLite file or PostgreSQL URL)."""
    return open_database(load_cloud_config(config))


def dump_tables(db: Database) -> dict[str, list[dict[str, Any]]]:
    """Every row of every control-plane table, in a stable order, to compare or search."""
    with db.read() as conn:
        return {
            table: sorted(
                (dict(row) for row in conn.execute(f"SELECT * FROM {table}")),  # noqa: S608
                key=repr,
            )
            for table in TABLES
        }
