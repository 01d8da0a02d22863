"""A request in flight: its tokens, its KV blocks, and its text (incremental detokenisation, stop strings)."""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable
from collections.abc import Sequence as Seq

import torch

from .sampling import SamplingParams

__all__ = ["Sequence", "Status", "Detokenizer"]

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Detokenizer:
    """Turns tokens into text one token at a time without re-decoding everything (vLLM / TGI's scheme).

    Decodes a short window ``ids[prefix:]`` and emits what it adds beyond ``ids[prefix:read]``; text ending in U+FFFD
    (a partial UTF-8 character split across byte tokens) is held back until the next token completes it. The window
    starts on the prompt's last tokens so a first token's leading space survives.
    """

    def __init__(self, decode: Callable[[list[int]], str], prompt_ids: Seq[int]) -> None:
        self.decode = decode
        self.ids = list(prompt_ids[-4:])
        self.prefix = 0
        self.read = len(self.ids)

    def add(self, token: int) -> str:
        self.ids.append(token)
        before = self.decode(self.ids[self.prefix : self.read])
        after = self.decode(self.ids[self.prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]


class Sequence:
    def __init__(
        self,
        prompt_ids: Seq[int],
        params: SamplingParams,
        *,
        eos_token_ids: frozenset[int] = frozenset(),
        decode: Callable[[list[int]], str] | None = None,
    ) -> None:
        if not prompt_ids:
            raise ValueError("the prompt has no tokens")
        self.id = next(_ids)
        self.token_ids = list(prompt_ids)
        self.num_prompt = len(prompt_ids)
        self.params = params
        self.num_computed = 0  # tokens whose keys and values are in the cache
        self.block_table: list[int] = []
        self.status = Status.WAITING
        self.finish_reason: str | None = None
        self.stops = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else eos_token_ids)
        self.generator = None if params.seed is None else torch.Generator().manual_seed(params.seed)
        self.detokenizer = Detokenizer(decode, prompt_ids) if decode else None
        self.text = ""
        self.sent = 0  # characters of ``text`` already handed out
        self.deliver: Callable[[object], None] | None = None  # set by the async engine: where outputs go

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def remaining(self) -> int:
        """Tokens not yet in the cache (1 for a decode)."""
        return self.num_tokens - self.num_computed

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt :]

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def append(self, token: int) -> str:
        """Add a sampled token; returns the text that may be sent now (held back while it could start a stop)."""
        self.token_ids.append(token)
        if token in self.stops:
            return self._finish("stop")
        if self.detokenizer is not None:
            self.text += self.detokenizer.add(token)
            stop = self._find_stop()
            if stop is not None:
                self.text = self.text[:stop]
                return self._finish("stop")
        if len(self.token_ids) - self.num_prompt >= self.params.max_tokens:
            return self._finish("length")
        safe = len(self.text) - self._held_back()
        delta, self.sent = self.text[self.sent : safe], max(self.sent, safe)
        return delta

    def _finish(self, reason: str) -> str:
        self.status, self.finish_reason = Status.FINISHED, reason
        delta, self.sent = self.text[self.sent :], len(self.text)
        return delta

    def _find_stop(self) -> int | None:
        hits = [i for s in self.params.stop if (i := self.text.find(s, max(0, self.sent - len(s)))) >= 0]
        return min(hits) if hits else None

    def _held_back(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        text = self.text
        return max((n for s in self.params.stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
