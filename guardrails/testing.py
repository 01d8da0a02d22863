"""Test doubles, for our tests and yours: a fake generator and a static scanner.

``FakeGenerator`` stands in for a model: it answers from a table of replies (or echoes), can stream its answer in
chunks, and records what it was called with, so a test can assert what reached the model after input redaction.
``StaticScanner`` (policy ``type: static``) returns a fixed score, optionally only for texts containing a substring,
and can be told to sleep or raise, to exercise timeouts and ``on_error`` without a real model.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Literal

from pydantic import Field

from guardrails.scanners.base import ScanInput, Scanner, ScannerConfig
from guardrails.scanners.registry import register
from guardrails.types import Finding, ScanResult

__all__ = ["FakeGenerator", "StaticScanner", "StaticConfig"]


def _last_user_text(prompt: str | Sequence[Mapping[str, Any]]) -> str:
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


class FakeGenerator:
    """A deterministic stand-in for a model.

    ``replies`` maps a substring of the last user turn to the reply; otherwise ``default`` is returned, with
    ``{prompt}`` replaced by the last user turn. ``calls`` records every prompt or message list received.
    """

    def __init__(
        self,
        replies: Mapping[str, str] | None = None,
        *,
        default: str = "You said: {prompt}",
        chunk_size: int = 8,
    ) -> None:
        self.replies = dict(replies or {})
        self.default = default
        self.chunk_size = chunk_size
        self.calls: list[Any] = []

    def reply_for(self, prompt: str | Sequence[Mapping[str, Any]]) -> str:
        self.calls.append(prompt)
        text = _last_user_text(prompt)
        for needle, reply in self.replies.items():
            if needle in text:
                return reply
        return self.default.replace("{prompt}", text)

    def __call__(self, prompt: str | Sequence[Mapping[str, Any]]) -> str:
        return self.reply_for(prompt)

    async def agenerate(self, prompt: str | Sequence[Mapping[str, Any]]) -> str:
        await asyncio.sleep(0)
        return self.reply_for(prompt)

    def stream(self, prompt: str | Sequence[Mapping[str, Any]]) -> Iterator[str]:
        reply = self.reply_for(prompt)
        for i in range(0, len(reply), self.chunk_size):
            yield reply[i : i + self.chunk_size]

    async def astream(self, prompt: str | Sequence[Mapping[str, Any]]) -> AsyncIterator[str]:
        for chunk in self.stream(prompt):
            await asyncio.sleep(0)
            yield chunk


class StaticConfig(ScannerConfig):
    type: Literal["static"]
    score: float = Field(default=0.0, ge=0.0, le=1.0, description="Score returned for every matching text.")
    contains: str | None = Field(default=None, description="Only texts containing this substring get `score`.")
    categories: list[str] = Field(default_factory=list, description="Categories reported when the score is given.")
    delay: float = Field(default=0.0, ge=0.0, description="Seconds to sleep (asynchronously) before answering.")
    error: str | None = Field(default=None, description="Raise RuntimeError with this message instead of answering.")


@register
class StaticScanner(Scanner):
    """A scanner whose answer the policy fixes: a no-op with the defaults."""

    config_model = StaticConfig
    config: StaticConfig

    async def scan(self, batch: Sequence[ScanInput]) -> list[ScanResult]:
        config = self.config
        if config.delay:
            await asyncio.sleep(config.delay)
        if config.error is not None:
            raise RuntimeError(config.error)
        out = []
        for item in batch:
            if config.contains is not None and config.contains not in item.text:
                out.append(self.result(item, score=0.0))
                continue
            findings = ()
            if config.contains is not None:
                start = item.text.index(config.contains)
                findings = (Finding("contains", item.index, (start, start + len(config.contains))),)
            out.append(
                self.result(
                    item,
                    score=config.score,
                    findings=findings,
                    categories=config.categories if config.score else (),
                    reason=f"static score {config.score}" if config.score else "",
                )
            )
        return out
