"""cancel_and_wait ends a task even when the task's code swallows a cancellation (as
asyncio.wait_for can on Python 3.11 while psycopg_pool hands out a connection)."""

from __future__ import annotations

import asyncio

from oban_pro._aio import cancel_and_wait


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again_until_it_ends():
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # goes on as if nothing happened
        await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task), timeout=10)
    assert swallowed.is_set() and task.cancelled()


async def test_a_task_that_fails_while_stopping_is_reaped_without_a_warning():
    async def failing() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            raise ValueError("while stopping")

    task = asyncio.create_task(failing())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert isinstance(task.exception(), ValueError)
