"""Pattern matching over an input's views, bounded in time, shared by the regex and secrets scanners."""

from __future__ import annotations

import time
from collections.abc import Sequence

import regex

from guardrails.scanners.base import ScanInput
from guardrails.types import Finding

__all__ = ["Rule", "find", "complete", "compile_pattern"]

Rule = tuple[str, "regex.Pattern[str]", str]  # (rule id, compiled pattern, category)


def compile_pattern(pattern: str, *, ignore_case: bool) -> regex.Pattern[str]:
    """Compile with the ``regex`` module (which supports match timeouts); raises ValueError with the reason."""
    try:
        return regex.compile(pattern, flags=regex.IGNORECASE if ignore_case else 0)
    except regex.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None


def find(rules: Sequence[Rule], item: ScanInput, *, all_views: bool, deadline: float) -> list[Finding]:
    """Every match of ``rules`` in ``item`` (its raw text, or every view), as findings with raw-text spans.

    Raises TimeoutError once ``deadline`` (a ``time.monotonic()`` value) passes, even inside one match.
    A match in a derived view that maps to a span already found in an earlier view is not reported twice.
    For a ``partial`` item (a streaming window), a raw match cut short by the end of the text is reported with
    view ``"partial"``; callers score only the others (see :func:`complete`).
    """
    findings: list[Finding] = []
    seen: set[tuple[str, tuple[int, int]]] = set()
    for view in item.views if all_views else item.views[:1]:
        for rule_id, pattern, _category in rules:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("pattern matching ran past the scanner's timeout")
            partial = item.partial and view.kind == "raw"
            for match in pattern.finditer(view.text, timeout=remaining, partial=partial):
                if partial and match.partial:
                    if match.end() > match.start():
                        findings.append(
                            Finding(rule=rule_id, message_index=item.index, span=match.span(), view="partial")
                        )
                    continue
                span = view.raw_span(*match.span())
                if (rule_id, span) in seen:
                    continue
                seen.add((rule_id, span))
                findings.append(Finding(rule=rule_id, message_index=item.index, span=span, view=view.kind))
    return findings


def complete(findings: list[Finding]) -> list[Finding]:
    """The findings that are whole matches (not cut short by the end of a streaming window)."""
    return [f for f in findings if f.view != "partial"]
