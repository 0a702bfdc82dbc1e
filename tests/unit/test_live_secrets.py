# SPDX-License-Identifier: Apache-2.0
"""LiveSecrets over a real store: commits, stale bases refused, the index and the redactor."""

from __future__ import annotations

import asyncio
import gc
import shutil
import weakref
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.errors import StoreWriteError
from edge.redaction import SecretRedactor
from edge.secrets.contents import LocalSecret, SecretVersion, StoreContents
from edge.secrets.keys import generate_key
from edge.secrets.live import LiveSecrets, StaleBaseError
from edge.secrets.store import SecretStore

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf"
READER = "arn:aws:lambda:us-east-1:123456789012:function:reader:1"


@dataclass(frozen=True)
class Grant:
    """A function allowed to read some secrets."""

    function_arn: str
    readable_resources: frozenset[str]


def holding(value: str) -> StoreContents:
    """Contents with one secret, "db", whose AWSCURRENT version holds `value`."""
    version = SecretVersion(value[-2:], ("AWSCURRENT",), 1.7e9, secret_string=value)
    secret = LocalSecret(
        resource_id="db",
        arn=ARN,
        name="db",
        labels={"AWSCURRENT": version.version_id},
        versions={version.version_id: version},
    )
    return StoreContents(secrets={"db": secret})


class World:
    """LiveSecrets over a store in a folder of its own, with its own redactor."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "state"
        self.folder.mkdir(mode=0o700)
        key = generate_key(root / "core.key")
        self.store = SecretStore(path=self.folder / "secrets.store", key=key)
        self.redactor = SecretRedactor()
        self.secrets = LiveSecrets(self.store, redactor=self.redactor)
        self.changes = 0
        self.secrets.on_change(self.changed)

    def changed(self) -> None:
        self.changes += 1

    def masked(self, value: str) -> bool:
        return value not in self.redactor.mask(f"the value is {value}.")

    def served(self) -> str | None:
        """The AWSCURRENT value the index answers READER with (None: not allowed)."""
        index = self.secrets.index
        if "db" not in index.grants.get(READER, frozenset()):
            return None
        version = index.by_id[ARN].version_for("AWSCURRENT")
        assert version is not None
        return version.secret_string


@pytest.fixture
async def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    await w.secrets.load()
    return w


async def test_a_commit_writes_the_store_then_serves_and_masks_the_new_values(world: World) -> None:
    """Store, generation, index, redactor and listeners all move together."""
    first = await world.secrets.commit(
        world.secrets.current, holding("first-value-01"), readers=[Grant(READER, frozenset({"db"}))]
    )
    assert first.generation == 1
    assert world.store.load() == holding("first-value-01")
    assert world.served() == "first-value-01"
    assert world.masked("first-value-01")
    second = await world.secrets.commit(first, holding("second-value-02"))
    assert second.generation == 2
    assert world.served() == "second-value-02"  # the grants are kept
    assert world.masked("second-value-02")
    assert not world.masked("first-value-01")  # rotated out: no longer a secret of this core
    assert world.changes == 2


async def test_contents_based_on_an_old_generation_are_refused(world: World) -> None:
    """A writer whose base is gone changes nothing and learns why."""
    base = world.secrets.current
    await world.secrets.commit(base, holding("first-value-01"))
    before = world.store.path.read_bytes()
    with pytest.raises(StaleBaseError) as info:
        await world.secrets.commit(base, holding("stale-value-03"))
    assert (info.value.base, info.value.current, info.value.rotating) == (0, 1, False)
    assert world.store.path.read_bytes() == before
    assert world.secrets.contents == holding("first-value-01")
    assert not world.masked("stale-value-03")
    assert world.changes == 1


async def test_a_commit_during_a_rotation_is_refused_at_once(world: World) -> None:
    """While a deployment holds the rotation, a refresh's commit does not wait: it is stale."""
    base = world.secrets.current
    async with world.secrets.rotation() as rotation:
        rotation.mask(["fetched-value-04"])
        assert world.masked("fetched-value-04")
        with pytest.raises(StaleBaseError) as info:
            await asyncio.wait_for(world.secrets.commit(base, holding("refresh-value-05")), 5)
        assert info.value.rotating
        await rotation.commit(holding("fetched-value-04"))
    assert world.secrets.current.generation == 1
    assert world.secrets.contents == holding("fetched-value-04")


async def test_a_rotation_that_never_commits_leaves_everything_and_unmasks(world: World) -> None:
    """Values fetched for a deployment that failed stop being masked when the rotation ends."""
    await world.secrets.commit(world.secrets.current, holding("first-value-01"))
    async with world.secrets.rotation() as rotation:
        rotation.mask(["fetched-value-06"])
    assert not world.masked("fetched-value-06")
    assert world.masked("first-value-01")
    assert world.secrets.current.generation == 1
    with pytest.raises(RuntimeError, match="commits once"):
        await rotation.commit(holding("late-value-07"))


class _ReplacedWorker:
    """Stands for what a deployment drops in a cycle: a worker and the task that refers to it."""

    def __init__(self) -> None:
        self.me = self


async def test_what_a_rotation_dropped_in_cycles_is_freed_when_it_ends(world: World) -> None:
    """Cycles a deployment leaves (replaced workers) don't wait for the collector's schedule.

    Left to it, they pile up over several deployments and the core's memory grows with them.
    """
    gc.disable()  # only the rotation may collect here
    try:
        async with world.secrets.rotation():
            dropped = weakref.ref(_ReplacedWorker())
            assert dropped() is not None  # alive, in its cycle, until something collects it
        assert dropped() is None
    finally:
        gc.enable()


async def test_a_failed_store_write_changes_nothing(world: World) -> None:
    """The store can't be written (its folder is gone): no swap, no listener, old values served."""
    await world.secrets.commit(
        world.secrets.current, holding("first-value-01"), readers=[Grant(READER, frozenset({"db"}))]
    )
    shutil.rmtree(world.folder)
    with pytest.raises(StoreWriteError, match="the previous store is unchanged"):
        await world.secrets.commit(world.secrets.current, holding("lost-value-08"))
    assert world.secrets.current.generation == 1
    assert world.served() == "first-value-01"
    assert not world.masked("lost-value-08")
    assert world.changes == 1


async def test_a_commit_returns_only_after_its_barriers(world: World) -> None:
    """A barrier runs after the swap (it sees the new index) and the commit waits for it."""
    seen: list[str | None] = []
    release = asyncio.Event()

    async def barrier() -> None:
        seen.append(world.served())
        await release.wait()

    world.secrets.after_commit(barrier)
    commit = asyncio.ensure_future(
        world.secrets.commit(
            world.secrets.current,
            holding("first-value-01"),
            readers=[Grant(READER, frozenset({"db"}))],
        )
    )
    while not seen:
        await asyncio.sleep(0)
    assert seen == ["first-value-01"]
    assert not commit.done()
    release.set()
    assert (await commit).generation == 1
