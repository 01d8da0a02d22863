"""GGUF: a tiny Llama written as llama.cpp would (permuted q/k rows, F32 or Q8_0), converted, cached, loaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from engine_checkpoints import CHAT_TEMPLATE, EOS, VOCAB, build_checkpoint

from guardrails.engine import Engine, load_model
from guardrails.engine.runner import forward_logits

gguf = pytest.importorskip("gguf")

PROMPT = torch.randint(3, VOCAB, (30,), generator=torch.Generator().manual_seed(11)).tolist()
NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to q/k rows (``convert_hf_to_gguf.LlamaModel.permute``)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(source, path, qtype) -> None:
    from safetensors.torch import load_file

    config = json.loads((source / "config.json").read_text())
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(config["head_dim"])
    vocab = sorted(tokenizer["model"]["vocab"].items(), key=lambda kv: kv[1])
    specials = {t["content"] for t in tokenizer["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types([3 if t in specials else 1 for t, _ in vocab])
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tokenizer["model"]["merges"]])
    writer.add_eos_token_id(EOS)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, t in load_file(str(source / "model.safetensors")).items():
        w = t.float().numpy()
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            stem, suffix = rest.rsplit(".", 1)
            gname = f"blk.{layer}.{NAMES[stem]}.{suffix}"
            if stem == "self_attn.q_proj":
                w = llama_cpp_permute(w, config["num_attention_heads"])
            elif stem == "self_attn.k_proj":
                w = llama_cpp_permute(w, config["num_key_value_heads"])
        if w.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gname, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gname, np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    return build_checkpoint("llama", tmp_path_factory.mktemp("gguf-source"), rope_parameters=rope)


@pytest.mark.parametrize("qtype, atol", [("F32", 1e-4), ("Q8_0", 0.05)])
def test_converted_gguf_matches_the_source_model(qtype, atol, source, tmp_path):
    from guardrails.engine.gguf import convert_gguf

    file = tmp_path / f"tiny.{qtype}.gguf"
    write_gguf(source, file, getattr(gguf.GGMLQuantizationType, qtype))
    converted = convert_gguf(file, cache=tmp_path / "cache", dtype=torch.float32)
    assert convert_gguf(file, cache=tmp_path / "cache", dtype=torch.float32) == converted  # cached
    assert json.loads((converted / "config.json").read_text())["tie_word_embeddings"] is True
    expected = forward_logits(load_model(source), PROMPT)
    got = forward_logits(load_model(converted), PROMPT)
    torch.testing.assert_close(got, expected, atol=atol * expected.abs().max().item(), rtol=0)


def test_engine_from_a_gguf_file(source, tmp_path, monkeypatch):
    file = tmp_path / "tiny.gguf"
    write_gguf(source, file, gguf.GGMLQuantizationType.F32)
    monkeypatch.setenv("GUARDRAILS_CACHE", str(tmp_path / "cache"))
    engine = Engine.from_pretrained(file)
    try:
        text = "def reverse(s):\n    return s[::-1]"
        original = Engine.from_pretrained(source, dtype=torch.bfloat16)  # the cache holds bf16 by default
        assert engine.encode(text) == original.encode(text)
        messages = [{"role": "user", "content": "hi"}]
        assert engine.encode(messages) == original.encode(messages)
        assert EOS in engine.eos_token_ids
        out = engine.generate_sync(PROMPT, max_tokens=8, ignore_eos=True)
        assert out.token_ids == original.generate_sync(PROMPT, max_tokens=8, ignore_eos=True).token_ids
        original.close()
    finally:
        engine.close()
    assert any((tmp_path / "cache" / "engine").iterdir())
