"""Checkpoint layouts (sharded, fused / per-expert experts, Llama 4 multimodal prefix), dtypes and int8."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from engine_checkpoints import VOCAB
from safetensors.torch import save_file

from guardrails.engine import ModelConfig, load_model
from guardrails.engine.quant import Int8Weight, native_bf16
from guardrails.engine.runner import forward_logits

PROMPT = torch.randint(3, VOCAB, (24,), generator=torch.Generator().manual_seed(7)).tolist()


def save_sharded(tensors: dict[str, torch.Tensor], config: dict, path, shards: int = 3) -> None:
    path.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n].contiguous() for n in names[i::shards]}
        save_file(part, str(path / file))
        weight_map.update(dict.fromkeys(part, file))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps(config))


def test_fused_experts_in_shards_load_like_per_expert(checkpoints, reference, tmp_path):
    """transformers 5 holds Mixtral's experts fused [E, 2I, H]: a checkpoint saved from memory has that layout."""
    source = checkpoints("mixtral")
    state = reference(source).state_dict()
    assert "model.layers.0.mlp.experts.gate_up_proj" in state
    save_sharded(state, json.loads((source / "config.json").read_text()), tmp_path / "fused")
    expected = forward_logits(load_model(source), PROMPT)
    torch.testing.assert_close(forward_logits(load_model(tmp_path / "fused"), PROMPT), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prefix", ["language_model.", "model.language_model."])
def test_llama4_multimodal_checkpoint_with_per_expert_weights(prefix, checkpoints, reference, tmp_path):
    """Text weights under a prefix, config in text_config, vision tower skipped, experts one module each."""
    source = checkpoints("llama4_step2")
    text_config = json.loads((source / "config.json").read_text())
    tensors = {}
    for name, t in reference(source).state_dict().items():
        if name.endswith("experts.gate_up_proj"):  # [E, H, 2I] -> experts.{j}.{gate,up}_proj.weight [I, H]
            stem, inner = name[: -len("gate_up_proj")], t.shape[2] // 2
            for j in range(t.shape[0]):
                tensors[f"{stem}{j}.gate_proj.weight"] = t[j, :, :inner].T
                tensors[f"{stem}{j}.up_proj.weight"] = t[j, :, inner:].T
        elif name.endswith("experts.down_proj"):  # [E, I, H] -> experts.{j}.down_proj.weight [H, I]
            for j in range(t.shape[0]):
                tensors[f"{name[: -len('down_proj')]}{j}.down_proj.weight"] = t[j].T
        else:
            tensors[name] = t
    if prefix == "language_model.":
        tensors = {prefix + n: t for n, t in tensors.items()}
    else:
        tensors = {n.replace("model.", prefix, 1) if n.startswith("model.") else n: t for n, t in tensors.items()}
    tensors["vision_model.patch_embedding.weight"] = torch.zeros(2, 2)
    config = {"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"], "text_config": text_config}
    save_sharded(tensors, config, tmp_path / "mm")
    assert ModelConfig.from_pretrained(tmp_path / "mm").family == "llama4"
    expected = reference(source)(torch.tensor([PROMPT])).logits[0].detach()
    torch.testing.assert_close(forward_logits(load_model(tmp_path / "mm"), PROMPT), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_bf16_weights_stay_bf16_and_track_fp32(family, checkpoints):
    fp32 = forward_logits(load_model(checkpoints(family)), PROMPT)
    model = load_model(checkpoints(family), dtype=torch.bfloat16)
    assert model.layers[0].attn.wqkv.weight.dtype == torch.bfloat16
    assert model.act_dtype == (torch.bfloat16 if native_bf16() else torch.float32)
    bf16 = forward_logits(model, PROMPT)
    assert (bf16 - fp32).abs().max() < 0.03 * fp32.abs().max()


@pytest.mark.parametrize("family", ["llama", "llama4_step1"])
def test_int8_weight_only(family, checkpoints):
    fp32 = forward_logits(load_model(checkpoints(family)), PROMPT)
    model = load_model(checkpoints(family), int8=True)
    assert isinstance(model.layers[0].attn.wqkv.weight, Int8Weight) and isinstance(model.layers[0].ffn.w13, Int8Weight)
    assert isinstance(model.lm_head, Int8Weight)  # tied embeddings get a quantised head; the lookup stays exact
    q = forward_logits(model, PROMPT)
    close = (q - fp32).abs().amax(-1) < 0.05 * fp32.abs().max()  # per position (top-1 routing may flip on a near-tie)
    assert close.float().mean() > 0.9


def test_missing_tensor_and_unknown_family_are_named(checkpoints, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoints("llama"), broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(KeyError, match="model.layers.2.self_attn.q_proj.weight"):
        load_model(broken)
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"config\.json: unsupported model_type 'gpt2'"):
        load_model(broken)


def test_weights_move_into_one_huge_page_mapping(checkpoints):
    """Every CPU weight lives in one mapping advised for 2 MB pages, 64-byte aligned, with its values unchanged."""
    from guardrails.engine.loader import _on_huge_pages

    sd = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int64), "c": torch.randn(64, 64).bfloat16()}
    expected = {name: t.clone() for name, t in sd.items()}
    moved = _on_huge_pages(sd)
    assert sd == {}  # the originals are let go as they are copied
    starts = sorted(t.data_ptr() for t in moved.values())
    assert starts[0] % (2 << 20) == 0 and all(p % 64 == 0 for p in starts)
    assert starts[-1] - starts[0] < 64 * 64 * 2 + 256  # one mapping, packed
    for name, t in moved.items():
        assert torch.equal(t, expected[name]) and t.dtype == expected[name].dtype and t.is_contiguous()
    model = load_model(checkpoints("llama"), dtype=torch.bfloat16)
    base = model.embed.weight.untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == base for p in model.parameters())


def test_bf16_weights_upcast_in_and_out_of_inference_mode():
    """The per-thread scratch that bf16 weights are widened into: made under inference_mode (a decode step), it is
    replaced, not written, when the same thread later computes outside it (a plain call, as the parity tests make)."""
    from guardrails.engine import native
    from guardrails.engine.quant import linear

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(48, 32, generator=gen).to(torch.bfloat16)
    x = torch.randn(native.MAX_ROWS + 8, 32, generator=gen)  # more rows than the native GEMV takes
    expected = x @ w.float().T
    with torch.inference_mode():
        assert torch.allclose(linear(x, w), expected, atol=1e-4)
    assert torch.allclose(linear(x, w), expected, atol=1e-4)
