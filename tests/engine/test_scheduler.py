"""Continuous batching: requests joining and leaving every step give the tokens of one-at-a-time generation."""

from __future__ import annotations

import pytest
import torch
from engine_checkpoints import VOCAB

from guardrails.engine import EngineCore, SamplingParams, load_model
from guardrails.engine.sequence import Sequence, Status

LENGTHS = [3, 30, 9, 50, 1, 17]
MAX_TOKENS = [20, 5, 32, 12, 25, 8]
PROMPTS = [torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(100 + n)).tolist() for n in LENGTHS]


def requests(**params) -> list[Sequence]:
    return [
        Sequence(p, SamplingParams(max_tokens=m, ignore_eos=True, **params))
        for p, m in zip(PROMPTS, MAX_TOKENS, strict=True)
    ]


def one_at_a_time(model) -> list[list[int]]:
    out = []
    for seq in requests():
        core = EngineCore(model, block_size=4, kv_cache_tokens=256)
        core.add(seq)
        core.run_until_done()
        out.append(seq.output_ids)
    return out


def record_steps(core: EngineCore) -> list[list[tuple[int, int]]]:
    """Wrap the scheduler to record every step's (remaining tokens before the step, tokens scheduled)."""
    steps, schedule = [], core.scheduler.schedule

    def recorded():
        out = schedule()
        steps.append([(s.remaining, n) for s, n in out])
        return out

    core.scheduler.schedule = recorded
    return steps


@pytest.fixture(scope="module", params=["mixtral", "llama4_step1"])
def model(request, checkpoints):
    return load_model(checkpoints(request.param))


def test_requests_arriving_over_time_match_one_at_a_time(model):
    expected = one_at_a_time(model)
    core = EngineCore(model, max_num_batched_tokens=16, block_size=4, kv_cache_tokens=512)
    steps = record_steps(core)
    pending = list(enumerate(requests()))
    seqs = [s for _, s in pending]
    step = 0
    while pending or core.has_work():
        while pending and pending[0][0] * 3 <= step:  # one new request every third step
            core.add(pending.pop(0)[1])
        core.step()
        step += 1
    assert [s.output_ids for s in seqs] == expected
    assert [len(s.output_ids) for s in seqs] == MAX_TOKENS
    assert max(len(s) for s in steps) >= 3  # several sequences shared steps
    assert any(any(n == 1 for _, n in s) and any(n > 1 for _, n in s) for s in steps)  # decodes beside prefill
    assert any(n < r for s in steps for r, n in s if r > 1)  # a prompt was cut into chunks
    assert all(sum(n for _, n in s) <= 16 for s in steps)  # the token budget holds
    assert len(core.scheduler.blocks.free_blocks) == core.scheduler.blocks.num_blocks  # every block came back


def test_preemption_when_the_cache_runs_out_recomputes_the_same_tokens(model):
    expected = one_at_a_time(model)
    core = EngineCore(model, max_num_batched_tokens=64, block_size=4, kv_cache_tokens=72)
    preempted = []
    preempt = core.scheduler._preempt
    core.scheduler._preempt = lambda seq: (preempted.append(seq.id), preempt(seq))
    seqs = requests()
    for seq in seqs:
        core.add(seq)
    core.run_until_done()
    assert preempted  # the cache (72 tokens) cannot hold all six at once
    assert [s.output_ids for s in seqs] == expected
    assert all(s.status is Status.FINISHED and not s.block_table for s in seqs)
    assert len(core.scheduler.blocks.free_blocks) == core.scheduler.blocks.num_blocks


def test_max_num_seqs_and_oversized_requests(model):
    core = EngineCore(model, max_num_seqs=2, block_size=4, kv_cache_tokens=64)
    for seq in requests()[:4]:
        if seq.num_tokens + seq.params.max_tokens <= 64:
            core.add(seq)
    core.step()
    assert len(core.scheduler.running) == 2
    with pytest.raises(ValueError, match="exceed the KV cache"):
        core.add(Sequence(PROMPTS[3], SamplingParams(max_tokens=32)))
