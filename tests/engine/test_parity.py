"""The engine against transformers on tiny random checkpoints of every family: logits and greedy tokens."""

from __future__ import annotations

import pytest
import torch
from engine_checkpoints import FAMILIES, VOCAB

from guardrails.engine import EngineCore, SamplingParams, load_model
from guardrails.engine.runner import forward_logits
from guardrails.engine.sequence import Sequence

PROMPTS = [torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (1, 6, 21, 40)]


@pytest.fixture(scope="module")
def models(checkpoints):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = load_model(checkpoints(family))
        return cache[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_last_position_logits_match_transformers(family, checkpoints, reference, models):
    hf, ours = reference(checkpoints(family)), models(family)
    for prompt in PROMPTS:
        with torch.inference_mode():
            expected = hf(torch.tensor([prompt])).logits[0, -1]
        got = forward_logits(ours, prompt)[-1]
        assert expected.abs().max() > 0.5  # the logits spread out: a wrong formula cannot hide under 1e-4
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_32_tokens_match_transformers(family, checkpoints, reference, models):
    """Through the full engine: paged cache (4-token blocks), chunked prefill (12-token budget), batched decodes."""
    hf, model = reference(checkpoints(family)), models(family)
    expected = []
    for prompt in PROMPTS[1:]:
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)
        expected.append(out[0, len(prompt) :].tolist())
    core = EngineCore(model, max_num_batched_tokens=12, block_size=4, kv_cache_tokens=512)
    seqs = [Sequence(p, SamplingParams(max_tokens=32)) for p in PROMPTS[1:]]
    for seq in seqs:
        core.add(seq)
    core.run_until_done()
    assert [s.output_ids for s in seqs] == expected
    assert len(set(map(tuple, expected))) == len(expected)  # not a degenerate model that repeats one answer


def test_llama4_config_exercises_nope_chunks_and_temperature(checkpoints):
    from guardrails.engine import ModelConfig

    cfg = ModelConfig.from_pretrained(checkpoints("llama4_step2"))
    assert cfg.rope_layers == (True, True, True, False)
    assert cfg.attn_windows == (("chunk", 8),) * 3 + (None,)
    assert cfg.moe_layers == (False, True, False, True)
    assert cfg.attn_temperature == (0.5, 4) and cfg.qk_norm is None
    assert ModelConfig.from_pretrained(checkpoints("llama4_step1")).moe_layers == (True,) * 4


@pytest.mark.parametrize("family", ["llama4_step1", "mixtral"])
def test_experts_run_once_per_step_on_their_routed_tokens_only(family, models, monkeypatch):
    from guardrails.engine.model import MoE

    model, calls = models(family), []
    expert = MoE.expert

    def counting(self, e, x, w):
        calls.append((id(self), e, x.shape[0]))
        return expert(self, e, x, w)

    monkeypatch.setattr(MoE, "expert", counting)
    forward_logits(model, PROMPTS[3])  # 40 tokens
    layers = {layer for layer, _, _ in calls}
    k, experts = model.cfg.top_k, model.cfg.num_experts
    assert len(layers) == sum(model.cfg.moe_layers)
    for layer in layers:
        mine = [(e, n) for owner, e, n in calls if owner == layer]
        assert len({e for e, _ in mine}) == len(mine) <= experts  # one grouped call per expert used
        assert sum(n for _, n in mine) == 40 * k  # every token reaches exactly its top-k experts
    calls.clear()
    forward_logits(model, PROMPTS[0])  # one token: only its top-k experts run
    assert len(calls) == sum(model.cfg.moe_layers) * k and all(n == 1 for *_, n in calls)
