"""Prompt Guard scanner: Meta's injection and jailbreak classifiers (v1 86M, v2 86M and 22M) through transformers.

The version is read from the checkpoint (three labels: v1 BENIGN/INJECTION/JAILBREAK; two labels: v2
benign/malicious), never from its name. Scores are Meta's: probabilities are ``softmax(logits / temperature)``;
v1 scores a user turn as jailbreak ``p[2]`` and third-party content (tool results, documents) as indirect injection
``p[1] + p[2]``; v2 scores ``p[1]``. Per-role thresholds come from the policy (``thresholds: {third_party: ...}``);
Meta's own tools block at 0.9, the default here.

Inputs longer than the model's window are scanned in overlapping token windows (``window`` tokens with ``overlap``
shared between neighbours), so no payload hides after token 512 or across a window boundary; the score is the
maximum over windows and the finding names the window that set it. v1 gets Meta's whitespace hotfix (``i g n o r e``
collapses to ``ignore`` before tokenising); v2's tokenizer does not need it. Every turn the policy's roles select is
scanned, not only the last. The model is loaded once, when the policy is loaded; requests that arrive together share
forward passes (:mod:`guardrails.models.runtime`).

Scope, from Meta's model card: Prompt Guard detects attempts to override instructions, not harmful intent; pair it
with Llama Guard. Known false positives: benign text that talks about instructions, and non-English text for v1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from guardrails.models.runtime import pad_right
from guardrails.scanners.base import ScanInput, Scanner, ScannerConfig
from guardrails.scanners.registry import register
from guardrails.types import Finding, ScanResult

__all__ = ["PromptGuardScanner", "PromptGuardConfig", "whitespace_hotfix"]


class PromptGuardConfig(ScannerConfig):
    type: Literal["prompt_guard"]
    model: str = Field(
        description="Checkpoint directory, a Hugging Face id already in the local cache, or `embedded:NAME` for our "
        "own model (embedded:prompt-guard-mini)."
    )
    threshold: float = Field(default=0.9, ge=0.0, le=1.0, description="Meta's tools block at 0.9.")
    timeout: float = Field(default=10.0, gt=0, le=600, description="Seconds, queueing for the model included.")
    temperature: float = Field(default=1.0, gt=0, description="Logits are divided by this before the softmax.")
    score: Literal["auto", "jailbreak", "injection"] = Field(
        default="auto",
        description="v1 only: `auto` scores user turns as jailbreak and third-party content as indirect injection.",
    )
    window: int = Field(default=512, ge=16, description="Tokens per window, special tokens included (model maximum).")
    overlap: int = Field(default=64, ge=0, description="Tokens shared by neighbouring windows.")
    max_batch: int = Field(default=32, ge=1, description="Most windows in one forward pass.")
    max_batch_tokens: int = Field(
        default=1024,
        ge=16,
        description="Most padded tokens in one forward pass (about 1k suits a CPU; raise it on a GPU).",
    )
    max_wait_ms: float = Field(default=5.0, ge=0, description="How long a forward pass waits for more requests.")
    device: Literal["cpu", "cuda", "auto"] = Field(default="cpu", description="Where the model runs.")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(default="float32", description="Weights' type.")

    @model_validator(mode="after")
    def _overlap_fits(self) -> PromptGuardConfig:
        if self.overlap >= self.window - 8:
            raise ValueError(
                f"overlap ({self.overlap}) must leave room in the window ({self.window}): at least 8 "
                "tokens more than the overlap"
            )
        return self


def whitespace_hotfix(text: str, tokenizer: Any) -> str:
    """Meta's v1 preprocessing: drop whitespace, then put a space back only before tokens that had one.

    ``i g n o r e  p r e v i o u s`` then tokenises as words instead of single letters, which v1 misses. Same rule
    as llama-cookbook's ``preprocess_text_for_promptguard``, but it places tokens by the tokenizer's character offsets
    instead of searching for their decoded strings, so it works for any fast tokenizer (WordPiece ``##`` pieces
    included). On any tokenizer surprise it returns the text unchanged, as Meta's does.
    """
    try:
        positions = [i for i, ch in enumerate(text) if not ch.isspace()]
        cleaned = "".join(text[i] for i in positions)
        offsets = tokenizer(cleaned, add_special_tokens=False, return_offsets_mapping=True, verbose=False)[
            "offset_mapping"
        ]
        out: list[str] = []
        for start, end in offsets:
            if end <= start:
                continue
            original = positions[start]
            if original > 0 and text[original - 1].isspace():
                out.append(" ")
            out.append(cleaned[start:end])
        return "".join(out)
    except (ValueError, IndexError, KeyError, NotImplementedError):
        return text


EMBEDDED = "embedded:"


def embedded_weights(model: str) -> Any:
    """The head file of ``embedded:<name>`` (shipped in guardrails/embedded/weights) or ``embedded:<path>``."""
    from pathlib import Path

    from guardrails._exceptions import ScannerError
    from guardrails.embedded import weights_path

    ref = model[len(EMBEDDED) :]
    path = Path(ref) if ref.endswith(".safetensors") else weights_path(ref)
    if not path.is_file():
        raise ScannerError(
            f"embedded model {ref!r} not found at {path}; train it with "
            f"`python -m guardrails.train {ref} --data ../shared/data`"
        )
    return path


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text ([CLS] and [SEP] for DeBERTa), found by encoding a probe."""
    probe = "hello world"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for at in range(len(full) - len(bare) + 1):
        if full[at : at + len(bare)] == bare:
            return full[:at], full[at + len(bare) :]
    raise ValueError("cannot tell where this tokenizer puts its special tokens")


