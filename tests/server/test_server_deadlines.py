"""server.deadlines: TimeoutError after the deadline (within the resolution), nothing otherwise."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.deadlines import Deadlines


def run(coro):
    return asyncio.run(coro)


def test_a_slow_wait_times_out_within_the_resolution():
    async def main():
        deadlines = Deadlines(resolution=0.02)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            async with deadlines.within(0.2):
                await asyncio.sleep(5)
        return time.monotonic() - start

    elapsed = run(main())
    assert 0.2 <= elapsed < 1.0


def test_a_wait_that_finishes_in_time_leaves_no_cancellation_behind():
    async def main():
        deadlines = Deadlines(resolution=0.01)
        for _ in range(20):
            async with deadlines.within(0.05):
                await asyncio.sleep(0)
        await asyncio.sleep(0.2)  # several ticks past every deadline: nothing may cancel this task now
        assert asyncio.current_task().cancelling() == 0
        await asyncio.sleep(0.05)
        return deadlines._ticker

    assert run(main()) is None  # no waits left: the timer stopped


def test_a_cancel_from_outside_stays_a_cancel():
    async def main():
        deadlines = Deadlines(resolution=0.01)

        async def victim():
            async with deadlines.within(10):
                await asyncio.sleep(5)

        task = asyncio.create_task(victim())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())


def test_many_concurrent_waits_time_out_independently():
    async def main():
        deadlines = Deadlines(resolution=0.01)

        async def wait(seconds, work):
            try:
                async with deadlines.within(seconds):
                    await asyncio.sleep(work)
                return "done"
            except TimeoutError:
                return "timeout"

        return await asyncio.gather(*(wait(0.1, 0.3 if i % 2 else 0.01) for i in range(20)))

    results = run(main())
    assert results == ["done" if i % 2 == 0 else "timeout" for i in range(20)]


def test_resolution_must_be_positive():
    with pytest.raises(ValueError):
        Deadlines(resolution=0)


def test_a_ticker_left_on_an_ended_loop_does_not_stop_the_next_loop():
    deadlines = Deadlines(resolution=0.01)

    async def quick():
        async with deadlines.within(10):
            await asyncio.sleep(0)

    asyncio.run(quick())  # the wait ended, but the ticker (due in 10 ms) was still armed when the loop closed
    assert deadlines._ticker is not None

    async def slow():
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            async with deadlines.within(0.05):
                await asyncio.sleep(3)
        return time.monotonic() - start

    assert run(slow()) < 1.0
