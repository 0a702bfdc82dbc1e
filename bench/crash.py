"""Crash consistency of store rotation: SIGKILL a process mid-rotation, again and again.

    .venv/bin/python bench/crash.py [--kills 200] [--seed 1]

A child process rotates a real encrypted store (SecretStore.save: seal, temp file, fsync,
rename, directory fsync) back and forth between two contents as fast as it can; the parent
kills it with SIGKILL after a random delay, then opens the store as a restarted core would
(SecretStore.load, which also clears a dead save's temp file) and checks that it holds exactly
one of the two contents, never neither and never a mix, and that no temp file is left. This
exercises the rotation itself; `bench/core_crash.py` kills a whole `edge run` at random points.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge.log import configure_logging
from edge.secrets.contents import LocalSecret, SecretVersion, StoreContents
from edge.secrets.keys import CoreKey, generate_key
from edge.secrets.store import STORE_FILE_NAME, SecretStore

SECRETS_PER_STORE = 500


def contents(tag: str) -> StoreContents:
    """A store of SECRETS_PER_STORE secrets whose values all carry `tag`."""
    secrets = {}
    for i in range(SECRETS_PER_STORE):
        version = SecretVersion(
            version_id=f"{tag}-{i}",
            version_stages=("AWSCURRENT",),
            created_date=1.7e9,
            secret_string=f"{tag}-value-{i}-" + "x" * 40,
        )
        secrets[f"r{i}"] = LocalSecret(
            resource_id=f"r{i}",
            arn=f"arn:aws:secretsmanager:us-east-1:123456789012:secret:s{i}-AbCdEf",
            name=f"s{i}",
            labels={"AWSCURRENT": version.version_id},
            versions={version.version_id: version},
        )
    return StoreContents(secrets=secrets)


def rotate_forever(directory: Path) -> None:
    """Child: save A, B, A, B, ... until killed."""
    store = SecretStore(path=directory / STORE_FILE_NAME, key=CoreKey.load(directory / "core.key"))
    a, b = contents("A"), contents("B")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        store.save(a)
        store.save(b)


def main() -> int:
    """Kill the rotating child `--kills` times; check the store after every kill."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        rotate_forever(args.child)
        return 0
    configure_logging(level="error", fmt="console")  # the store logs each temp file it clears
    rng = random.Random(args.seed)  # noqa: S311 - reproducible timing, not cryptography
    expected = {"A": contents("A"), "B": contents("B")}
    seen = {"A": 0, "B": 0}
    mid_write = 0
    with tempfile.TemporaryDirectory(prefix="edge-crash-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o700)
        key = generate_key(directory / "core.key")
        store = SecretStore(path=directory / STORE_FILE_NAME, key=key)
        store.save(expected["A"])
        started = time.perf_counter()
        for kill in range(1, args.kills + 1):
            child = subprocess.Popen(
                [sys.executable, __file__, "--child", str(directory)], stdout=subprocess.PIPE
            )
            if child.stdout is None:  # pragma: no cover - PIPE was asked for
                return 1
            child.stdout.readline()  # the child is rotating from here on
            time.sleep(rng.uniform(0.0, 0.25))
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            if any(".tmp-" in p.name for p in directory.iterdir()):
                mid_write += 1  # the kill landed while a new store was being written
            loaded = store.load()
            tag = next((t for t, c in expected.items() if loaded == c), None)
            if tag is None:
                print(f"kill {kill}: the store is neither the old nor the new contents")
                return 1
            seen[tag] += 1
            leftovers = [p.name for p in directory.iterdir() if ".tmp-" in p.name]
            if leftovers:
                print(f"kill {kill}: temp files left after load: {leftovers}")
                return 1
        elapsed = time.perf_counter() - started
    print(
        f"{args.kills} SIGKILLs during rotation of a {SECRETS_PER_STORE}-secret store in "
        f"{elapsed:.0f} s ({mid_write} of them while a new store file was being written): the "
        f"store was exactly A {seen['A']} times and exactly B {seen['B']} times, never "
        f"anything else; no temp file survived a load"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