@register
class PromptGuardScanner(Scanner):
    config_model = PromptGuardConfig
    config: PromptGuardConfig

    def __init__(self, config: PromptGuardConfig) -> None:
        super().__init__(config)
        self._embedded = None
        if config.model.startswith(EMBEDDED):
            # Our own model (guardrails.embedded): a MiniLM encoder and a head, scored like v2 (p[1]).
            from guardrails.embedded import WIDTHS, load_head, shared_encoder

            self._embedded = (shared_encoder(), load_head(embedded_weights(config.model), widths=WIDTHS))
            self.version = 2
            self._label = config.model
            return
        import torch

        from guardrails.models import BatchRunner, ModelOptions, load_sequence_classifier

        self._torch = torch
        self.tokenizer, self.model = load_sequence_classifier(config.model, ModelOptions(config.device, config.dtype))
        labels = self.model.config.num_labels
        if labels not in (2, 3):
            raise ValueError(f"{config.model}: a Prompt Guard checkpoint has 2 (v2) or 3 (v1) labels, not {labels}")
        self.version = 1 if labels == 3 else 2
        self._label = f"Prompt Guard v{self.version}"
        limit = getattr(self.model.config, "max_position_embeddings", config.window) or config.window
        self.window = min(config.window, limit)
        self._prefix, self._suffix = _special_tokens(self.tokenizer)
        self._pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._device = next(self.model.parameters()).device
        self.runner = BatchRunner(
            self._forward,
            max_batch=config.max_batch,
            max_tokens=config.max_batch_tokens,
            max_wait_ms=config.max_wait_ms,
            name=f"prompt-guard-{self.id}",
        )

    def _forward(self, batch: list[Sequence[int]]) -> list[list[float]]:
        """Padded forward pass of a batch of token-id windows: one row of probabilities per window."""
        torch = self._torch
        input_ids, mask = pad_right(batch, self._pad)
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(self._device), attention_mask=mask.to(self._device)).logits
            probs = torch.softmax(logits.float() / self.config.temperature, dim=-1)  # (batch, labels)
        return probs.cpu().tolist()

    def windows(self, text: str) -> list[tuple[list[int], tuple[int, int] | None]]:
        """Token windows covering ``text``: (input ids with special tokens, character span in ``text`` or None)."""
        if self.version == 1:
            text = whitespace_hotfix(text, self.tokenizer)
        encoded = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=self.version == 2, verbose=False
        )
        ids: list[int] = encoded["input_ids"]
        offsets = encoded.get("offset_mapping") if self.version == 2 else None
        size = self.window - len(self._prefix) - len(self._suffix)
        step = size - self.config.overlap
        out = []
        start = 0
        while True:
            piece = ids[start : start + size]
            span = (offsets[start][0], offsets[start + len(piece) - 1][1]) if offsets and piece else None
            out.append((self._prefix + piece + self._suffix, span))
            if start + size >= len(ids):
                return out
            start += step

    def _score(self, probs: list[float], item: ScanInput) -> tuple[float, str]:
        if self.version == 2:
            return probs[1], "malicious"
        kind = self.config.score
        if kind == "auto":
            kind = "injection" if item.third_party else "jailbreak"
        return (probs[1] + probs[2], "indirect_injection") if kind == "injection" else (probs[2], "jailbreak")

    async def _window_probs(self, texts: list[str]) -> list[list[tuple[list[float], tuple[int, int] | None]]]:
        """For each text, (class probabilities, character span) per window."""
        if self._embedded is not None:
            import numpy as np

            encoder, head = self._embedded
            per_text = await encoder.embed_windows(texts)
            return [
                [
                    (p.tolist(), span)
                    for p, (_, span) in zip(head.probabilities(np.array([v for v, _ in windows])), windows, strict=True)
                ]
                for windows in per_text
            ]
        per_item = [self.windows(text) for text in texts]
        probs = await self.runner.run([ids for windows in per_item for ids, _ in windows])
        out, at = [], 0
        for windows in per_item:
            out.append([(p, span) for p, (_, span) in zip(probs[at : at + len(windows)], windows, strict=True)])
            at += len(windows)
        return out

    async def scan(self, batch: Sequence[ScanInput]) -> list[ScanResult]:
        per_item = await self._window_probs([item.text for item in batch])
        out = []
        for item, windows in zip(batch, per_item, strict=True):
            scored = [self._score(p, item) for p, _ in windows]
            best = max(range(len(scored)), key=lambda i: scored[i][0])
            score, category = scored[best]
            score = min(max(score, 0.0), 1.0)
            span = windows[best][1]
            finding = Finding(
                rule=category,
                message_index=item.index,
                span=span,
                detail=f"window {best + 1} of {len(windows)} scored {score:.3f}",
            )
            out.append(
                self.result(
                    item,
                    score=score,
                    findings=[finding] if score >= self.threshold_for(item) else [],
                    categories=[category] if score >= self.threshold_for(item) else [],
                    reason=f"{self._label} {category} {score:.3f} (window {best + 1}/{len(windows)})",
                )
            )
        return out

    async def aclose(self) -> None:
        if self._embedded is None:
            self.runner.close()
