"""Real PostgreSQL for the tests: the session's server, databases and schemas, private clusters.

The server is `EDGE_TEST_POSTGRES_URL` when set (`.ci/install-postgresql` starts one and `make
test` exports it), else the one on 127.0.0.1:5432 with trust auth as `postgres` or `root`.
Each test session (each xdist worker) gets a database with a random name, dropped at its end;
each test that needs an empty control plane gets a schema of its own in it (`search_path` set
through the URL's libpq `options`), which costs a CREATE SCHEMA rather than a CREATE DATABASE.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

#: Where Debian installs PostgreSQL 15's server programs.
PG_BIN = Path("/usr/lib/postgresql/15/bin")
_DEFAULT_USERS = ("postgres", "root")


def server_url() -> str:
    """The admin URL of the server the tests use; fails (never skips) when none answers."""
    url = os.environ.get("EDGE_TEST_POSTGRES_URL")
    if url:
        return url
    problems = []
    for user in _DEFAULT_USERS:
        candidate = f"postgresql://{user}@127.0.0.1:5432/postgres"
        try:
            with psycopg.connect(candidate, connect_timeout=5):
                return candidate
        except psycopg.Error as exc:
            problems.append(f"{user}: {str(exc).strip().splitlines()[0]}")
    raise RuntimeError(
        "no PostgreSQL for the tests: set EDGE_TEST_POSTGRES_URL, run one on 127.0.0.1:5432 "
        f"with trust auth, or run `bash .ci/install-postgresql` ({'; '.join(problems)})"
    )


def with_database(url: str, database: str, **query: str) -> str:
    """`url` naming another database, with extra query parameters."""
    parts = urllib.parse.urlsplit(url)
    params = dict(urllib.parse.parse_qsl(parts.query)) | query
    return urllib.parse.urlunsplit(
        parts._replace(path=f"/{database}", query=urllib.parse.urlencode(params))
    )


@contextlib.contextmanager
def session_database(admin_url: str) -> Iterator[str]:
    """A new database with a random name, dropped (with its connections) at the end."""
    name = f"edge_test_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def new_schema(database_url: str) -> str:
    """An empty schema in the database; the URL returned uses it (and only it) as search_path."""
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    return with_database(
        database_url,
        urllib.parse.urlsplit(database_url).path.lstrip("/"),
        options=f"-csearch_path={name}",
    )


def free_port() -> int:
    """A TCP port nothing listens on now (on the loopback interface)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """A PostgreSQL cluster of the test's own, run as the `postgres` user; safe to restart."""

    directory: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.directory / "data"),
            "-l",
            str(self.directory / "server.log"),
            "-o",
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1",
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.directory / "data"), "-m", "fast", "-w", "stop"
        )


@contextlib.contextmanager
def private_cluster(
    parent: Path = Path("/tmp"), *, password: str | None = None
) -> Iterator[Cluster]:
    """`initdb` a cluster in a directory owned by `postgres`, start it, remove it after.

    With `password`, TCP clients must give it (scram-sha-256); without, trust.
    """
    if os.geteuid() != 0 or not (PG_BIN / "initdb").exists():
        raise RuntimeError(f"a private cluster needs root and {PG_BIN}/initdb")
    # Not under pytest's temporary directory: its base is 0700 and pytest keeps it so.
    directory = Path(tempfile.mkdtemp(prefix="edge-pg-", dir=parent))
    entry = pwd.getpwnam("postgres")
    os.chown(directory, entry.pw_uid, entry.pw_gid)
    cluster = Cluster(directory, free_port())
    auth = ["-A", "trust"]
    if password is not None:
        pwfile = directory / "pwfile"
        pwfile.write_text(password + "\n")
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        pwfile.chmod(0o600)
        auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
    cluster._run(str(PG_BIN / "initdb"), "-D", str(directory / "data"), "-U", "postgres", *auth)
    cluster.start()
    try:
        yield cluster
    finally:
        with contextlib.suppress(RuntimeError):
            cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
