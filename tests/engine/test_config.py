"""Config mapping from config.json, and RoPE frequencies against transformers."""

from __future__ import annotations

import pytest
import torch

from guardrails.engine import ModelConfig
from guardrails.engine.model import rope_frequencies

SCOUT_TEXT = {  # Llama-4-Scout-17B-16E-Instruct's text_config, abridged
    "model_type": "llama4_text",
    "vocab_size": 202048,
    "hidden_size": 5120,
    "intermediate_size": 8192,
    "intermediate_size_mlp": 16384,
    "num_hidden_layers": 48,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "num_local_experts": 16,
    "num_experts_per_tok": 1,
    "interleave_moe_layer_step": 1,
    "use_qk_norm": True,
    "attention_chunk_size": 8192,
    "attn_temperature_tuning": True,
    "floor_scale": 8192,
    "attn_scale": 0.1,
    "rope_theta": 500000.0,
    "eos_token_id": [200001, 200007, 200008],
    "rope_scaling": {
        "factor": 16.0,
        "high_freq_factor": 1.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
}


def test_llama4_scout_config():
    cfg = ModelConfig.from_hf({"model_type": "llama4", "text_config": SCOUT_TEXT})
    assert cfg.family == "llama4" and cfg.num_layers == 48 and cfg.head_dim == 128
    assert cfg.moe_layers == (True,) * 48 and cfg.num_experts == 16 and cfg.top_k == 1
    assert cfg.moe_intermediate_size == cfg.shared_expert_size == 8192 and cfg.intermediate_size == 16384
    assert [i for i, r in enumerate(cfg.rope_layers) if not r] == list(range(3, 48, 4))  # NoPE every 4th layer
    assert cfg.attn_windows[0] == ("chunk", 8192) and cfg.attn_windows[3] is None
    assert cfg.router == "sigmoid" and cfg.rope_interleaved and cfg.qk_norm == "l2"
    assert cfg.eos_token_ids == (200001, 200007, 200008)


def test_maverick_interleaves_dense_and_moe_layers():
    cfg = ModelConfig.from_hf(
        {**SCOUT_TEXT, "interleave_moe_layer_step": 2, "num_local_experts": 128, "use_qk_norm": False}
    )
    assert cfg.moe_layers[:4] == (False, True, False, True) and sum(cfg.moe_layers) == 24 and cfg.qk_norm is None


def test_qwen2_moe_dense_layers_and_shared_expert():
    hf = {
        "model_type": "qwen2_moe",
        "vocab_size": 10,
        "hidden_size": 8,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "moe_intermediate_size": 4,
        "shared_expert_intermediate_size": 12,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "decoder_sparse_step": 2,
        "mlp_only_layers": [3],
    }
    cfg = ModelConfig.from_hf(hf)
    assert cfg.moe_layers == (False, True, False, False)
    assert cfg.qkv_bias and not cfg.o_bias and cfg.shared_expert_gate and cfg.shared_expert_size == 12


@pytest.mark.parametrize("low, high", [(1.0, 4.0), (1.0, 1.0)])
def test_llama3_rope_scaling_matches_transformers(low, high):
    """Scout sets low == high: transformers' blend divides by zero there; ours skips the (empty) band."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": 64,
    }
    hf = LlamaConfig(hidden_size=512, num_attention_heads=4, rope_parameters={"rope_theta": 500000.0, **scaling})
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    ours = rope_frequencies(ModelConfig.from_hf({**hf.to_dict(), "model_type": "llama"}))
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, expected.float(), rtol=1e-6, atol=0)
    assert not torch.equal(
        ours,
        rope_frequencies(
            ModelConfig.from_hf({**hf.to_dict(), "model_type": "llama", "rope_parameters": {"rope_theta": 500000.0}})
        ),
    )


def test_unsupported_rope_scaling_is_an_error():
    cfg = ModelConfig.from_hf(
        {
            "model_type": "llama",
            "vocab_size": 4,
            "hidden_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "rope_scaling": {"rope_type": "yarn", "factor": 4.0},
        }
    )
    with pytest.raises(ValueError, match="unsupported RoPE scaling 'yarn'"):
        rope_frequencies(cfg)
