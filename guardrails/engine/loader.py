"""Load a Hugging Face safetensors checkpoint (one file or sharded) into a :class:`Transformer`.

Accepted layouts, per family:

- attention ``self_attn.{q,k,v,o}_proj`` (+ biases, ``q_norm`` / ``k_norm``), fused here into ``wqkv``; Llama 4's
  q/k rows are permuted once so that rotate-half RoPE equals its adjacent-pair (complex) RoPE;
- feed-forward under ``feed_forward.`` (Llama 4), ``block_sparse_moe.`` (Mixtral) or ``mlp.``; routers
  ``router.weight`` or ``gate.weight``;
- experts fused (``experts.gate_up_proj`` + ``experts.down_proj``: [E, H, 2I] / [E, I, H] in-out for Llama 4,
  [E, 2I, H] / [E, H, I] out-in as transformers 5 holds Mixtral, Qwen and OLMoE in memory) or one module per expert
  (``experts.{j}.{gate,up,down}_proj`` or ``experts.{j}.w1|w3|w2``);
- Llama 4 multimodal checkpoints: text weights under ``language_model.`` (or ``model.language_model.``), the config
  in ``text_config``; vision tower and projector skipped.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from .config import ModelConfig
from .model import Transformer, rope_frequencies
from .quant import Int8Weight, native_bf16, quantize_int8

__all__ = ["load_model", "checkpoint_dtype", "hf_state_dict"]

_SKIP = ("vision_model.", "multi_modal_projector.", "model.vision_model.", "model.multi_modal_projector.")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.bfloat16}


def _normalise(key: str) -> str | None:
    if key.startswith(_SKIP):
        return None
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model.") :]
    if key.startswith("language_model."):
        return key[len("language_model.") :]
    return key


def _open(path: Path) -> dict[str, Callable[[], torch.Tensor]]:
    """Normalised name -> loader of that tensor, across all shards."""
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else None
    files = [path / f for f in files] if files else sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    out: dict[str, Callable[[], torch.Tensor]] = {}
    for file in files:
        handle = safe_open(str(file), framework="pt")
        for key in handle.keys():
            name = _normalise(key)
            if name is not None:
                out[name] = lambda h=handle, k=key: h.get_tensor(k)
    return out


def checkpoint_dtype(path: str | Path) -> torch.dtype:
    hf = json.loads((Path(path) / "config.json").read_text())
    name = hf.get("dtype") or hf.get("torch_dtype") or (hf.get("text_config") or {}).get("dtype") or "float32"
    return _DTYPES.get(name, torch.float32)


def _deinterleave(w: torch.Tensor, heads: int, hd: int) -> torch.Tensor:
    """Rows (2i, 2i+1) of each head -> (i, i + hd/2): adjacent-pair RoPE becomes rotate-half."""
    return w.reshape(heads, hd // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def hf_state_dict(cfg: ModelConfig, tensors: dict[str, Callable[[], torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Our parameter names -> tensors, from normalised Hugging Face names."""

    def get(name: str) -> torch.Tensor:
        if name not in tensors:
            raise KeyError(f"checkpoint has no tensor {name!r}")
        return tensors[name]()

    sd = {"embed.weight": get("model.embed_tokens.weight"), "norm.weight": get("model.norm.weight")}
    if not cfg.tie_embeddings:
        sd["lm_head"] = get("lm_head.weight") if "lm_head.weight" in tensors else sd["embed.weight"]
    hd = cfg.head_dim
    for i in range(cfg.num_layers):
        p, o = f"model.layers.{i}.", f"layers.{i}."
        a = p + "self_attn."
        q, k, v = (get(f"{a}{n}_proj.weight") for n in "qkv")
        if cfg.rope_interleaved:
            q, k = _deinterleave(q, cfg.num_heads, hd), _deinterleave(k, cfg.num_kv_heads, hd)
        sd[o + "attn.wqkv.weight"] = torch.cat((q, k, v))
        if cfg.qkv_bias:
            qb, kb, vb = (get(f"{a}{n}_proj.bias") for n in "qkv")
            if cfg.rope_interleaved:
                qb, kb = _deinterleave(qb, cfg.num_heads, hd), _deinterleave(kb, cfg.num_kv_heads, hd)
            sd[o + "attn.wqkv.bias"] = torch.cat((qb, kb, vb))
        sd[o + "attn.wo.weight"] = get(a + "o_proj.weight")
        if cfg.o_bias:
            sd[o + "attn.wo.bias"] = get(a + "o_proj.bias")
        if cfg.qk_norm in ("head", "full"):
            sd[o + "attn.q_norm.weight"], sd[o + "attn.k_norm.weight"] = (
                get(a + "q_norm.weight"),
                get(a + "k_norm.weight"),
            )
        sd[o + "attn_norm.weight"] = get(p + "input_layernorm.weight")
        sd[o + "ffn_norm.weight"] = get(p + "post_attention_layernorm.weight")
        f = _ffn_prefix(tensors, p)
        if not cfg.moe_layers[i]:
            sd[o + "ffn.w13"], sd[o + "ffn.w2"] = _swiglu(get, f)
            continue
        sd[o + "ffn.router"] = get(f + "router.weight" if f + "router.weight" in tensors else f + "gate.weight")
        sd[o + "ffn.w13"], sd[o + "ffn.w2"] = _experts(cfg, get, tensors, f + "experts.")
        if cfg.shared_expert_size:
            sd[o + "ffn.shared.w13"], sd[o + "ffn.shared.w2"] = _swiglu(get, f + "shared_expert.")
        if cfg.shared_expert_gate:
            sd[o + "ffn.shared_gate"] = get(f + "shared_expert_gate.weight")
    return sd


