"""A one-shot child's exchange leaves the core's descriptors as it found them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.fixtures.core import source_env

#: Runs exchanges with a child on the named event loop, in a process strace can watch.
EXCHANGES = """
import asyncio, sys
import structlog
from edge.eventloop import choose_event_loop
from edge.oneshot.run import OneShot

async def main() -> None:
    for i in range(3):
        child = OneShot("tests.support.echo_child", name="echo")
        deadline = asyncio.get_running_loop().time() + 30
        answer = await child.exchange({"i": i}, deadline=deadline, log=structlog.get_logger())
        assert answer == {"result": {"i": i}}, answer

choose_event_loop(sys.argv[1]).run(main())
"""


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_every_descriptor_an_exchange_used_is_closed_once(tmp_path: Path, loop: str) -> None:
    """No second close: it would land on whatever another thread opened under that number.

    uvloop's pipe transport has libuv close a pipe's descriptor and then closes the pipe's file
    object too; a core that wrote its token file in a thread at that moment lost it (EBADF).
    strace sees every close(2) of the process, its threads and its children.
    """
    trace = tmp_path / "trace"
    done = subprocess.run(
        [
            "strace",
            "-f",
            "-e",
            "trace=close",
            "-o",
            str(trace),
            sys.executable,
            "-c",
            EXCHANGES,
            loop,
        ],
        env=source_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    closes = [line for line in trace.read_text().splitlines() if " close(" in line]
    assert closes, "strace saw no close at all"
    assert [line for line in closes if "EBADF" in line] == []
