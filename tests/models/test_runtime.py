from __future__ import annotations

import asyncio
import threading
import time

import pytest

from guardrails.models import BatchRunner


def echo(batch):
    """Each sequence's sum and the batch it ran in (to see how jobs were grouped)."""
    return [(sum(seq), len(batch), max(len(s) for s in batch)) for seq in batch]


def test_outputs_come_back_to_each_caller_in_order():
    runner = BatchRunner(echo, max_batch=4, max_wait_ms=0)
    assert [o[0] for o in runner.submit([[1], [2, 3], [4, 5, 6]]).result(timeout=5)] == [1, 5, 15]
    assert runner.submit([]).result(timeout=5) == []
    runner.close()


def test_concurrent_jobs_share_a_batch_within_the_wait_budget():
    runner = BatchRunner(echo, max_batch=8, max_wait_ms=300)
    futures = [runner.submit([[i]]) for i in range(8)]
    outputs = [f.result(timeout=5)[0] for f in futures]
    assert [o[0] for o in outputs] == list(range(8))
    assert runner.stats.batches == 1 and runner.stats.mean_batch == 8
    runner.close()


def test_a_lone_job_waits_at_most_the_wait_budget():
    runner = BatchRunner(echo, max_batch=8, max_wait_ms=50)
    start = time.monotonic()
    runner.submit([[1]]).result(timeout=5)
    assert time.monotonic() - start < 5  # bounded by the budget, not by max_batch ever filling
    assert runner.stats.batches == 1
    runner.close()


def test_batches_respect_max_batch_and_the_padded_token_budget():
    runner = BatchRunner(echo, max_batch=3, max_tokens=20, max_wait_ms=0)
    seqs = [[1] * n for n in (2, 9, 3, 10, 1, 4)]
    outputs = runner.submit(seqs).result(timeout=5)
    for _, size, longest in outputs:
        assert size <= 3 and size * longest <= 20
    assert [o[0] for o in outputs] == [len(s) for s in seqs]
    # length-sorted: the short sequences were not padded to the long ones
    assert outputs[4][2] == 3 and outputs[0][2] == 3 and outputs[3][2] == 10
    runner.close()


def test_a_failing_forward_pass_fails_every_waiting_caller_and_the_runner_goes_on():
    calls = []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory")
        return echo(batch)

    runner = BatchRunner(flaky, max_batch=4, max_wait_ms=100)
    futures = [runner.submit([[1]]) for _ in range(3)]
    for f in futures:
        with pytest.raises(RuntimeError, match="out of memory"):
            f.result(timeout=5)
    assert runner.submit([[2]]).result(timeout=5)[0][0] == 2
    runner.close()


async def test_async_callers_on_different_loops_and_threads():
    runner = BatchRunner(echo, max_batch=16, max_wait_ms=100)
    results = []

    def in_thread(i):
        results.append(asyncio.run(runner.run([[i, i]]))[0][0])

    threads = [threading.Thread(target=in_thread, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    local = await asyncio.gather(*(runner.run([[i]]) for i in range(4)))
    for t in threads:
        t.join()
    assert sorted(results) == [0, 2, 4, 6] and [r[0][0] for r in local] == [0, 1, 2, 3]
    runner.close()


def test_closed_runner_refuses_work():
    runner = BatchRunner(echo)
    runner.close()
    with pytest.raises(RuntimeError, match="closed"):
        runner.submit([[1]])


def test_a_call_runs_on_the_runner_thread_between_passes_and_its_error_reaches_only_its_caller():
    threads = []

    def forward(batch):
        threads.append(threading.current_thread().name)
        return [len(s) for s in batch]

    runner = BatchRunner(forward, max_batch=8, max_wait_ms=0, name="calls")
    try:
        called = runner.call(lambda: threading.current_thread().name)
        assert called.result(timeout=5) == "guardrails-calls"
        failing = runner.call(lambda: 1 / 0)
        passes = runner.submit([[1, 2], [3]])
        with pytest.raises(ZeroDivisionError):
            failing.result(timeout=5)
        assert passes.result(timeout=5) == [2, 1] and threads == ["guardrails-calls"]
    finally:
        runner.close()
