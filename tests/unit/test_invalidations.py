"""The core's watches of worker caches: pushes, acknowledgements, deadlines, reported reads."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edge.ipc.auth import WorkerIdentity
from edge.ipc.invalidations import Invalidations

READER = WorkerIdentity(function_arn="arn:aws:lambda:us-east-1:1:function:reader:1", pid=10)
OTHER = WorkerIdentity(function_arn="arn:aws:lambda:us-east-1:1:function:other:1", pid=11)


class World:
    """A hub whose snapshots are strings, recording the reports it hands on."""

    def __init__(self) -> None:
        self.snapshot = "index-1"
        self.reports: list[tuple[str, str, list[Any]]] = []
        self.hub: Invalidations[str] = Invalidations(
            current=lambda: self.snapshot,
            on_reads=lambda who, snap, counts: self.reports.append(
                (who.function_arn, snap, counts)
            ),
            heartbeat=30,
        )


async def test_an_invalidation_waits_for_every_watch_and_reports_the_late_ones() -> None:
    """A poll is answered at once; the worker that polls again is in time, the other late."""
    world = World()
    hub = world.hub
    first = await hub.watch(READER, {"Watch": 0})
    second = await hub.watch(OTHER, {"Watch": 0})
    assert (first["Seq"], hub.watches) == (1, 2)
    polls = [
        asyncio.ensure_future(hub.watch(READER, {"Watch": first["Watch"], "Seen": 1})),
        asyncio.ensure_future(hub.watch(OTHER, {"Watch": second["Watch"], "Seen": 1})),
    ]
    await asyncio.sleep(0)
    world.snapshot = "index-2"
    pushing = asyncio.ensure_future(hub.invalidate(0.2))
    assert [await p for p in polls] == [{"Seq": 2}, {"Seq": 2}]
    # The reader acknowledges (its next poll says it has seen 2); the other never does.
    ack = asyncio.ensure_future(hub.watch(READER, {"Watch": first["Watch"], "Seen": 2}))
    assert await pushing == [OTHER]
    assert (hub.watches, hub.unacknowledged) == (1, 1)
    with pytest.raises(LookupError):  # the late watch is gone: its worker must watch anew
        await hub.watch(OTHER, {"Watch": second["Watch"], "Seen": 2})
    ack.cancel()
    await asyncio.gather(ack, return_exceptions=True)
    assert hub.watches == 0  # a poll whose connection went away takes its watch with it


async def test_reported_reads_are_resolved_against_the_snapshot_they_were_served_from() -> None:
    """Reads served before an invalidation are handed on with the snapshot of their time."""
    world = World()
    hub = world.hub
    watch = (await hub.watch(READER, {"Watch": 0}))["Watch"]
    world.snapshot = "index-2"
    await hub.invalidate(0.05)  # nobody polls: late, dropped
    watch = (await hub.watch(READER, {"Watch": 0, "Replaces": watch}))["Watch"]
    counts = [["secretsmanager.get_secret_value", {"SecretId": "db"}, 3]]
    answer = await hub.watch(
        READER, {"Watch": watch, "Seen": 1, "Reads": {"Seq": 1, "Counts": counts}}
    )
    assert answer == {"Seq": 2}  # behind: answered at once
    assert world.reports == [(READER.function_arn, "index-1", counts)]


async def test_bad_polls_are_refused() -> None:
    """Malformed polls, and another function's watch, are refused without changing anything."""
    hub = World().hub
    watch = (await hub.watch(READER, {"Watch": 0}))["Watch"]
    for args in ({"Watch": "1"}, {"Watch": watch, "Seen": 99}, {"Watch": watch, "Seen": -1}):
        with pytest.raises(ValueError, match="Watch and Seen"):
            await hub.watch(READER, args)
    with pytest.raises(LookupError):
        await hub.watch(OTHER, {"Watch": watch, "Seen": 1})
    assert hub.watches == 1


async def test_only_the_current_and_previous_snapshots_are_kept() -> None:
    """Each snapshot is a whole index of answers: older ones are let go, and can't resolve reads.

    A report can only name the current or the previous invalidation (a watch further behind
    was dropped and its worker restarted), so a snapshot older than that is memory for nothing.
    """
    world = World()
    hub = world.hub
    for n in (2, 3, 4):
        world.snapshot = f"index-{n}"
        await hub.invalidate(0.01)  # no watch to wait for
    watch = (await hub.watch(READER, {"Watch": 0}))["Watch"]
    counts = [["secretsmanager.get_secret_value", {"SecretId": "db"}, 1]]
    for seq in (2, 3, 4):
        await hub.watch(
            READER, {"Watch": watch, "Seen": 3, "Reads": {"Seq": seq, "Counts": counts}}
        )
    assert [snap for _who, snap, _counts in world.reports] == ["index-3", "index-4"]
