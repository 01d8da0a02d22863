"""Llama Guard scanner: Meta's hazard classifier (LG3-1B, LG3-8B, LG4-12B), local through transformers or remote.

Prompts are rendered exactly as each variant's chat template does (:mod:`guardrails.scanners.llama_guard_prompt`):
on the input stage the conversation up to each scanned turn is judged as a prompt ('User'), on the output stage the
response is judged as the last 'Agent' turn. The score is Meta's: one forward pass over the prompt followed by
``\\n\\n``, ``p_unsafe = p[unsafe] / (p[safe] + p[unsafe])`` from the last position's softmax. The violated
categories are generated (greedy, a few tokens) only when the score passes a threshold; excluded codes are dropped
from the answer, and an answer whose codes are all excluded allows.

Thresholds: ``threshold`` for the unsafe score, and ``category_thresholds`` per code or comma-separated group of
codes (``{"S1,S9": 0.3, "S6": 0.8}``): a request fires when the score reaches the threshold of any category the
model names. When the score passes but the model names no category (or its answer does not parse), the scanner
fires on ``threshold``: it fails closed.

The variant comes from the checkpoint (Llama 4 header tokens: LG4; a chat template that reads
``excluded_category_keys``: LG3-1B; one that lists S14 without it: LG3-8B) unless ``variant`` says otherwise.
Remote: ``endpoint`` names an OpenAI-compatible server (vLLM serving Llama Guard); the same prompt goes to its
``/completions`` with ``logprobs``, and the codes come from a second, short completion. The model is loaded (or the
endpoint's client created) once, when the policy is loaded.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import Field, model_validator

from guardrails.models.runtime import pad_right
from guardrails.scanners import llama_guard_prompt as lgp
from guardrails.scanners.base import ScanInput, Scanner, ScannerConfig
from guardrails.scanners.registry import register
from guardrails.types import Decision, Finding, Message, Role, ScanResult

__all__ = ["LlamaGuardScanner", "LlamaGuardConfig", "detect_variant"]


class LlamaGuardConfig(ScannerConfig):
    type: Literal["llama_guard"]
    model: str | None = Field(
        default=None,
        description="Checkpoint directory, a Hugging Face id in the local cache, or `embedded:llama-guard-mini`.",
    )
    endpoint: str | None = Field(
        default=None,
        description="Base URL of an OpenAI-compatible server (e.g. http://gpu:8000/v1) instead of `model`.",
    )
    served_model: str | None = Field(default=None, description="With `endpoint`: the model name the server serves.")
    api_key_env: str | None = Field(default=None, description="With `endpoint`: environment variable holding its key.")
    variant: Literal["auto", "lg3-1b", "lg3-8b", "lg4"] = Field(
        default="auto", description="Prompt format; `auto` reads it from the checkpoint (required with `endpoint`)."
    )
    categories: dict[str, str] | None = Field(
        default=None, description="Replace the default categories: code -> 'Name.' (optionally '\\n' + description)."
    )
    excluded: list[str] = Field(default_factory=list, description="Codes left out of the prompt and of the answer.")
    category_thresholds: dict[str, float] = Field(
        default_factory=dict, description="Per code, or comma-separated group of codes: the score at which it fires."
    )
    max_new_tokens: int = Field(default=20, ge=2, le=256, description="Tokens generated to read the category codes.")
    timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds, queueing for the model included.")
    max_batch: int = Field(default=8, ge=1, description="Most prompts in one scoring forward pass.")
    max_wait_ms: float = Field(default=5.0, ge=0, description="How long a forward pass waits for more requests.")
    device: Literal["cpu", "cuda", "auto"] = Field(default="cpu", description="Where the model runs.")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(default="auto", description="Weights' type.")

    @model_validator(mode="after")
    def _one_source(self) -> LlamaGuardConfig:
        if (self.model is None) == (self.endpoint is None):
            raise ValueError("give exactly one of `model` (a checkpoint) or `endpoint` (a server)")
        if self.endpoint is not None and (self.variant == "auto" or not self.served_model):
            raise ValueError("with `endpoint`, also give `variant` (lg3-1b, lg3-8b or lg4) and `served_model`")
        variant = "lg3-8b" if self.variant == "auto" else self.variant
        lgp.rendered_categories(variant, self.categories, self.excluded)  # raises with the reason
        for group, value in self.category_thresholds.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"category_thresholds[{group!r}] must be in [0, 1]")
        return self


def detect_variant(tokenizer: Any) -> str:
    """Which Llama Guard a checkpoint is, from its tokenizer and chat template (never from its name)."""
    vocab = tokenizer.get_vocab()
    if "<|header_start|>" in vocab:
        return "lg4"
    template = tokenizer.chat_template or ""
    if "excluded_category_keys" in template:
        return "lg3-1b"
    if "S14" in template:
        return "lg3-8b"
    raise ValueError("cannot tell which Llama Guard this checkpoint is from its chat template; set `variant`")


class _Backend:
    """Scores prompts and reads answers: local (transformers), remote (an OpenAI-compatible server) or embedded.

    ``items`` are the scanned texts, ``prompts`` their rendered Llama Guard prompts (empty strings for a backend whose
    ``uses_prompt`` is false: rendering is skipped for it).
    """

    uses_prompt = True

    async def scores(self, items: Sequence[ScanInput], prompts: list[str]) -> list[float]:
        raise NotImplementedError

    async def answer(self, item: ScanInput, prompt: str) -> str:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


class _LocalBackend(_Backend):
    def __init__(self, config: LlamaGuardConfig, variant: str | None) -> None:
        import torch

        from guardrails.models import BatchRunner, ModelOptions, load_causal_lm

        self._torch = torch
        self.tokenizer, self.model = load_causal_lm(config.model, ModelOptions(config.device, config.dtype))
        self.variant = variant or detect_variant(self.tokenizer)
        safe, unsafe = lgp.label_tokens(self.variant)
        self._labels = [self._single_token(safe), self._single_token(unsafe)]
        self._pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._device = next(self.model.parameters()).device
        self._max_new_tokens = config.max_new_tokens
        self.runner = BatchRunner(
            self._forward,
            max_batch=config.max_batch,
            max_wait_ms=config.max_wait_ms,
            name=f"llama-guard-{config.scanner_id}",
        )
        self._generator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guardrails-llama-guard-generate")

    def _single_token(self, text: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"the checkpoint's tokenizer splits the label {text!r} into {len(ids)} tokens; "
                "is this a Llama Guard checkpoint?"
            )
        return ids[0]

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def _forward(self, batch: list[Sequence[int]]) -> list[float]:
        """p_unsafe for each prompt (token ids ending with the score suffix), one right-padded forward pass."""
        torch = self._torch
        input_ids, mask = pad_right(batch, self._pad)
        last = mask.sum(dim=1) - 1  # (batch,) index of each prompt's final token
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(self._device), attention_mask=mask.to(self._device)).logits
            final = logits[torch.arange(len(batch)), last.to(self._device)].float()  # (batch, vocab)
            probs = torch.softmax(final, dim=-1)[:, self._labels]  # (batch, 2): p[safe], p[unsafe]
            p_unsafe = probs[:, 1] / probs.sum(dim=1).clamp_min(1e-30)
        return p_unsafe.cpu().tolist()

    async def scores(self, items: Sequence[ScanInput], prompts: list[str]) -> list[float]:
        suffix = lgp.score_suffix(self.variant)
        return await self.runner.run([self.encode(p + suffix) for p in prompts])

    def _generate(self, prompt: str) -> str:
        torch = self._torch
        ids = torch.tensor([self.encode(prompt)], dtype=torch.long, device=self._device)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=self._max_new_tokens,
                pad_token_id=self._pad,
            )
        return self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    async def answer(self, item: ScanInput, prompt: str) -> str:
        return await asyncio.wrap_future(self._generator.submit(self._generate, prompt))

    async def aclose(self) -> None:
        self.runner.close()
        self._generator.shutdown(wait=False)


class _RemoteBackend(_Backend):
    """vLLM (or any OpenAI-compatible completions server) serving Llama Guard; prompts are sent as raw text."""

    TOP_LOGPROBS = 20

    def __init__(self, config: LlamaGuardConfig) -> None:
        import httpx

        self.variant = config.variant
        self._model = config.served_model
        self._max_new_tokens = config.max_new_tokens
        headers = {}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ValueError(f"api_key_env names {config.api_key_env!r}, which is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(
            base_url=config.endpoint.rstrip("/"),
            headers=headers,
            timeout=config.timeout,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )
        self._label_set = lgp.label_tokens(self.variant)

    async def _complete(self, prompt: str, **params: Any) -> dict[str, Any]:
        response = await self._client.post(
            "/completions", json={"model": self._model, "prompt": prompt, "temperature": 0, **params}
        )
        if response.status_code != 200:
            raise RuntimeError(
                f"{self._client.base_url}/completions answered {response.status_code}: {response.text[:200]}"
            )
        return response.json()["choices"][0]

    async def _score(self, prompt: str) -> float:
        choice = await self._complete(prompt + lgp.score_suffix(self.variant), max_tokens=1, logprobs=self.TOP_LOGPROBS)
        top = choice["logprobs"]["top_logprobs"][0]  # token text -> logprob at the first generated position
        safe_word, unsafe_word = self._label_set
        safe = max((lp for tok, lp in top.items() if tok.strip() == safe_word), default=None)
        unsafe = max((lp for tok, lp in top.items() if tok.strip() == unsafe_word), default=None)
        if safe is None and unsafe is None:
            raise RuntimeError(
                f"neither {safe_word!r} nor {unsafe_word!r} is among the top {self.TOP_LOGPROBS} "
                "tokens: is the endpoint serving Llama Guard with this variant's prompt?"
            )
        if unsafe is None:
            return 0.0
        if safe is None:
            return 1.0
        return 1.0 / (1.0 + math.exp(safe - unsafe))  # p[u] / (p[s] + p[u])

    async def scores(self, items: Sequence[ScanInput], prompts: list[str]) -> list[float]:
        return list(await asyncio.gather(*(self._score(p) for p in prompts)))

    async def answer(self, item: ScanInput, prompt: str) -> str:
        choice = await self._complete(prompt, max_tokens=self._max_new_tokens)
        return choice["text"]

    async def aclose(self) -> None:
        await self._client.aclose()


class _EmbeddedBackend(_Backend):
    """Our own llama-guard-mini (guardrails.embedded): a MiniLM encoder and a head over labels safe, S1..S14.

    It judges the scanned turn's text (in overlapping windows, the most unsafe one wins), not the rendered prompt,
    and answers in Llama Guard's format so the scanner's thresholds and exclusions apply unchanged. The S-code of a
    flagged text comes from the category model shipped next to the head (``guardrails.embedded.categories``: encoder
    layers fine-tuned to name it), run on the most unsafe window; a head without one names it itself.
    """

    variant = "lg3-8b"  # its categories are S1-S14, as that variant's
    uses_prompt = False

    def __init__(self, config: LlamaGuardConfig) -> None:
        from guardrails.embedded import WIDTHS, load_head, shared_encoder
        from guardrails.embedded.categories import CategoryModel, categories_path
        from guardrails.scanners.prompt_guard import embedded_weights

        if config.categories is not None:
            raise ValueError("the embedded model was trained on S1-S14 and cannot take custom `categories`")
        self.encoder = shared_encoder()
        self.head_path = embedded_weights(config.model)
        self.head = load_head(self.head_path, widths=WIDTHS)
        if self.head.labels[0] != "safe":
            raise ValueError(f"{config.model} is not a llama-guard-mini head (labels {self.head.labels[:3]}...)")
        self.categories: CategoryModel | None = None
        path = categories_path(self.head_path)
        if path.is_file():  # without one (a head trained with --category-layers 0), the head names the S-code
            # Built on the encoder's thread, as its passes run: copying and converting the layers here would start
            # a second OpenMP team on this thread, and every forward pass of the process got 1.6x slower (12 -> 19
            # ms, bench/embedded_latency.py).
            load = self.encoder.runner.call(lambda: CategoryModel(path, self.encoder))
            self.categories = load.result()
            if self.categories.labels != self.head.labels[1:]:
                raise ValueError(f"{path} names {self.categories.labels}, its head {self.head.labels[1:]}")

    async def _most_unsafe(self, texts: list[str]) -> list[tuple[Any, int]]:
        """Per text, the probabilities of its most unsafe window (the lowest p[safe]) and that window's index."""
        import numpy as np

        out = []
        for windows in await self.encoder.embed_windows(texts):
            probs = self.head.probabilities(np.array([v for v, _ in windows]))  # (windows, labels)
            worst = int(np.argmin(probs[:, 0]))
            out.append((probs[worst], worst))
        return out

    async def scores(self, items: Sequence[ScanInput], prompts: list[str]) -> list[float]:
        return [1.0 - float(p[0]) for p, _ in await self._most_unsafe([item.text for item in items])]

    async def answer(self, item: ScanInput, prompt: str) -> str:
        [(probs, worst)] = await self._most_unsafe([item.text])
        if self.categories is None:
            return f"unsafe\n{self.head.labels[1 + int(probs[1:].argmax())]}"
        window = self.encoder.windows(item.text)[worst][0]
        categories = self.categories  # on the encoder's thread, as its own passes run: one OpenMP team
        [named] = await asyncio.wrap_future(self.encoder.runner.call(lambda: categories.probabilities([window])))
        return f"unsafe\n{self.categories.labels[int(named.argmax())]}"


