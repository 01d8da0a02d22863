"""Micro-batching of model forward passes across concurrent requests.

A :class:`BatchRunner` owns one worker thread. Callers submit a job (the sequences of one request: its turns, its
windows) and get a future. The worker takes the first job waiting, then keeps collecting jobs until it holds
``max_batch`` sequences or ``max_wait_ms`` has passed since that first job arrived; it sorts the sequences by length
and cuts them into sub-batches of at most ``max_batch`` sequences and ``max_tokens`` padded tokens (length
bucketing: short prompts are not padded to the longest one), runs each through ``forward`` and hands every job its
outputs. One request alone waits at most ``max_wait_ms`` more than it would unbatched; under load, requests that
arrive within a few milliseconds share one forward pass.

The runner is thread-based, so the async pipeline, the sync API and any event loop can share one model.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["BatchRunner", "BatchStats", "pad_right"]

log = logging.getLogger("guardrails.models")

T = TypeVar("T")  # what forward returns per sequence

Forward = Callable[[list[Sequence[int]]], list[T]]


@dataclass
class BatchStats:
    batches: int = 0
    sequences: int = 0
    jobs: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    sizes: list[int] = field(default_factory=list)  # sequences per forward pass, the most recent 1,000

    @property
    def mean_batch(self) -> float:
        return self.sequences / self.batches if self.batches else 0.0


class _Job:
    __slots__ = ("sequences", "future", "arrived", "call")

    def __init__(self, sequences: list[Sequence[int]], call: Callable[[], Any] | None = None) -> None:
        self.sequences = sequences
        self.future: Future = Future()
        self.arrived = time.monotonic()
        self.call = call


class BatchRunner(Generic[T]):
    """Runs ``forward`` over micro-batches of sequences gathered from concurrent callers (see the module docs)."""

    def __init__(
        self,
        forward: Forward,
        *,
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        max_tokens: int = 16_384,
        name: str = "model",
    ) -> None:
        if max_batch < 1 or max_tokens < 1:
            raise ValueError("max_batch and max_tokens must be at least 1")
        self._forward = forward
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_tokens = max_tokens
        self.stats = BatchStats()
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"guardrails-{name}", daemon=True)
        self._thread.start()

    def submit(self, sequences: Sequence[Sequence[int]]) -> Future:
        """A future of ``forward``'s outputs for ``sequences``, in order."""
        job = _Job(list(sequences))
        if not job.sequences:
            job.future.set_result([])
            return job.future
        return self._enqueue(job)

    async def run(self, sequences: Sequence[Sequence[int]]) -> list[T]:
        return await asyncio.wrap_future(self.submit(sequences))

    def call(self, fn: Callable[[], Any]) -> Future:
        """A future of ``fn()``, run on the runner's thread between forward passes: for other PyTorch work of the
        same model (a second OpenMP team, which another thread's ops would start, slows every pass; see
        bench/embedded_latency.py)."""
        return self._enqueue(_Job([()], call=fn))  # counts as one sequence in the batch it is taken with

    def _enqueue(self, job: _Job) -> Future:
        with self._cond:
            if self._closed:
                raise RuntimeError("the model runner is closed")
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return sum(len(j.sequences) for j in self._jobs)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def _take(self) -> list[_Job] | None:
        """Wait for jobs; return those that form the next batch (None once closed and drained)."""
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._jobs[0].arrived + self.max_wait
            while sum(len(j.sequences) for j in self._jobs) < self.max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(timeout=remaining)
            taken, count = [], 0
            while self._jobs and (not taken or count + len(self._jobs[0].sequences) <= self.max_batch):
                job = self._jobs.popleft()
                taken.append(job)
                count += len(job.sequences)
            return taken

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            for call in [job for job in jobs if job.call is not None]:
                try:
                    call.future.set_result(call.call())
                except BaseException as exc:  # noqa: BLE001 - the caller gets the error
                    call.future.set_exception(exc)
            jobs = [job for job in jobs if job.call is None]
            if not jobs:
                continue
            try:
                outputs = self._execute([s for job in jobs for s in job.sequences])
            except BaseException as exc:  # noqa: BLE001 - every waiting caller gets the error
                log.warning("forward pass failed for %d requests: %s: %s", len(jobs), type(exc).__name__, exc)
                for job in jobs:
                    job.future.set_exception(exc)
                continue
            at = 0
            for job in jobs:
                n = len(job.sequences)
                job.future.set_result(outputs[at : at + n])
                at += n
            self.stats.jobs += len(jobs)

    def _execute(self, sequences: list[Sequence[int]]) -> list[T]:
        """Run all sequences: sorted by length, cut into batches by count and padded size, results back in order."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        results: list[Any] = [None] * len(sequences)
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and end - start < self.max_batch:
                longest = len(sequences[order[end]])  # sorted: the new one is the longest
                if longest * (end - start + 1) > self.max_tokens:
                    break
                end += 1
            chunk = order[start:end]
            batch = [sequences[i] for i in chunk]
            for i, out in zip(chunk, self._forward(batch), strict=True):
                results[i] = out
            stats = self.stats
            stats.batches += 1
            stats.sequences += len(batch)
            stats.real_tokens += sum(len(s) for s in batch)
            stats.padded_tokens += len(batch[-1]) * len(batch)
            stats.sizes = (stats.sizes + [len(batch)])[-1000:]
            start = end
        return results


def pad_right(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask) as (batch, longest) long tensors, each sequence left-aligned and padded right."""
    import torch

    longest = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return input_ids, mask
