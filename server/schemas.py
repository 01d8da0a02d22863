"""Request bodies of the API, validated by pydantic (and published in the OpenAPI schema).

OpenAI's parameters that we do not interpret (``temperature``, ``tools``, ``response_format``, ...) are kept and
passed to the upstream as they came; nothing in a body selects a policy, a route or a moderation mode.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ChatMessage",
    "ChatCompletionRequest",
    "CompletionRequest",
    "ModerationRequest",
    "ScanRequest",
    "TextPart",
]

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _Open(BaseModel):
    """Unknown keys are kept (and passed upstream), as OpenAI's API grows faster than any proxy."""

    model_config = ConfigDict(extra="allow")


class TextPart(_Open):
    type: str = Field(description="`text` parts are scanned; other parts (images) are passed on unscanned.")
    text: str | None = None


class ChatMessage(_Open):
    role: Role
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class _Generation(_Open):
    model: str = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=1, description="One choice per request: each is moderated.")
    user: str | None = Field(default=None, max_length=256)


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None


class CompletionRequest(_Generation):
    prompt: str | list[str] = Field(description="One prompt (a list holds exactly one); token arrays are refused.")
    suffix: str | None = None


class ModerationRequest(_Open):
    input: str | list[str] | list[TextPart]
    model: str | None = None


class ScanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: Literal["input", "output"] = "input"
    messages: list[ChatMessage] = Field(default_factory=list)
    response: str | None = Field(default=None, description="Required for stage output: the text to check.")
