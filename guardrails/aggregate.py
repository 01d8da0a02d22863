"""The one place where scanner results become decisions.

``decide``: any block wins, then redact, then warn; a scanner that failed already carries its ``on_error`` decision,
so an error blocks unless the policy said ``on_error: allow``. ``merge_results`` folds the results one scanner gave
for several texts (the turns of a request, the windows of a stream) into one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from guardrails.types import Decision, ScanResult, Status

__all__ = ["decide", "merge_results"]

_STATUS_ORDER = {Status.OK: 0, Status.SKIPPED: 0, Status.ERROR: 2, Status.TIMEOUT: 1}


def decide(results: Iterable[ScanResult]) -> Decision:
    """The stage decision: the most severe decision among ``results`` (allow when there are none)."""
    return Decision.worst(r.decision for r in results)


def merge_results(results: Sequence[ScanResult], *, duration_ms: float | None = None) -> ScanResult:
    """One result from several of the same scanner: worst decision, highest score, every finding, in order."""
    if len(results) == 1 and duration_ms is None:
        return results[0]
    first = results[0]
    reasons = list(dict.fromkeys(r.reason for r in results if r.reason))
    return ScanResult(
        scanner_id=first.scanner_id,
        decision=decide(results),
        score=max(r.score for r in results),
        categories=tuple(dict.fromkeys(c for r in results for c in r.categories)),
        findings=tuple(f for r in results for f in r.findings),
        reason="; ".join(reasons),
        status=max((r.status for r in results), key=_STATUS_ORDER.__getitem__),
        duration_ms=sum(r.duration_ms for r in results) if duration_ms is None else duration_ms,
    )
