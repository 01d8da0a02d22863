"""Moderating a streamed response as it arrives.

The pipeline passes every chunk through an :class:`OutputHook`: ``feed`` returns the text that is safe to send now,
``finish`` the rest once the stream ends, and ``verdict`` the output stage's verdict over everything scanned so far.
A hook that finds a block stops releasing text; the pipeline then ends the stream with the refusal.

:class:`WindowedModeration` (the default) releases text only after the output scanners have seen it: it scans each
``check_every`` characters of new text together with the last ``overlap`` released characters (context across the
window edge), and holds back the last ``holdback`` characters of every window so a pattern still being written is
rescanned whole with the next window. Scanners that can tell (the regex and secrets scanners, through the ``regex``
module's partial matching) also report a match that the window's end cuts short, and the text from its start stays
held until the match completes or fails, however long it is (a private key block, a token). Each character is
scanned a bounded number of times while nothing is held, so guard work grows linearly with the response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Protocol

from guardrails.aggregate import decide, merge_results
from guardrails.redaction import Span, redact
from guardrails.types import Decision, ScanResult, Stage, Verdict

__all__ = ["OutputHook", "WindowedModeration", "ScanWindow"]

# Scans one window of the response: (window text, offset of the window in the response, more text may follow,
# index in the window where unreleased text starts) -> (verdict, spans to redact, where a match cut short by the
# window's end starts); positions are response indexes.
ScanWindow = Callable[[str, int, bool, int], Awaitable[tuple[Verdict, list[Span], int | None]]]


class OutputHook(Protocol):
    blocked: bool  # set once the hook has found a block; it then releases nothing more

    async def feed(self, chunk: str) -> str: ...

    async def finish(self) -> str: ...

    @property
    def verdict(self) -> Verdict: ...


class WindowedModeration:
    """Scan-before-release moderation in sliding windows (see the module docstring)."""

    def __init__(
        self, scan: ScanWindow, *, check_every: int, overlap: int, holdback: int, max_held: int, enforced: bool
    ) -> None:
        self._scan = scan
        self._check_every = check_every
        self._overlap = overlap
        self._holdback = holdback
        self._max_held = max_held
        self._fresh = 0  # characters received since the last scan
        self._enforced = enforced
        self._pending = ""  # received, not yet released
        self._tail = ""  # the last `overlap` released characters
        self._offset = 0  # response index of the first pending character
        self._results: dict[str, list[ScanResult]] = {}
        self._order: list[str] = []
        self._scanned = False
        self.scanned_chars = 0  # total length of the windows scanned: guard work, for metrics
        self.blocked = False

    async def feed(self, chunk: str) -> str:
        if self.blocked:
            return ""
        self._pending += chunk
        self._fresh += len(chunk)
        if self._fresh < self._check_every:
            return ""
        return await self._check(final=False)

    async def finish(self) -> str:
        if self.blocked or (self._scanned and not self._pending):
            return ""
        return await self._check(final=True)

    async def _check(self, *, final: bool) -> str:
        window = self._tail + self._pending
        self.scanned_chars += len(window)
        verdict, spans, hold_from = await self._scan(window, self._offset - len(self._tail), not final, len(self._tail))
        self._scanned = True
        self._fresh = 0
        for result in verdict.results:
            if result.scanner_id not in self._results:
                self._order.append(result.scanner_id)
            findings = tuple(f for f in result.findings if f.view != "partial")
            self._results.setdefault(result.scanner_id, []).append(replace(result, findings=findings))
        if verdict.effective is Decision.BLOCK:
            self.blocked = True
            return ""
        # Spans arrive in response coordinates; make them relative to the pending text.
        pending_spans = [(max(s - self._offset, 0), e - self._offset, r) for s, e, r in spans if e > self._offset]
        cut = len(self._pending) if final else len(self._pending) - self._holdback
        if hold_from is not None and not final:
            # A match still being written stays unreleased, up to max_held characters (which bounds rescanning).
            cut = min(cut, max(hold_from - self._offset, len(self._pending) - self._max_held, 0))
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
