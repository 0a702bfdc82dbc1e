"""The control plane's database: one operation's transaction on PostgreSQL against SQLite.

    .venv/bin/python bench/db.py [--writes 200 --rows 1000 --repeat 5] [--url postgresql://...]

Baseline: the same operations on a SQLite file (WAL) in a temporary directory, in the same run.
Measured through the shared code the CLI and `edge cloud serve` run (`edge.cloud.definitions`):
a write is `create-resource-definition-version` (the write lock, a read of the latest version,
two inserts and an update, a commit); a read is `list-resource-definition-versions` of `--rows`
versions. PostgreSQL is `--url` (an admin URL: a database with a random name is created there
and dropped), else `EDGE_TEST_POSTGRES_URL`, else 127.0.0.1:5432 as postgres. Prints the median
milliseconds per operation of `--repeat` rounds, and the ratio to SQLite.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.cloud.db import Database
from edge.cloud.definitions import (
    KINDS,
    create_definition,
    create_version,
    list_versions,
)
from edge.cloud.ids import Arns
from tests.support.postgres import session_database

ARNS = Arns("us-east-1", "123456789012")
RESOURCES = KINDS["resource"]


def median_ms(fn: Callable[[], object], count: int, repeat: int) -> float:
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(count):
            fn()
        rounds.append((time.perf_counter() - start) / count * 1000)
    return statistics.median(rounds)


def measure(where: Path | str, args: argparse.Namespace) -> tuple[float, float]:
    """(ms per write, ms per read of `--rows` versions) on one database."""
    with Database.open(where) as db:
        ident = create_definition(db, ARNS, RESOURCES, name="bench", initial=None)["Id"]
        for _ in range(args.rows):
            create_version(db, ARNS, RESOURCES, ident, {"Resources": []})
        write = median_ms(
            lambda: create_version(db, ARNS, RESOURCES, ident, {"Resources": []}),
            args.writes,
            args.repeat,
        )
        read = median_ms(lambda: list_versions(db, RESOURCES, ident), 10, args.repeat)
    return write, read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--url")
    args = parser.parse_args()
    admin = (
        args.url
        or os.environ.get("EDGE_TEST_POSTGRES_URL")
        or "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    with psycopg.connect(admin, connect_timeout=5):
        pass
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = measure(Path(tmp) / "bench.db", args)
    with session_database(admin) as url:
        postgresql = measure(url, args)
    print(f"{'':12} {'write ms':>9} {'read ms':>9}  (medians of {args.repeat})")
    print(f"{'SQLite':12} {sqlite[0]:9.3f} {sqlite[1]:9.2f}")
    print(f"{'PostgreSQL':12} {postgresql[0]:9.3f} {postgresql[1]:9.2f}")
    print(
        f"PostgreSQL / SQLite: write {postgresql[0] / sqlite[0]:.1f}x, "
        f"read of {args.rows} versions {postgresql[1] / sqlite[1]:.1f}x"
    )


if __name__ == "__main__":
    main()
