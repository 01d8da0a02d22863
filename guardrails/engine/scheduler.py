"""Continuous batching: which sequences run in the next step, and how many of their tokens.

Every step the scheduler fills a token budget: first one token for each running sequence that is decoding (latency
first), then the next chunk of each running sequence still in prefill, then new requests, whose prompts are cut into
chunks to fit. Requests join and leave at every step. KV memory is paged: a sequence holds a list of fixed-size blocks
(its block table) and takes a new block only when it fills the last one. When blocks run out, the newest running
sequence is preempted: its blocks are freed and it re-enters the queue at the front, to be recomputed (prompt and the
tokens generated so far) when memory allows. The scheduler holds no tensors.
"""

from __future__ import annotations

from collections import deque

from .sequence import Sequence, Status

__all__ = ["BlockManager", "Scheduler"]


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.free_blocks: deque[int] = deque(range(num_blocks))

    def needed(self, seq: Sequence, n: int) -> int:
        """New blocks ``seq`` needs to cache ``n`` more tokens."""
        return max(0, -(-(seq.num_computed + n) // self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, n: int) -> bool:
        return self.needed(seq, n) <= len(self.free_blocks)

    def allocate(self, seq: Sequence, n: int) -> None:
        for _ in range(self.needed(seq, n)):
            seq.block_table.append(self.free_blocks.popleft())

    def free(self, seq: Sequence) -> None:
        self.free_blocks.extend(seq.block_table)
        seq.block_table = []


class Scheduler:
    def __init__(self, blocks: BlockManager, *, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        capacity = self.blocks.num_blocks * self.blocks.block_size
        if seq.num_tokens + seq.params.max_tokens > capacity:
            raise ValueError(
                f"prompt ({seq.num_tokens} tokens) + max_tokens ({seq.params.max_tokens}) exceed the KV cache "
                f"({capacity} tokens): shorten the prompt, lower max_tokens or raise kv_cache_tokens"
            )
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence) -> None:
        """Drop a sequence that finished or was aborted, and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq)
        seq.status = Status.FINISHED

    def schedule(self) -> list[tuple[Sequence, int]]:
        """(sequence, number of its next tokens to run) for the next step; the blocks for them are allocated."""
        budget = self.max_num_batched_tokens
        scheduled: dict[Sequence, int] = {}
        for seq in sorted(self.running, key=lambda s: s.remaining > 1):  # decodes first (stable order)
            if seq.status is not Status.RUNNING or budget == 0:
                continue
            n = min(seq.remaining, budget)
            while not self.blocks.can_allocate(seq, n):
                victim = next((s for s in reversed(self.running) if s is not seq and s not in scheduled), seq)
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.status is Status.RUNNING:
                self.blocks.allocate(seq, n)
                scheduled[seq] = n
                budget -= n
        while self.waiting and budget and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            n = min(seq.remaining, budget)
            if not self.blocks.can_allocate(seq, n):
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            self.blocks.allocate(seq, n)
            scheduled[seq] = n
            budget -= n
        return list(scheduled.items())

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.num_computed = 0
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
