"""Run the async core from synchronous code, including code that is itself called inside a running event loop.

Each thread that calls the sync API gets one private event loop, reused across calls (starting a loop per call, as
``asyncio.run`` does, costs more than the whole pipeline; ``asyncio.Runner.run`` re-installs a SIGINT handler on every
call, which costs ~30 us). A sync call made while an event loop is already running in
the calling thread (a Jupyter cell, an async web handler calling a sync library) cannot block that loop from inside
it, so the coroutine runs on a worker thread with its own private loop and the caller waits for it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["run_sync", "iterate_sync", "in_running_loop"]

T = TypeVar("T")

_local = threading.local()
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


class _ThreadLoop:
    """One thread's private event loop; closed (pending tasks cancelled) when the thread's locals are torn down."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def __del__(self) -> None:
        loop = self.loop
        if loop.is_closed():
            return
        try:
            # Garbage collection can run this inside another loop, where this one cannot be driven: just close it.
            if not in_running_loop():
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
        except Exception:  # noqa: BLE001 - interpreter shutdown; nothing left to report to
            pass
        finally:
            loop.close()


def _runner() -> _ThreadLoop:
    runner = getattr(_local, "runner", None)
    if runner is None:
        runner = _local.runner = _ThreadLoop()
    return runner


def in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _worker_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="guardrails-sync")
        return _pool


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion and return its result, whether or not a loop runs in this thread."""
    if not in_running_loop():
        return _runner().run(coro)
    return _worker_pool().submit(lambda: _runner().run(coro)).result()


def iterate_sync(agen: AsyncIterator[T]) -> Iterator[T]:
    """Drive an async iterator from sync code, one item per step, always on the same loop.

    Closing the returned generator (``break``, garbage collection) closes ``agen`` on its loop.
    """
    if in_running_loop():
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guardrails-stream")

        def step(coro: Coroutine[Any, Any, Any]) -> Any:
            return executor.submit(lambda: _runner().run(coro)).result()

    else:
        runner = _runner()
        executor = None
        step = runner.run
    try:
        while True:
            try:
                yield step(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            step(aclose())
        if executor is not None:
            executor.shutdown(wait=False)
