"""Audit records: what is recorded for a request, with content as private as the policy says, and the hash chain.

A record is a JSON object with stable keys (``v`` is the format version):

``request_id``, ``time`` (UTC, ISO 8601), ``tenant`` (the route), ``policy`` {name, hash}, ``decision`` (what was
enforced), ``stage`` (the stage that decided), ``flags`` (why it was recorded: block, redact, warn, error, timeout,
shadow), ``reason``, ``latency_ms``, ``results`` (every scanner: stage, scanner id, decision, score, categories,
findings, status, duration, enforced), ``metadata`` (the caller's keys the policy allows) and ``content``:

- ``hash``: each message's role, SHA-256 and length; the response's likewise; decoded excerpts hashed too;
- ``redacted``: the text with credentials and every matched span masked (``[MASKED:rule]``);
- ``full``: the text as received and as generated.

Each stored record is chained: ``hash = H(prev_hash, seq, record_json)`` with H = SHA-256, or HMAC-SHA256 when the
policy names a key, so editing, deleting or reordering a record breaks the chain from that record on.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import regex

from guardrails.audit.settings import AuditSettings
from guardrails.redaction import Span, redact
from guardrails.types import Decision, Finding, Message, Result, Stage, Status, Verdict

__all__ = ["Entry", "should_record", "canonical", "chain_hash", "GENESIS", "utc_iso"]

GENESIS = "0" * 64
FORMAT_VERSION = 1
_METADATA_MAX = 256


def canonical(record: dict[str, Any]) -> str:
    """The exact text that is stored and hashed."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, seq: int, text: str, key: bytes | None = None) -> str:
    payload = f"{prev_hash}\n{seq}\n{text}".encode()
    if key is not None:
        return hmac.new(key, payload, hashlib.sha256).hexdigest()
    return hashlib.sha256(payload).hexdigest()


def utc_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _flags(result: Result) -> list[str]:
    flags: set[str] = set()
    if result.decision is not Decision.ALLOW:
        flags.add(result.decision.value)
    for verdict in result.verdicts:
        if not verdict.enforced and verdict.decision is not Decision.ALLOW:
            flags.add("shadow")
        for r in verdict.results:
            if r.status in (Status.ERROR, Status.TIMEOUT):
                flags.add(r.status.value)
    return sorted(flags)


def should_record(result: Result, settings: AuditSettings) -> bool:
    if settings.record == "none":
        return False
    return settings.record == "all" or bool(_flags(result))


def _deciding_stage(result: Result) -> Stage | None:
    if result.decision is not Decision.ALLOW:
        return next((v.stage for v in result.verdicts if v.effective is result.decision), None)
    return next((v.stage for v in result.verdicts if v.decision is not Decision.ALLOW or v.errors), None)


@lru_cache(maxsize=1)
def _secret_patterns() -> list[tuple[str, regex.Pattern[str]]]:
    from guardrails.scanners.secrets import PATTERNS

    return [(kind, regex.compile(pattern)) for kind, pattern in PATTERNS.items()]


def _mask(text: str, spans: list[Span]) -> str:
    """``text`` with the given spans and every credential found in it masked."""
    masked = list(spans)
    for kind, pattern in _secret_patterns():
        masked.extend((m.start(), m.end(), f"[MASKED:{kind}]") for m in pattern.finditer(text, timeout=1.0))
    return redact(text, masked)


def _digest(text: str) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(), "length": len(text)}


@dataclass(slots=True)
class Entry:
    """A request to record, as the pipeline hands it over; the record itself is built off the request path."""

    result: Result
    received: tuple[Message, ...]  # the messages as the caller sent them, before any redaction
    response: str | None  # the response as generated, before redaction; None when nothing was generated
    settings: AuditSettings
    time: float = field(default_factory=time.time)
    _record: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        if self._record is None:
            self._record = self._build()
        return self._record

    def _content(self, text: str, role: str, spans: list[Span]) -> dict[str, Any]:
        privacy = self.settings.privacy
        if privacy == "full":
            return {"role": role, "text": text}
        if privacy == "redacted":
            return {"role": role, "text": _mask(text, spans)}
        return {"role": role, **_digest(text)}

    def _excerpt(self, excerpt: str | None) -> Any:
        if excerpt is None or self.settings.privacy == "full":
            return excerpt
        if self.settings.privacy == "redacted":
            return _mask(excerpt, [])
        return "sha256:" + _digest(excerpt)["sha256"]

    def _finding(self, finding: Finding) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": finding.rule, "view": finding.view}
        if finding.message_index is not None:
            out["message_index"] = finding.message_index
        if finding.span is not None:
            out["span"] = list(finding.span)
        if finding.line is not None:
            out["line"] = finding.line
        if finding.detail:
            out["detail"] = finding.detail
        if finding.excerpt is not None:
            out["excerpt"] = self._excerpt(finding.excerpt)
        return out

    def _results(self, verdict: Verdict) -> list[dict[str, Any]]:
        return [
            {
                "stage": verdict.stage.value,
                "scanner": r.scanner_id,
                "decision": r.decision.value,
                "score": round(r.score, 6),
                "categories": list(r.categories),
                "findings": [self._finding(f) for f in r.findings if f.view != "partial"],
                "reason": r.reason,
                "status": r.status.value,
                "duration_ms": round(r.duration_ms, 3),
                "enforced": verdict.enforced,
            }
            for r in verdict.results
        ]

    def _spans(self) -> dict[int | None, list[Span]]:
        spans: dict[int | None, list[Span]] = {}
        for verdict in self.result.verdicts:
            for r in verdict.results:
                for f in r.findings:
                    if f.span is not None and f.view != "partial":
                        spans.setdefault(f.message_index, []).append((*f.span, f"[MASKED:{f.rule}]"))
        return spans

    def _build(self) -> dict[str, Any]:
        result = self.result
        spans = self._spans() if self.settings.privacy == "redacted" else {}
        stage = _deciding_stage(result)
        allowed = self.settings.metadata
        return {
            "v": FORMAT_VERSION,
            "request_id": result.request_id,
            "time": utc_iso(self.time),
            "tenant": result.route,
            "policy": {"name": result.policy_name, "hash": result.policy_hash},
            "decision": result.decision.value,
            "stage": stage.value if stage else None,
            "flags": _flags(result),
            "reason": result.reason,
            "latency_ms": round(result.duration_ms, 3),
            "results": [r for v in result.verdicts for r in self._results(v)],
            "metadata": {k: str(result.metadata[k])[:_METADATA_MAX] for k in allowed if k in result.metadata},
            "content": {
                "privacy": self.settings.privacy,
                "messages": [
                    self._content(m.content, m.role.value, spans.get(i, [])) for i, m in enumerate(self.received)
                ],
                "response": None
                if self.response is None
                else self._content(self.response, "assistant", spans.get(len(self.received), [])),
            },
        }