def _conversation(item: ScanInput) -> list[Message]:
    """What Llama Guard judges for ``item``: the turns before it, then it (a prompt or the response)."""
    return [*item.conversation, Message(item.role if item.role is not Role.SYSTEM else Role.USER, item.text)]


@register
class LlamaGuardScanner(Scanner):
    config_model = LlamaGuardConfig
    config: LlamaGuardConfig

    def __init__(self, config: LlamaGuardConfig) -> None:
        super().__init__(config)
        forced = None if config.variant == "auto" else config.variant
        if config.endpoint:
            self.backend: _Backend = _RemoteBackend(config)
        elif config.model.startswith("embedded:"):
            self.backend = _EmbeddedBackend(config)
        else:
            self.backend = _LocalBackend(config, forced)
        self.variant = self.backend.variant
        self.categories = lgp.rendered_categories(self.variant, config.categories, config.excluded)
        self._group_thresholds = [
            (frozenset(code.strip() for code in group.split(",")), value)
            for group, value in config.category_thresholds.items()
        ]
        self._gate = min([config.threshold, *config.category_thresholds.values()])

    def _code_threshold(self, code: str) -> float:
        matches = [value for codes, value in self._group_thresholds if code in codes]
        return min(matches) if matches else self.config.threshold

    def prompt(self, item: ScanInput) -> str:
        return lgp.render(
            _conversation(item), variant=self.variant, categories=self.config.categories, excluded=self.config.excluded
        )

    async def scan(self, batch: Sequence[ScanInput]) -> list[ScanResult]:
        prompts = [self.prompt(item) if self.backend.uses_prompt else "" for item in batch]
        scores = await self.backend.scores(batch, prompts)
        answers = await asyncio.gather(
            *(
                self.backend.answer(item, p) if s >= self._gate and s > 0 else _none()
                for item, p, s in zip(batch, prompts, scores, strict=True)
            )
        )
        return [self._result(item, min(max(s, 0.0), 1.0), a) for item, s, a in zip(batch, scores, answers, strict=True)]

    def _result(self, item: ScanInput, score: float, answer: str | None) -> ScanResult:
        if answer is None:  # under every threshold: nothing was generated
            return self.result(item, score=score, reason=f"Llama Guard p_unsafe {score:.3f}")
        unsafe, codes = lgp.parse_answer(answer, excluded=self.config.excluded)
        named_unsafe = answer.strip().lower().startswith("unsafe")
        if named_unsafe and not unsafe:
            return ScanResult(
                self.id,
                Decision.ALLOW,
                score,
                reason=f"Llama Guard p_unsafe {score:.3f}, only excluded categories named",
            )
        if codes:
            reason = f"Llama Guard p_unsafe {score:.3f}, categories {','.join(codes)}"
            fired = [c for c in codes if score >= self._code_threshold(c)]
            if not fired:  # the categories it named each need a higher score
                return ScanResult(
                    self.id, Decision.ALLOW, score, tuple(codes), reason=reason + " (under their thresholds)"
                )
            findings = tuple(
                Finding(rule=c, message_index=item.index, detail=self.categories.get(c, "").split("\n")[0])
                for c in fired
            )
            return ScanResult(self.id, self._action, score, tuple(fired), findings, reason)
        # The score passed but no category came back (a bare 'unsafe', 'safe' under a low threshold, or an answer
        # that does not parse): decide on the score alone, which fails closed.
        return self.result(
            item,
            score=score,
            reason=f"Llama Guard p_unsafe {score:.3f}; no category named (answered {answer.strip()[:40]!r})",
        )

    async def aclose(self) -> None:
        await self.backend.aclose()


async def _none() -> None:
    return None