def _ffn_prefix(tensors: dict, layer: str) -> str:
    """Where a layer's feed-forward lives: ``feed_forward.`` (Llama 4), ``block_sparse_moe.`` (Mixtral), ``mlp.``."""
    for stem in ("feed_forward.", "block_sparse_moe.", "mlp."):
        if any(name.startswith(layer + stem) for name in tensors):
            return layer + stem
    raise KeyError(f"checkpoint has no feed-forward under {layer!r}")


def _swiglu(get: Callable[[str], torch.Tensor], f: str) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat((get(f + "gate_proj.weight"), get(f + "up_proj.weight"))), get(f + "down_proj.weight")


def _experts(cfg: ModelConfig, get, tensors, x: str) -> tuple[torch.Tensor, torch.Tensor]:
    if x + "gate_up_proj" in tensors:
        gate_up, down = get(x + "gate_up_proj"), get(x + "down_proj")
        if cfg.family == "llama4":  # stored [E, in, out]
            gate_up, down = gate_up.transpose(1, 2), down.transpose(1, 2)
        return gate_up.contiguous(), down.contiguous()
    g, u, d = ("w1", "w3", "w2") if x + "0.w1.weight" in tensors else ("gate_proj", "up_proj", "down_proj")
    experts = range(cfg.num_experts)
    w13 = torch.stack([torch.cat((get(f"{x}{j}.{g}.weight"), get(f"{x}{j}.{u}.weight"))) for j in experts])
    return w13, torch.stack([get(f"{x}{j}.{d}.weight") for j in experts])


_HUGE_PAGE = 2 << 20


def _on_huge_pages(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors moved into one anonymous mapping that asks the kernel for 2 MB pages (``MADV_HUGEPAGE``; Linux's
    default transparent-huge-page mode, ``madvise``, gives them only on request); ``sd`` is emptied on the way.
    Decoding streams every weight once per token: on 4 KB pages that is a TLB miss every 4 KB (costly under
    virtualisation's nested page walks). Measured here, one thread streaming 64 expert-sized 2 MB matrices for one
    activation row: 8.4 GB/s on 4 KB pages, 11.0 on huge pages. Where the kernel refuses, the copy is plain memory
    and nothing else changes."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return sd
    offsets, total = {}, 0
    for name, t in sd.items():
        offsets[name] = total
        total += -(-t.numel() * t.element_size() // 64) * 64  # 64-byte aligned starts
    arena = mmap.mmap(-1, total + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        arena.madvise(mmap.MADV_HUGEPAGE)
    except OSError:
        pass
    raw = torch.frombuffer(arena, dtype=torch.uint8)  # the tensors keep the mapping alive
    raw = raw[-raw.data_ptr() % _HUGE_PAGE :]  # huge pages are 2 MB aligned
    out = {}
    for name in list(sd):  # each original is dropped once copied: the peak is the model plus one tensor, not two models
        t = sd.pop(name)
        nbytes = t.numel() * t.element_size()
        out[name] = raw[offsets[name] : offsets[name] + nbytes].view(t.dtype).view(t.shape).copy_(t)
    return out


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    int8: bool = False,
) -> Transformer:
    """The model of checkpoint ``path`` in ``dtype`` (default: the checkpoint's; bf16 or fp32), ready for inference.

    On a CPU without native bf16 matmul, bf16 weights are kept in bf16 (half the bytes per token) and the
    activations and KV cache run in fp32. ``int8`` quantises matrix weights (weight-only, per channel).
    """
    path = Path(path)
    cfg = ModelConfig.from_pretrained(path)
    dtype = dtype or checkpoint_dtype(path)
    act_dtype = dtype if dtype == torch.float32 or native_bf16(device) else torch.float32
    sd = {
        name: t.to(device=device, dtype=dtype if t.dim() > 1 else act_dtype)  # norms and biases: activation dtype
        for name, t in hf_state_dict(cfg, _open(path)).items()
    }
    if torch.device(device).type == "cpu":
        sd = _on_huge_pages(sd)
    with torch.device("meta"):
        model = Transformer(cfg)
    model.load_state_dict(sd, assign=True, strict=True)
    model.inv_freq = rope_frequencies(cfg).to(device)
    model.act_dtype = act_dtype
    if int8:
        quantize_int8(model)
        if model.lm_head is None:  # tied: a quantised copy for the head, the embedding stays for lookups
            model.lm_head = Int8Weight.quantize(model.embed.weight.data)
    return model.eval().requires_grad_(False)
