"""The same engine on CUDA (skipped without a GPU): parity with transformers and with the CPU engine."""

from __future__ import annotations

import pytest
import torch
from engine_checkpoints import VOCAB

from guardrails.engine import EngineCore, SamplingParams, load_model
from guardrails.engine.runner import forward_logits
from guardrails.engine.sequence import Sequence

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PROMPTS = [torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (6, 21, 40)]


@pytest.fixture(autouse=True)
def exact_matmuls():
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


def generate(model, prompts, **params) -> list[list[int]]:
    core = EngineCore(model, max_num_batched_tokens=12, block_size=4, kv_cache_tokens=512)
    seqs = [Sequence(p, SamplingParams(max_tokens=32, **params)) for p in prompts]
    for seq in seqs:
        core.add(seq)
    core.run_until_done()
    return [s.output_ids for s in seqs]


@pytest.mark.parametrize(
    "family", ["llama", "llama4_step1", "llama4_step2", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe"]
)
def test_cuda_matches_transformers_and_the_cpu_engine(family, checkpoints, reference):
    hf = reference(checkpoints(family))
    model = load_model(checkpoints(family), device="cuda")
    assert model.embed.weight.is_cuda and model.act_dtype == torch.float32
    for prompt in PROMPTS:
        with torch.inference_mode():
            expected = hf(torch.tensor([prompt])).logits[0, -1]
        torch.testing.assert_close(forward_logits(model, prompt)[-1].cpu(), expected, atol=1e-4, rtol=0)
    assert generate(model, PROMPTS) == generate(load_model(checkpoints(family)), PROMPTS)


def test_cuda_bf16_and_seeded_sampling(checkpoints):
    fp32 = load_model(checkpoints("mixtral"), device="cuda")
    bf16 = load_model(checkpoints("mixtral"), device="cuda", dtype=torch.bfloat16)
    assert bf16.act_dtype == torch.bfloat16
    a, b = forward_logits(fp32, PROMPTS[1]), forward_logits(bf16, PROMPTS[1])
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    sampled = generate(bf16, PROMPTS, temperature=1.0, top_p=0.9, seed=1)
    assert sampled == generate(bf16, PROMPTS, temperature=1.0, top_p=0.9, seed=1)
