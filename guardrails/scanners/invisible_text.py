"""Invisible-text scanner: Unicode tag characters, variation-selector payloads, bidi overrides, zero-width characters.

What each kind scores (the highest present wins):

- ``tags`` (U+E0000-E007F) 1.0: invisible ASCII that models read ("ASCII smuggling"); the payload is decoded into
  the finding's excerpt and, for other scanners, into a ``hidden`` view of the text;
- ``variation_selectors`` 1.0: two or more in a row carry one byte each (emoji smuggling), decoded likewise;
- ``bidi`` 0.9: embedding, override and isolate controls reorder what people see (Trojan Source);
- ``zero_width`` 0.5: zero-width spaces and joiners inside text split words so filters miss them.

False positives: a zero-width joiner between emoji and one variation selector after a visible character are
ordinary emoji spelling and are ignored; ZWNJ is also legitimate in Persian and Indic scripts (hence its low score,
under the default threshold). Redaction deletes the invisible characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from guardrails.normalize import hidden_runs
from guardrails.scanners.base import ScanInput, Scanner, ScannerConfig
from guardrails.scanners.registry import register
from guardrails.types import Finding, ScanResult

__all__ = ["InvisibleTextScanner", "InvisibleTextConfig"]

SCORES = {"tags": 1.0, "variation_selectors": 1.0, "bidi": 0.9, "zero_width": 0.5}


class InvisibleTextConfig(ScannerConfig):
    type: Literal["invisible_text"]
    threshold: float = Field(default=0.8, ge=0.0, le=1.0, description="Default blocks tags, payloads and bidi.")


@register
class InvisibleTextScanner(Scanner):
    config_model = InvisibleTextConfig

    async def scan(self, batch: Sequence[ScanInput]) -> list[ScanResult]:
        out = []
        for item in batch:
            if item.text.isascii():
                out.append(self.result(item, score=0.0))
                continue
            runs = hidden_runs(item.text)
            findings = [
                Finding(
                    rule=run.kind,
                    message_index=item.index,
                    span=(run.start, run.end),
                    detail=f"{run.end - run.start} invisible characters"
                    + (f", decoding to {len(run.decoded)} characters" if run.decoded else ""),
                    excerpt=run.decoded or None,
                )
                for run in runs
            ]
            kinds = sorted({run.kind for run in runs})
            score = max((SCORES[k] for k in kinds), default=0.0)
            reason = f"invisible characters: {', '.join(kinds)}" if kinds else ""
            out.append(self.result(item, score=score, findings=findings, categories=kinds, reason=reason))
        return out

    def replacement(self, finding: Finding) -> str:
        return ""
