"""Moderating a streamed response as it arrives.

The pipeline passes every chunk through an :class:`OutputHook`: ``feed`` returns the text that is safe to send now,
``finish`` the rest once the stream ends, and ``verdict`` the output stage's verdict over everything scanned so far.
A hook that finds a block stops releasing text; the pipeline then ends the stream with the refusal.

:class:`WindowedModeration` (the default) releases text only after the output scanners have seen it: it scans each
``check_every`` characters of new text together with the last ``overlap`` released characters (context across the
window edge), and holds back the last ``holdback`` characters of every window so a pattern still being written is
rescanned whole with the next window. Each character is scanned a bounded number of times, so guard work grows
linearly with the length of the response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from guardrails.aggregate import decide, merge_results
from guardrails.redaction import Span, redact
from guardrails.types import Decision, ScanResult, Stage, Verdict

__all__ = ["OutputHook", "WindowedModeration", "ScanWindow"]

# Scans one window of the response: (window text, offset of the window in the response) -> (verdict, spans to redact)
ScanWindow = Callable[[str, int], Awaitable[tuple[Verdict, list[Span]]]]


class OutputHook(Protocol):
    async def feed(self, chunk: str) -> str: ...

    async def finish(self) -> str: ...

    @property
    def verdict(self) -> Verdict: ...


class WindowedModeration:
    """Scan-before-release moderation in sliding windows (see the module docstring)."""

    def __init__(self, scan: ScanWindow, *, check_every: int, overlap: int, holdback: int, enforced: bool) -> None:
        self._scan = scan
        self._check_every = check_every
        self._overlap = overlap
        self._holdback = holdback
        self._enforced = enforced
        self._pending = ""  # received, not yet released
        self._tail = ""  # the last `overlap` released characters
        self._offset = 0  # response index of the first pending character
        self._results: dict[str, list[ScanResult]] = {}
        self._order: list[str] = []
        self._scanned = False
        self.blocked = False

    async def feed(self, chunk: str) -> str:
        if self.blocked:
            return ""
        self._pending += chunk
        if len(self._pending) < self._check_every + self._holdback:
            return ""
        return await self._check(final=False)

    async def finish(self) -> str:
        if self.blocked or (self._scanned and not self._pending):
            return ""
        return await self._check(final=True)

    async def _check(self, *, final: bool) -> str:
        window = self._tail + self._pending
        verdict, spans = await self._scan(window, self._offset - len(self._tail))
        self._scanned = True
        for result in verdict.results:
            if result.scanner_id not in self._results:
                self._order.append(result.scanner_id)
            self._results.setdefault(result.scanner_id, []).append(result)
        if verdict.effective is Decision.BLOCK:
            self.blocked = True
            return ""
        # Spans arrive in response coordinates; make them relative to the pending text.
        pending_spans = [(max(s - self._offset, 0), e - self._offset, r) for s, e, r in spans if e > self._offset]
        cut = len(self._pending) if final else len(self._pending) - self._holdback
        for start, end, _ in pending_spans:
            if start < cut < end:
                cut = start  # never release part of a span that is to be redacted
        released = self._pending[:cut]
        out = redact(released, [(s, e, r) for s, e, r in pending_spans if e <= cut])
        self._tail = (self._tail + released)[-self._overlap :] if self._overlap else ""
        self._offset += cut
        self._pending = self._pending[cut:]
        return out

    @property
    def verdict(self) -> Verdict:
        results = tuple(merge_results(self._results[sid]) for sid in self._order)
        return Verdict(Stage.OUTPUT, decide(results), results, self._enforced)
