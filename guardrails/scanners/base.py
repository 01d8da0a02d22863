"""The scanner contract: a params model, a class built once from it, one async ``scan`` over a batch.

A scanner type is a subclass of :class:`Scanner` whose ``config_model`` is a :class:`ScannerConfig` subclass with a
``type: Literal["name"]`` field, registered with :func:`guardrails.scanners.register`. The pipeline builds each
scanner once at start-up (load models, compile patterns there), then calls ``scan`` with every text of a request
that the scanner applies to. ``scan`` returns one :class:`~guardrails.types.ScanResult` per input, in order, made
with :meth:`Scanner.result` so that thresholds and actions are applied in one place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from guardrails.normalize import View, prepare, views
from guardrails.types import Decision, Finding, Message, Role, ScanResult, Stage

__all__ = ["ScannerConfig", "ScanInput", "Scanner", "RoleKey"]

RoleKey = Literal["system", "user", "assistant", "tool", "third_party"]

DEFAULT_ROLES: dict[Stage, frozenset[str]] = {
    Stage.INPUT: frozenset({"user", "tool", "third_party"}),
    Stage.OUTPUT: frozenset({"assistant"}),
}


class ScannerConfig(BaseModel):
    """Keys every scanner takes. Subclasses add their own and fix ``type``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="Scanner type, one of the registered types (see the list below).")
    id: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9_.:-]*$",
        description="Name of this scanner in results and audit records; unique within a stage. Defaults to the type.",
    )
    enabled: bool = Field(default=True, description="Set false to switch off a scanner inherited through `extends`.")
    action: Literal["block", "redact", "warn"] = Field(
        default="block", description="What to do when the score reaches the threshold."
    )
    threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="Score at or above which `action` applies.")
    thresholds: dict[RoleKey, float] = Field(
        default_factory=dict,
        description="Per-role thresholds overriding `threshold`; `third_party` applies to tool results and documents.",
    )
    roles: list[RoleKey] | None = Field(
        default=None,
        description="Roles whose turns are scanned. Default: user, tool and third_party on input; assistant on output.",
    )
    timeout: float = Field(default=2.0, gt=0, le=600, description="Seconds before the scanner counts as timed out.")
    on_error: Literal["block", "allow"] = Field(
        default="block", description="Decision when the scanner raises or times out (fail closed by default)."
    )

    @property
    def scanner_id(self) -> str:
        return self.id or self.type


class ScanInput:
    """One text to scan, with where it came from. Normalised views are computed once and shared by all scanners."""

    __slots__ = ("text", "role", "index", "stage", "third_party", "conversation", "partial", "fresh_from", "_views")

    def __init__(
        self,
        text: str,
        *,
        role: Role,
        index: int,
        stage: Stage,
        third_party: bool = False,
        conversation: tuple[Message, ...] = (),
        partial: bool = False,
        fresh_from: int = 0,
    ) -> None:
        self.text = text
        self.role = role
        self.index = index  # message index on input; len(conversation) for the response on output
        self.stage = stage
        self.third_party = third_party
        self.conversation = conversation  # the messages before this text, for scanners that need context
        # True for a window of a response still streaming: scanners that can tell report a match the window's end
        # cuts short as a finding with view "partial" (it does not score), and the stream holds text from there.
        self.partial = partial
        # In a streaming window, text before this index was already released (context from the previous window);
        # scanners that track structure (Code Shield's fences) start there.
        self.fresh_from = fresh_from
        self._views: tuple[View, ...] | None = None

    @property
    def views(self) -> tuple[View, ...]:
        """The raw text first, then its normalised form and any hidden or encoded payloads decoded from it."""
        if self._views is None:
            self._views = views(self.text)
        return self._views

    def role_keys(self) -> tuple[str, ...]:
        return (self.role.value, "third_party") if self.third_party else (self.role.value,)


class Scanner(ABC):
    """Base of every scanner. Subclasses set ``config_model`` and implement ``scan``."""

    config_model: ClassVar[type[ScannerConfig]]

    def __init__(self, config: ScannerConfig) -> None:
        self.config = config
        self.id = config.scanner_id
        self._action = Decision(config.action)
        prepare()  # normalised views may be asked for by any scanner: load their tables at start-up

    @abstractmethod
    async def scan(self, batch: Sequence[ScanInput]) -> Sequence[ScanResult]:
        """Return one result per item of ``batch``, in order, each made by :meth:`result`."""

    def applies_to(self, item: ScanInput) -> bool:
        roles = DEFAULT_ROLES[item.stage] if self.config.roles is None else self.config.roles
        return any(key in roles for key in item.role_keys())

    def threshold_for(self, item: ScanInput) -> float:
        per_role = self.config.thresholds
        if item.third_party and "third_party" in per_role:
            return per_role["third_party"]
        return per_role.get(item.role.value, self.config.threshold)

    def result(
        self,
        item: ScanInput,
        *,
        score: float,
        findings: Sequence[Finding] = (),
        categories: Sequence[str] = (),
        reason: str = "",
    ) -> ScanResult:
        """The result for ``item``: the policy's action if ``score`` reaches the item's threshold, else allow."""
        fired = score > 0.0 and score >= self.threshold_for(item)
        return ScanResult(
            scanner_id=self.id,
            decision=self._action if fired else Decision.ALLOW,
            score=score,
            categories=tuple(categories),
            findings=tuple(findings),
            reason=reason,
        )

    def replacement(self, finding: Finding) -> str:
        """Text that replaces ``finding``'s span when the pipeline redacts."""
        return "[REDACTED]"

    async def aclose(self) -> None:
        """Release what the constructor acquired (models, processes). The default holds nothing."""
