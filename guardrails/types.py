"""The small set of value types every part of guardrails speaks.

- :class:`Message`: one chat turn (OpenAI roles), marked when its content comes from a third party.
- :class:`Decision` and :class:`Status`: what a scanner decided, and whether it managed to decide at all.
- :class:`ScanResult`: one scanner's frozen answer for one request and stage.
- :class:`Verdict`: a stage's answer (all its scanners, aggregated).
- :class:`Result`: what the pipeline returns for a request.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

__all__ = [
    "Role",
    "Message",
    "Stage",
    "Decision",
    "Status",
    "Finding",
    "ScanResult",
    "Verdict",
    "Result",
    "MessagesLike",
    "to_messages",
]


class Role(str, enum.Enum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


_ROLES = {role.value: role for role in Role}


class Stage(str, enum.Enum):
    INPUT = "input"
    OUTPUT = "output"


class Decision(str, enum.Enum):
    """What to do with a request, in increasing order of severity."""

    ALLOW = "allow"
    WARN = "warn"
    REDACT = "redact"
    BLOCK = "block"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    @classmethod
    def worst(cls, decisions: Iterable[Decision]) -> Decision:
        """The most severe of ``decisions`` (``ALLOW`` when there are none)."""
        return max(decisions, key=_SEVERITY.__getitem__, default=cls.ALLOW)


_SEVERITY = {Decision.ALLOW: 0, Decision.WARN: 1, Decision.REDACT: 2, Decision.BLOCK: 3}


class Status(str, enum.Enum):
    """Whether a scanner produced an answer. Anything but ``OK`` means the decision came from ``on_error``."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Message:
    """One chat turn.

    ``third_party`` marks content the user did not write (tool results, retrieved documents, e-mails): policies can
    hold it to stricter thresholds. Tool turns are third-party by default.
    """

    role: Role
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    third_party: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.role, Role):
            try:
                object.__setattr__(self, "role", Role(self.role))
            except ValueError:
                allowed = ", ".join(r.value for r in Role)
                raise ValueError(f"unknown message role {self.role!r}; allowed: {allowed}") from None
        if not isinstance(self.content, str):
            raise TypeError(f"message content must be text (str), got {type(self.content).__name__}")
        if self.role is Role.TOOL and not self.third_party:
            object.__setattr__(self, "third_party", True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Message:
        """Build from an OpenAI-style dict. List content keeps its text parts, joined by newlines."""
        if "role" not in data:
            raise ValueError(f"message has no 'role': {sorted(data)}")
        content = data.get("content")
        if content is None:
            content = ""
        elif isinstance(content, list):
            content = "\n".join(
                part.get("text", "") for part in content if isinstance(part, Mapping) and part.get("type") == "text"
            )
        role = data["role"]
        return cls(
            role=_ROLES.get(role, role) if isinstance(role, str) else role,  # Role(value) is slow; __post_init__ checks
            content=content,
            name=data.get("name"),
            tool_call_id=data.get("tool_call_id"),
            third_party=bool(data.get("third_party", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI-style dict for this turn (``third_party`` is ours and is left out)."""
        out: dict[str, Any] = {"role": self.role.value, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


MessagesLike = str | Message | Mapping[str, Any] | Sequence[Message | Mapping[str, Any]]


def to_messages(value: MessagesLike) -> tuple[Message, ...]:
    """Accept a string (one user turn), a message, a dict, or a sequence of messages/dicts."""
    if isinstance(value, str):
        return (Message(Role.USER, value),)
    if isinstance(value, Message):
        return (value,)
    if isinstance(value, Mapping):
        return (Message.from_dict(value),)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError("messages must be text: decode bytes before passing them (e.g. data.decode('utf-8'))")
    if isinstance(value, Sequence):
        out = []
        for i, item in enumerate(value):
            if isinstance(item, Message):
                out.append(item)
            elif isinstance(item, Mapping):
                out.append(Message.from_dict(item))
            else:
                raise TypeError(f"message {i} must be a Message or a dict, got {type(item).__name__}")
        return tuple(out)
    raise TypeError(f"expected a string, a message or a list of messages, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a scanner found.

    ``span`` is a character range in the scanned text (the message at ``message_index``, or the response on the
    output stage); redaction replaces it. ``view`` says which form of the text it was found in ("raw", "normalized",
    "hidden", "base64", "hex"): a finding in a decoded view points at the span of the encoded run. ``excerpt`` may hold
    content (a decoded hidden payload) and is treated as content by the audit log's privacy setting.
    """

    rule: str
    message_index: int | None = None
    span: tuple[int, int] | None = None
    view: str = "raw"
    detail: str = ""
    excerpt: str | None = None
    line: int | None = None  # 1-based line of the scanned text, where a scanner reports one (Code Shield)


@dataclass(frozen=True, slots=True)
class ScanResult:
    """One scanner's answer for one request and stage.

    ``scanner_id`` is the id the policy gave the scanner (never its class). ``score`` is in [0, 1]: how strongly the
    scanner believes its detector fired (1 = certain). ``decision`` already reflects the policy: the scanner's
    threshold and action when ``status`` is ``OK``, its ``on_error`` otherwise.
    """

    scanner_id: str
    decision: Decision
    score: float = 0.0
    categories: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()
    reason: str = ""
    status: Status = Status.OK
    duration_ms: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score must be in [0, 1], got {self.score!r} from scanner {self.scanner_id!r}")


@dataclass(frozen=True, slots=True)
class Verdict:
    """A stage's answer. In shadow mode ``enforced`` is false: ``decision`` is what would have happened."""

    stage: Stage
    decision: Decision
    results: tuple[ScanResult, ...] = ()
    enforced: bool = True

    @property
    def effective(self) -> Decision:
        """The decision that applies to the request (``ALLOW`` for a shadow stage)."""
        return self.decision if self.enforced else Decision.ALLOW

    @property
    def errors(self) -> tuple[ScanResult, ...]:
        return tuple(r for r in self.results if r.status in (Status.ERROR, Status.TIMEOUT))


@dataclass(frozen=True, slots=True)
class Result:
    """What the pipeline returns for one request.

    ``text`` is what the caller should show: the (possibly redacted) response, or the policy's refusal when
    ``blocked``. ``decision`` is the most severe enforced decision over the stages that ran.
    """

    request_id: str
    text: str
    decision: Decision
    verdicts: tuple[Verdict, ...]
    policy_name: str
    policy_hash: str
    route: str | None = None
    messages: tuple[Message, ...] = ()
    duration_ms: float = 0.0
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def blocked(self) -> bool:
        return self.decision is Decision.BLOCK

    @property
    def blocked_stage(self) -> Stage | None:
        for verdict in self.verdicts:
            if verdict.effective is Decision.BLOCK:
                return verdict.stage
        return None

    @property
    def reason(self) -> str:
        """The reasons of the results that set the decision, joined (empty when allowed)."""
        if self.decision is Decision.ALLOW:
            return ""
        return "; ".join(
            f"{r.scanner_id}: {r.reason}"
            for v in self.verdicts
            if v.enforced
            for r in v.results
            if r.decision is self.decision
        )

    def verdict(self, stage: Stage | str) -> Verdict | None:
        stage = stage if isinstance(stage, Stage) else Stage(stage)
        return next((v for v in self.verdicts if v.stage is stage), None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: enums as their values, findings and verdicts nested."""
        return {
            "request_id": self.request_id,
            "decision": self.decision.value,
            "blocked": self.blocked,
            "blocked_stage": self.blocked_stage.value if self.blocked_stage else None,
            "reason": self.reason,
            "text": self.text,
            "policy": {"name": self.policy_name, "hash": self.policy_hash, "route": self.route},
            "duration_ms": round(self.duration_ms, 3),
            "verdicts": [_jsonable(v) for v in self.verdicts],
            "metadata": dict(self.metadata),
        }

    def __str__(self) -> str:
        return self.text


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return round(value, 4)
    return value
