"""Regex scanner: block, redact or flag text matching patterns the policy lists.

Patterns are compiled once with the ``regex`` module. Every match runs under the scanner's ``timeout``, so a
hostile pattern or input ends as a timeout (and ``on_error``) instead of hanging the process. With ``normalize``
(the default) the patterns also run over the normalised, hidden and decoded views of the text
(:mod:`guardrails.normalize`), so a phrase written in homoglyphs, hidden in tag characters or wrapped in base64 is
caught like the plain phrase; redaction then removes the whole encoded or hidden run.

Score: 1.0 when any pattern matches, else 0.0. False positives are whatever the patterns match: anchor them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from guardrails.scanners._matching import Rule, compile_pattern, complete, find
from guardrails.scanners.base import ScanInput, Scanner, ScannerConfig
from guardrails.scanners.registry import register
from guardrails.types import Finding, ScanResult

__all__ = ["RegexScanner", "RegexConfig", "PatternSpec"]


class PatternSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str = Field(description="Regular expression (`regex` module syntax).")
    id: str = Field(default="", description="Rule name in findings; defaults to `pattern-<index>`.")
    category: str = Field(default="", description="Category reported when this pattern matches.")


class RegexConfig(ScannerConfig):
    type: Literal["regex"]
    ignore_case: bool = Field(
        default=True, description="Match regardless of case."
    )  # before patterns: _compiles reads it
    patterns: list[str | PatternSpec] = Field(min_length=1, description="Patterns: strings or {pattern, id, category}.")
    normalize: bool = Field(default=True, description="Also match the normalised, hidden and decoded views.")
    redact_with: str = Field(default="[REDACTED]", description="Replacement for a matched span when redacting.")

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str | PatternSpec], info) -> list[str | PatternSpec]:  # noqa: ANN001
        ignore_case = info.data.get("ignore_case", True)
        for spec in patterns:
            compile_pattern(spec if isinstance(spec, str) else spec.pattern, ignore_case=ignore_case)
        return patterns


@register
class RegexScanner(Scanner):
    config_model = RegexConfig
    config: RegexConfig

    def __init__(self, config: RegexConfig) -> None:
        super().__init__(config)
        self._rules: list[Rule] = []
        for i, spec in enumerate(config.patterns):
            spec = PatternSpec(pattern=spec) if isinstance(spec, str) else spec
            rule_id = spec.id or f"pattern-{i}"
            self._rules.append((rule_id, compile_pattern(spec.pattern, ignore_case=config.ignore_case), spec.category))
        self._categories = {rule_id: category for rule_id, _, category in self._rules if category}

    async def scan(self, batch: Sequence[ScanInput]) -> list[ScanResult]:
        deadline = time.monotonic() + self.config.timeout
        out = []
        for item in batch:
            findings = find(self._rules, item, all_views=self.config.normalize, deadline=deadline)
            matched = complete(findings)
            if not matched:
                out.append(self.result(item, score=0.0, findings=findings))
                continue
            rules = sorted({f.rule for f in matched})
            categories = sorted({self._categories[r] for r in rules if r in self._categories})
            views = sorted({f.view for f in matched})
            reason = f"matched {', '.join(rules)}" + (f" in {', '.join(views)} text" if views != ["raw"] else "")
            out.append(self.result(item, score=1.0, findings=findings, categories=categories, reason=reason))
        return out

    def replacement(self, finding: Finding) -> str:
        return self.config.redact_with
