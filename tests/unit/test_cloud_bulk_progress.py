"""Progress of `start-bulk-deployment --wait`: a line rewritten on a TTY, plain lines elsewhere."""

from __future__ import annotations

import asyncio
import io
import os

from edge.cloud.bulk import api
from edge.cloud.bulk.memory import MemoryBulkStore
from edge.cloud.bulk.progress import (
    ProgressWriter,
    RateMeter,
    Snapshot,
    duration,
    render,
    snapshot,
    watch,
)
from edge.cloud.bulk.state import BulkEvent, BulkState
from edge.cloud.bulk.store import Tally
from edge.cloud.ids import Arns


def snap(state: BulkState = BulkState.RUNNING, **kw: object) -> Snapshot:
    values: dict[str, object] = {
        "total": 5000,
        "succeeded": 1200,
        "failed": 3,
        "in_flight": 40,
        "invalid": 2,
        "rate": 85.0,
    }
    return Snapshot(state, **(values | kw))


def test_the_line_shows_counts_rate_and_eta() -> None:
    assert render(snap()) == (
        "Running 1,200/5,000 done, 3 failed, 40 in flight, 2 invalid, 85.0/s, ETA 45s"
    )
    assert render(snap(rate=None, invalid=0)) == "Running 1,200/5,000 done, 3 failed, 40 in flight"
    final = render(snap(BulkState.COMPLETED, succeeded=4995, in_flight=0))
    assert final == "Completed 4,995/5,000 done, 3 failed, 0 in flight, 2 invalid, 85.0/s"


def test_durations() -> None:
    assert [duration(s) for s in (0, 42.4, 185, 7620)] == ["0s", "42s", "3m05s", "2h07m"]


def test_the_rate_is_measured_over_a_recent_window() -> None:
    meter = RateMeter(window=10)
    assert meter.add(0.0, 0) is None
    assert meter.add(0.5, 10) is None  # under a second: no figure yet
    assert meter.add(2.0, 40) == 20.0
    for t in range(3, 30):
        meter.add(float(t), 40 + (t - 2) * 5)
    assert meter.add(30.0, 180) == 5.0  # the early burst has left the window


def test_on_a_tty_one_line_is_rewritten_in_place() -> None:
    out = io.StringIO()
    writer = ProgressWriter(out, tty=True, width=lambda: 40)
    writer.show(snap())
    writer.show(snap(succeeded=1300))
    writer.show(snap(BulkState.COMPLETED, succeeded=4995, in_flight=0))
    text = out.getvalue()
    assert text.count("\n") == 1
    assert text.endswith("\n")
    pieces = text.rstrip("\n").split("\r")[1:]
    assert len(pieces) == 3
    assert all(p.endswith("\x1b[K") for p in pieces)
    assert all(len(p.removesuffix("\x1b[K")) <= 39 for p in pieces)  # never wraps
    assert pieces[-1].startswith("Completed 4,995/5,000")


def test_off_a_tty_plain_lines_at_most_every_few_seconds() -> None:
    """Changes within five seconds of the last line wait; the final state always prints."""
    now = [0.0]
    out = io.StringIO()
    writer = ProgressWriter(out, tty=False, clock=lambda: now[0])
    writer.show(snap(succeeded=1))
    now[0] = 1.0
    writer.show(snap(succeeded=2))  # too soon
    now[0] = 6.0
    writer.show(snap(succeeded=3))
    writer.show(snap(succeeded=3))
    now[0] = 12.0
    writer.show(snap(succeeded=3))  # unchanged
    now[0] = 13.0
    writer.show(snap(BulkState.STOPPED, succeeded=4))
    lines = out.getvalue().splitlines()
    assert [line.split(" ")[:2] for line in lines] == [
        ["Running", "1/5,000"],
        ["Running", "3/5,000"],
        ["Stopped", "4/5,000"],
    ]
    assert "\r" not in out.getvalue()
    assert "\x1b" not in out.getvalue()


def test_a_pipe_gets_plain_lines() -> None:
    """Without `tty=`, the stream is asked: a pipe is not a terminal."""
    read, write = os.pipe()
    with os.fdopen(read) as r, os.fdopen(write, "w") as w:
        ProgressWriter(w).show(snap(BulkState.COMPLETED))
        w.close()
        assert r.read() == "Completed 1,200/5,000 done, 3 failed, 40 in flight, 2 invalid, 85.0/s\n"


def test_a_snapshot_of_a_tally() -> None:
    tally = Tally(pending=10, unconfirmed=2, created=30, invalid=3, succeeded=20, failed=4)
    bulk = api.new_bulk_deployment(
        api.start_request(
            {"ExecutionRoleArn": "arn:aws:iam::123456789012:role/r", "InputFileUri": "s3://b/k"}
        ),
        Arns("us-east-1", "123456789012"),
    )
    shot = snapshot(bulk, tally, 2.0)
    assert (shot.total, shot.succeeded, shot.failed, shot.in_flight, shot.invalid) == (
        45,
        20,
        4,
        8,
        3,
    )
    assert shot.remaining == 18


async def test_watch_follows_a_bulk_deployment_to_its_end() -> None:
    store = MemoryBulkStore()
    request = api.start_request(
        {"ExecutionRoleArn": "arn:aws:iam::123456789012:role/r", "InputFileUri": "s3://b/k"}
    )
    bulk = api.new_bulk_deployment(request, Arns("us-east-1", "123456789012"))
    await store.create(bulk)
    out = io.StringIO()
    ticks = [0]

    async def sleep(_seconds: float) -> None:
        ticks[0] += 1
        if ticks[0] == 2:
            await store.transition(bulk.id, None, BulkEvent.STOP)
        if ticks[0] == 3:
            assert await store.acquire(bulk.id, "a", 30) is not None
            await store.transition(bulk.id, "a", BulkEvent.HALTED)
        await asyncio.sleep(0)

    ended = await watch(store, bulk.id, ProgressWriter(out, tty=True), sleep=sleep)
    assert ended.state is BulkState.STOPPED
    assert out.getvalue().split("\r")[-1].startswith("Stopped 0/0 done")
