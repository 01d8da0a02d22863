"""Replacing spans of text."""

from __future__ import annotations

__all__ = ["Span", "redact"]

Span = tuple[int, int, str]  # (start, end, replacement)


def redact(text: str, spans: list[Span]) -> str:
    """``text`` with each span replaced. Overlapping spans merge, keeping the first span's replacement."""
    if not spans:
        return text
    merged: list[list] = []
    for start, end, replacement in sorted(spans, key=lambda s: (s[0], -s[1])):
        start, end = max(start, 0), min(end, len(text))
        if start >= end and replacement == "":
            continue
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end, replacement])
    parts = []
    at = 0
    for start, end, replacement in merged:
        parts.append(text[at:start])
        parts.append(replacement)
        at = end
    parts.append(text[at:])
    return "".join(parts)
