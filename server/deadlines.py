"""Timeouts for many short waits, checked by one periodic timer instead of one loop timer per wait.

``asyncio.timeout`` arms a loop timer on entry and cancels it on exit: about 6 us of CPU per use with uvloop, spent
once per proxied request and once per streamed chunk. :class:`Deadlines` keeps the waits in a dict and one timer,
running only while there are waits, looks at them every ``resolution`` seconds and cancels the tasks whose deadline
has passed; their ``async with`` block then raises ``TimeoutError``, as with ``asyncio.timeout`` (about 1 us per
use). A timeout fires up to ``resolution`` seconds late.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["Deadlines"]


class Deadlines:
    """``async with deadlines.within(seconds): ...`` raises ``TimeoutError`` once ``seconds`` have passed."""

    def __init__(self, resolution: float = 0.05) -> None:
        if resolution <= 0:
            raise ValueError("resolution must be positive")
        self.resolution = resolution
        self._waits: dict[_Wait, None] = {}  # insertion-ordered set
        self._ticker: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the ticker's

    def within(self, seconds: float) -> _Wait:
        return _Wait(self, seconds)

    def _add(self, wait: _Wait, loop: asyncio.AbstractEventLoop) -> None:
        self._waits[wait] = None
        if self._ticker is None or self._loop is not loop:  # not running, or left behind on a loop that ended
            self._waits = {w: None for w in self._waits if w.task.get_loop() is loop}
            self._loop = loop
            self._ticker = loop.call_later(self.resolution, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for wait in list(self._waits):
            if wait.deadline <= now and not wait.expired:
                wait.expired = True
                wait.task.cancel()
        self._ticker = loop.call_later(self.resolution, self._tick, loop) if self._waits else None


class _Wait:
    __slots__ = ("deadlines", "seconds", "task", "deadline", "cancelling", "expired")

    def __init__(self, deadlines: Deadlines, seconds: float) -> None:
        self.deadlines = deadlines
        self.seconds = seconds
        self.expired = False

    async def __aenter__(self) -> _Wait:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadlines.within() must be used inside a task")
        loop = task.get_loop()
        self.task = task
        self.deadline = loop.time() + self.seconds
        self.cancelling = task.cancelling()
        self.deadlines._add(self, loop)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deadlines._waits.pop(self, None)
        # Ours only if nobody else asked to cancel the task meanwhile (as asyncio.timeout decides).
        if self.expired and self.task.uncancel() <= self.cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
