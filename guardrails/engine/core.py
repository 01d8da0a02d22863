"""The synchronous engine core: ``step()`` = schedule -> run -> sample and postprocess. Single-threaded."""

from __future__ import annotations

from collections.abc import Callable

from .model import Transformer
from .runner import ModelRunner
from .sampling import sample
from .scheduler import BlockManager, Scheduler
from .sequence import Sequence

__all__ = ["EngineCore"]

Output = tuple[Sequence, str]  # a sequence that advanced, and the text it may send now


class EngineCore:
    def __init__(
        self,
        model: Transformer,
        *,
        max_num_seqs: int = 32,
        max_num_batched_tokens: int = 512,
        block_size: int = 16,
        kv_cache_tokens: int = 8192,
    ) -> None:
        num_blocks = -(-kv_cache_tokens // block_size)
        self.model = model
        self.runner = ModelRunner(model, num_blocks=num_blocks, block_size=block_size)
        self.scheduler = Scheduler(
            BlockManager(num_blocks, block_size),
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
        )
        self.steps = 0

    def add(self, seq: Sequence) -> None:
        self.scheduler.add(seq)

    def abort(self, seq: Sequence) -> None:
        self.scheduler.finish(seq)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def step(self) -> list[Output]:
        scheduled = self.scheduler.schedule()
        if not scheduled:
            return []
        logits, samplers = self.runner.run(scheduled)
        for seq, n in scheduled:
            seq.num_computed += n
        self.steps += 1
        tokens = sample(
            logits, [s.params for s in samplers], [s.token_ids for s in samplers], [s.generator for s in samplers]
        )
        outputs = []
        for seq, token in zip(samplers, tokens, strict=True):
            delta = seq.append(token)
            if seq.finished:
                self.scheduler.finish(seq)
            outputs.append((seq, delta))
        return outputs

    def run_until_done(self, on_output: Callable[[Sequence, str], None] | None = None) -> int:
        """Step until no work is left; returns the number of steps."""
        start = self.steps
        while self.has_work():
            for seq, delta in self.step():
                if on_output is not None:
                    on_output(seq, delta)
        return self.steps - start
