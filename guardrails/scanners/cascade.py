"""Cascade scanner: a cheap model first, the heavy one only where the cheap one is unsure.

``first`` and ``then`` are scanner configs (any registered type). Every text goes to ``first``; the texts whose
first-tier score falls in ``defer_between`` (low inclusive, high exclusive) also go to ``then``, whose answer decides
for them. Each tier decides with its own threshold and action (their scores need not share a scale); the result
carries the deciding tier's decision, score, categories and findings, plus a finding ``tier`` naming it.
``guardrails eval`` counts how many calls the cascade saved.

Typical use: our embedded model first (milliseconds on a CPU), Meta's checkpoint or a remote Llama Guard second.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from guardrails.scanners.base import ScanInput, Scanner, ScannerConfig
from guardrails.scanners.registry import register, scanner_class
from guardrails.types import Finding, ScanResult

__all__ = ["CascadeScanner", "CascadeConfig"]


class CascadeConfig(ScannerConfig):
    type: Literal["cascade"]
    first: dict[str, Any] = Field(description="The cheap scanner: a scanner config with its own `type`.")
    then: dict[str, Any] = Field(description="The heavy scanner, asked only for first-tier scores in defer_between.")
    defer_between: tuple[float, float] = Field(
        default=(0.2, 0.9), description="First-tier scores from the low (inclusive) to the high bound go to `then`."
    )
    timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds for both tiers together.")

    @field_validator("first", "then")
    @classmethod
    def _a_scanner(cls, value: dict[str, Any], info: Any) -> dict[str, Any]:
        kind = value.get("type")
        if kind == "cascade":
            raise ValueError("a cascade tier cannot itself be a cascade")
        config = scanner_class(str(kind)).config_model.model_validate(
            {**value, "id": value.get("id") or info.field_name}
        )
        return config.model_dump()

    @model_validator(mode="after")
    def _bounds(self) -> CascadeConfig:
        low, high = self.defer_between
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"defer_between must be two scores 0 <= low <= high <= 1, got {self.defer_between}")
        return self


@register
class CascadeScanner(Scanner):
    config_model = CascadeConfig
    config: CascadeConfig

    def __init__(self, config: CascadeConfig) -> None:
        super().__init__(config)
        self.tiers: dict[str, Scanner] = {}
        for name in ("first", "then"):
            settings = getattr(config, name)
            cls = scanner_class(settings["type"])
            self.tiers[name] = cls(cls.config_model.model_validate(settings))
        self.decided_by: Counter[str] = Counter()

    async def scan(self, batch: Sequence[ScanInput]) -> list[ScanResult]:
        low, high = self.config.defer_between
        first = list(await self.tiers["first"].scan(batch))
        deferred = [i for i, r in enumerate(first) if low <= r.score < high]
        second = list(await self.tiers["then"].scan([batch[i] for i in deferred])) if deferred else []
        deciders: list[tuple[str, ScanResult]] = [("first", r) for r in first]
        for i, result in zip(deferred, second, strict=True):
            deciders[i] = ("then", result)
        out = []
        for item, (tier, decider) in zip(batch, deciders, strict=True):
            self.decided_by[tier] += 1
            tier_finding = Finding(rule="tier", message_index=item.index, detail=tier)
            out.append(
                ScanResult(
                    self.id,
                    decider.decision,
                    decider.score,
                    decider.categories,
                    (*decider.findings, tier_finding),
                    f"{tier} tier ({self.tiers[tier].id}): {decider.reason}",
                )
            )
        return out

    async def aclose(self) -> None:
        for scanner in self.tiers.values():
            await scanner.aclose()
