"""The model configuration: one dataclass for every family, read from a checkpoint's ``config.json``.

Families and what sets them apart (details in ``model.py``):

============  ==========================================================================================
llama         dense SwiGLU (SmolLM2, Llama 2/3); llama3 / linear RoPE scaling
llama4        top-1 sigmoid router on raw logits scaling the expert INPUT, un-gated shared expert, dense and
              MoE layers interleaved, NoPE layers (full attention, temperature tuning), chunked attention and
              weightless qk norm on RoPE layers, interleaved (adjacent-pair) RoPE
mixtral       softmax top-k, renormalised, outputs weighted
qwen2_moe     softmax top-k (renormalised if ``norm_topk_prob``), shared expert gated by sigmoid(Linear(H, 1)),
              q/k/v bias
qwen3_moe     as qwen2_moe without the shared expert; per-head q/k RMSNorm (weighted) before RoPE
olmoe         softmax top-k, q/k RMSNorm over the full projection width before RoPE, optional clip_qkv
============  ==========================================================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ModelConfig", "FAMILIES"]

FAMILIES = ("llama", "llama4", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
_ALIASES = {"llama4_text": "llama4"}


@dataclass(frozen=True)
class ModelConfig:
    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # dense SwiGLU width
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    # Attention.
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: str | None = None  # "head" (per head, weighted), "full" (whole projection, weighted), "l2" (weightless)
    clip_qkv: float | None = None
    rope_theta: float = 10_000.0
    rope_scaling: dict[str, Any] | None = None
    rope_interleaved: bool = False  # adjacent pairs (Llama 4): q/k rows are permuted at load to use rotate-half
    rope_layers: tuple[bool, ...] = ()  # False: a NoPE layer
    attn_windows: tuple[tuple[str, int] | None, ...] = ()  # per layer: None (full), ("chunk", n) or ("window", n)
    attn_temperature: tuple[float, float] | None = None  # (attn_scale, floor_scale) for NoPE layers
    # Mixture of experts.
    moe_layers: tuple[bool, ...] = ()
    num_experts: int = 0
    top_k: int = 1
    moe_intermediate_size: int = 0
    router: str = "softmax"  # "softmax" (weights the outputs) or "sigmoid" (Llama 4: scales the inputs)
    norm_topk_prob: bool = False
    shared_expert_size: int = 0
    shared_expert_gate: bool = False
    # Tokens.
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    max_position_embeddings: int = 4096
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        n = self.num_layers
        defaults = {"rope_layers": (True,) * n, "attn_windows": (None,) * n, "moe_layers": (False,) * n}
        for name, value in defaults.items():
            if not getattr(self, name):
                object.__setattr__(self, name, value)
            elif len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} layers")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ModelConfig:
        file = Path(path) / "config.json"
        try:
            return cls.from_hf(json.loads(file.read_text()))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{file}: {exc}") from exc

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        """Map a Hugging Face ``config.json`` (any family above; Llama 4's ``text_config`` is used) to a config."""
        if "text_config" in hf:
            hf = {**hf["text_config"], "model_type": hf["text_config"].get("model_type", "llama4")}
        family = _ALIASES.get(hf["model_type"], hf["model_type"])
        if family not in FAMILIES:
            raise ValueError(f"unsupported model_type {hf['model_type']!r}; supported: {', '.join(FAMILIES)}")
        n, heads = hf["num_hidden_layers"], hf["num_attention_heads"]
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", hf.get("rope_theta", 500_000.0 if family == "llama4" else 10_000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        eos = hf.get("eos_token_id")
        kw: dict[str, Any] = dict(
            family=family,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=n,
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            intermediate_size=hf.get("intermediate_size", 0),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            rope_theta=float(theta),
            rope_scaling=rope if rope_type != "default" else None,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=tuple(eos if isinstance(eos, list) else [] if eos is None else [eos]),
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
        )
        bias = bool(hf.get("attention_bias", False))
        kw.update(qkv_bias=bias, o_bias=bias)
        if hf.get("sliding_window") and hf.get("use_sliding_window", True):
            types = hf.get("layer_types") or ["sliding_attention"] * n
            kw["attn_windows"] = tuple(
                ("window", hf["sliding_window"]) if t == "sliding_attention" else None for t in types
            )
        experts = hf.get("num_local_experts") or hf.get("num_experts") or 0
        if experts:
            kw.update(num_experts=experts, top_k=hf.get("num_experts_per_tok", 1))
        if family == "llama4":
            step = hf.get("interleave_moe_layer_step", 1)
            moe = hf.get("moe_layers")
            moe = list(range(step - 1, n, step)) if moe is None else moe
            rope_layers = hf.get("no_rope_layers") or [
                int((i + 1) % hf.get("no_rope_layer_interval", 4) != 0) for i in range(n)
            ]
            chunk = hf.get("attention_chunk_size")
            kw.update(
                intermediate_size=hf.get("intermediate_size_mlp", 16384),
                moe_intermediate_size=hf["intermediate_size"],
                shared_expert_size=hf["intermediate_size"],
                moe_layers=tuple(i in moe for i in range(n)),
                router="sigmoid",
                rope_interleaved=True,
                rope_layers=tuple(bool(r) for r in rope_layers),
                attn_windows=tuple(("chunk", chunk) if r and chunk else None for r in rope_layers),
                qk_norm="l2" if hf.get("use_qk_norm", True) else None,
                attn_temperature=(hf.get("attn_scale", 0.1), hf.get("floor_scale", 8192))
                if hf.get("attn_temperature_tuning", True)
                else None,
            )
        elif family == "mixtral":
            kw.update(moe_intermediate_size=hf["intermediate_size"], moe_layers=(True,) * n, norm_topk_prob=True)
        elif family in ("qwen2_moe", "qwen3_moe"):
            sparse_step, dense_only = hf.get("decoder_sparse_step", 1), set(hf.get("mlp_only_layers") or [])
            kw.update(
                moe_intermediate_size=hf.get("moe_intermediate_size", 0),
                moe_layers=tuple(experts > 0 and i not in dense_only and (i + 1) % sparse_step == 0 for i in range(n)),
                norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
            )
            if family == "qwen2_moe":
                kw.update(
                    qkv_bias=bool(hf.get("qkv_bias", True)),
                    o_bias=False,
                    shared_expert_size=hf.get("shared_expert_intermediate_size", 0),
                    shared_expert_gate=bool(hf.get("shared_expert_intermediate_size")),
                )
            else:
                kw["qk_norm"] = "head"
        elif family == "olmoe":
            kw.update(
                moe_intermediate_size=hf["intermediate_size"],
                moe_layers=(True,) * n,
                norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
                qk_norm="full",
                clip_qkv=hf.get("clip_qkv"),
            )
        elif family == "llama":
            kw["o_bias"] = bias
        return cls(**kw)

    @property
    def is_moe(self) -> bool:
        return any(self.moe_layers)
