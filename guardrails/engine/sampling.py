"""Sampling parameters and the sampler (greedy, temperature, top-k, top-p, repetition penalty, seeded)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["SamplingParams", "sample"]


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How one request is decoded. ``temperature=0`` is greedy (the default: reproducible output)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0  # >1 discourages tokens already in the prompt or output (as in transformers)
    seed: int | None = None  # per-request generator: the same seed gives the same text whatever the batch
    stop: tuple[str, ...] = ()  # the text ends before the first stop string (which is not returned)
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple([self.stop] if isinstance(self.stop, str) else self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0, repetition_penalty > 0")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 and self.repetition_penalty == 1


def sample(
    logits: torch.Tensor,  # [N, V] fp32
    params: Sequence[SamplingParams],
    histories: Sequence[Sequence[int]],  # tokens seen by each row (for the repetition penalty)
    generators: Sequence[torch.Generator | None],
) -> list[int]:
    if all(p.greedy for p in params):
        # max's indices: argmax's (the first maximum; NaN wins), at a third of its time on the CPU here (8 x 49152)
        return logits.max(dim=-1).indices.tolist()
    out = []
    for row, p, history, gen in zip(logits, params, histories, generators, strict=True):
        row = row.cpu()  # per-request generators live on the CPU; one row is small
        if p.repetition_penalty != 1:
            seen = torch.tensor(sorted(set(history)), dtype=torch.long)
            scores = row[seen]
            row = row.clone()
            row[seen] = torch.where(scores < 0, scores * p.repetition_penalty, scores / p.repetition_penalty)
        if p.temperature == 0:
            out.append(int(row.argmax()))
            continue
        row = row / p.temperature
        if p.top_k:
            kth = row.topk(min(p.top_k, row.numel())).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        if p.top_p < 1:
            sorted_logits, order = row.sort(descending=True)
            probs = sorted_logits.softmax(dim=-1)
            drop = probs.cumsum(dim=-1) - probs > p.top_p  # keep the smallest prefix whose mass reaches top_p
            row = row.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = row.softmax(dim=-1)
        out.append(int(torch.multinomial(probs, 1, generator=gen)))
    return out
