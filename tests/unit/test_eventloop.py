"""Stopping the core's tasks: a cancellation Python loses is sent again."""

from __future__ import annotations

import asyncio

from edge.eventloop import cancel_until_done


async def test_a_task_whose_cancellation_was_lost_is_cancelled_again() -> None:
    """The race aiomqtt's acknowledgements run into at a stop, caused for real.

    On Python 3.11 `asyncio.wait_for` returns the result of a future completed in the same turn
    of the loop as the task's cancellation, so the task goes on to its next wait; a stop that
    cancels once would then wait forever.
    """
    acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting = asyncio.Event()

    async def session() -> None:
        waiting.set()
        await asyncio.wait_for(acknowledged, 60)
        await asyncio.Event().wait()

    task = asyncio.create_task(session())
    await waiting.wait()
    await asyncio.sleep(0)  # one turn: the task is inside wait_for now
    acknowledged.set_result(None)
    async with asyncio.timeout(5):
        await cancel_until_done([task], every=0.05)
    assert task.cancelled()


async def test_tasks_already_ended_are_left_alone() -> None:
    """A task that finished keeps its result; the stop returns at once."""

    async def finished() -> int:
        return 7

    task = asyncio.create_task(finished())
    await task
    async with asyncio.timeout(1):
        await cancel_until_done([task])
    assert task.result() == 7
