"""One decoder for every family in ``config.py``, with a swappable feed-forward (dense SwiGLU or mixture of experts).

The model works on a flat batch of tokens ``[T]`` (many sequences packed, see ``attention.py``), never on padded
``[B, S]`` batches. Parameter layout (the loader maps checkpoints onto it):

    embed.weight [V, H]            layers.i.attn.wqkv.{weight,bias} [(H_q + 2 H_kv) hd, H]   norm.weight [H]
    lm_head.weight [V, H]          layers.i.attn.wo.{weight,bias}, q_norm.weight, k_norm.weight
    layers.i.{attn,ffn}_norm.weight
    dense ffn:  ffn.w13 [2I, H] (gate rows, then up rows), ffn.w2 [H, I]
    moe ffn:    ffn.router [E, H], ffn.w13 [E, 2I, H], ffn.w2 [E, H, I], ffn.shared.*, ffn.shared_gate [1, H]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import native
from .attention import Batch, KVCache, attend
from .config import ModelConfig
from .quant import linear

__all__ = ["Transformer", "rope_frequencies"]


def rope_frequencies(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies [hd / 2]: default, ``linear`` or ``llama3`` scaling."""
    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        return inv / scaling["factor"]
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / low, inv / factor, inv)
        if high != low:  # Llama 4 Scout sets them equal: no band to smooth (and a division by zero otherwise)
            smooth = (old / wavelen - low) / (high - low)
            medium = (wavelen >= old / high) & (wavelen <= old / low)
            scaled = torch.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
        return scaled
    if kind != "default":
        raise ValueError(f"unsupported RoPE scaling {kind!r} (supported: default, linear, llama3)")
    return inv


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: x [T, heads, hd]; cos [T, 1, hd]; sin [T, 1, hd] with its first half negated, so that
    ``x * cos + cat(x2, x1) * sin`` equals ``x * cos + cat(-x2, x1) * sin`` of the usual form."""
    xf = x.float()
    return torch.addcmul(xf * cos, xf.roll(x.shape[-1] // 2, dims=-1), sin).type_as(x)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32 and (weight is None or weight.dtype == torch.float32):
        return F.rms_norm(x, x.shape[-1:], weight, eps)  # one fused op (the loader keeps norm weights in fp32)
    y = F.rms_norm(x.float(), x.shape[-1:], None, eps).type_as(x)
    return y if weight is None else y * weight


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.cfg, hd = cfg, cfg.head_dim
        self.heads, self.kv_heads = cfg.num_heads, cfg.num_kv_heads
        self.use_rope = cfg.rope_layers[layer]
        self.window = cfg.attn_windows[layer]
        self.wqkv = nn.Linear(cfg.hidden_size, (cfg.num_heads + 2 * cfg.num_kv_heads) * hd, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.num_heads * hd, cfg.hidden_size, bias=cfg.o_bias)
        # nothing between the projections and the attention but what the kernel does: one native call for the block
        self.native_block = cfg.qk_norm in (None, "l2") and cfg.clip_qkv is None
        if cfg.qk_norm in ("head", "full"):
            full = cfg.qk_norm == "full"
            self.q_norm = RMSNorm(cfg.num_heads * hd if full else hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.num_kv_heads * hd if full else hd, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, batch: Batch, cache: KVCache | None, norm: RMSNorm) -> torch.Tensor:
        """``x + attention(norm(x))``: the residual and the norm are fused into the projections when they can be."""
        cfg, t, hd, heads = self.cfg, x.shape[0], self.cfg.head_dim, self.heads
        if self.native_block and cache is not None and batch.table_rows is not None:
            out = native.attn_block(
                x,
                (norm.weight, norm.eps),
                self.wqkv.weight,
                self.wqkv.bias,
                self.wo.weight,
                self.wo.bias,
                cache,
                batch,
                heads=heads,
                kv_heads=self.kv_heads,
                rope=self.use_rope,
                temperature=not self.use_rope and batch.temperature is not None,
                l2_eps=cfg.rms_norm_eps if self.use_rope and cfg.qk_norm == "l2" else None,
                window=self.window,
                scale=hd**-0.5,
            )
            if out is not None:
                return out
        qkv = linear(x, self.wqkv.weight, self.wqkv.bias, norm=norm)  # [T, (H + 2 KVH) hd]
        if cfg.qk_norm == "full":  # OLMoE: over the whole projection
            q, k, v = qkv.split([heads * hd, self.kv_heads * hd, self.kv_heads * hd], dim=-1)
            qkv = torch.cat((self.q_norm(q), self.k_norm(k), v), dim=-1)
        if cfg.clip_qkv is not None:
            qkv = qkv.clamp(-cfg.clip_qkv, cfg.clip_qkv)
        o = self.attend_native(qkv, batch, cache) if cfg.qk_norm != "head" else None
        if o is None:
            o = self.attend(qkv, batch, cache)
        return linear(o.view(t, heads * hd), self.wo.weight, self.wo.bias, residual=x)

    def attend_native(self, qkv: torch.Tensor, batch: Batch, cache: KVCache | None) -> torch.Tensor | None:
        """The step's decodes and prefill chunks: RoPE, cache write and attention in one native call (None: not
        this step, or the kernel is unavailable)."""
        if cache is None or batch.table_rows is None:
            return None
        return native.attn_decode(
            qkv,
            cache,
            batch.tables,
            batch.positions,
            table_rows=batch.table_rows,
            heads=self.heads,
            kv_heads=self.kv_heads,
            rope=(batch.cos, batch.sin) if self.use_rope else None,
            l2_eps=self.cfg.rms_norm_eps if self.use_rope and self.cfg.qk_norm == "l2" else None,
            temperature=batch.temperature if not self.use_rope else None,
            window=self.window,
            scale=self.cfg.head_dim**-0.5,
        )

    def attend(self, qkv: torch.Tensor, batch: Batch, cache: KVCache | None) -> torch.Tensor:
        cfg, t, hd, heads = self.cfg, qkv.shape[0], self.cfg.head_dim, self.heads
        qkv = qkv.view(t, heads + 2 * self.kv_heads, hd)
        qk, v = qkv[:, : heads + self.kv_heads], qkv[:, heads + self.kv_heads :]  # q and k heads side by side
        if cfg.qk_norm == "head":  # Qwen3: per head, weighted, before RoPE
            qk = torch.cat((self.q_norm(qk[:, :heads]), self.k_norm(qk[:, heads:])), dim=1)
        if self.use_rope:
            qk = rotate(qk, batch.cos, batch.sin)
            if cfg.qk_norm == "l2":  # Llama 4: weightless, after RoPE, RoPE layers only
                qk = rms_norm(qk, None, cfg.rms_norm_eps)
        q, k = qk[:, :heads], qk[:, heads:]
        if not self.use_rope and batch.temperature is not None:  # Llama 4 NoPE layers: 1 below floor_scale - 1
            q = (q * batch.temperature[:, None, None]).type_as(q)
        return attend(q, k, v, cache, batch, self.window, hd**-0.5)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), gate and up fused in ``w13``."""

    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.w13 = nn.Parameter(torch.empty(2 * inner, hidden))
        self.w2 = nn.Parameter(torch.empty(hidden, inner))

    def forward(self, x: torch.Tensor, norm: RMSNorm | None = None) -> torch.Tensor:
        """``x + mlp(norm(x))`` with a norm (a block's feed-forward), ``mlp(x)`` without (a shared expert)."""
        if norm is None:
            return swiglu(x, self.w13, self.w2)
        out = native.mlp_block(x, (norm.weight, norm.eps), self.w13, self.w2)
        if out is not None:
            return out
        return linear(linear(x, self.w13, norm=norm), self.w2, swiglu=True, residual=x)


def swiglu(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    return linear(linear(x, w13), w2, swiglu=True)


class MoE(nn.Module):
    """Routed experts (+ optional shared expert). Each expert runs only on the tokens routed to it, grouped."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        e, h, i = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.top_k, self.sigmoid, self.norm_topk = cfg.top_k, cfg.router == "sigmoid", cfg.norm_topk_prob
        self.router = nn.Parameter(torch.empty(e, h))
        self.w13 = nn.Parameter(torch.empty(e, 2 * i, h))
        self.w2 = nn.Parameter(torch.empty(e, h, i))
        self.shared = MLP(h, cfg.shared_expert_size) if cfg.shared_expert_size else None
        self.shared_gate = nn.Parameter(torch.empty(1, h)) if cfg.shared_expert_gate else None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights [T, k] (x dtype) and expert ids [T, k]."""
        logits = linear(x, self.router)  # [T, E]
        if self.sigmoid:  # Llama 4: top-k of the RAW logits, then sigmoid; no softmax, no renormalisation
            top, ids = logits.topk(self.top_k, dim=-1)
            return torch.sigmoid(top.float()).type_as(x), ids
        probs = torch.softmax(logits.float(), dim=-1)
        top, ids = probs.topk(self.top_k, dim=-1)
        if self.norm_topk:
            top = top / top.sum(dim=-1, keepdim=True)
        return top.type_as(x), ids

    def forward(self, x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:  # [T, H]
        out = native.moe_block(
            x,
            (norm.weight, norm.eps),
            self.router,
            top_k=self.top_k,
            sigmoid=self.sigmoid,
            norm_topk=self.norm_topk,
            shared=None if self.shared is None else (self.shared.w13, self.shared.w2),
            shared_gate=self.shared_gate,
            w13=self.w13,
            w2=self.w2,
        )
        if out is not None:
            return out
        return x + self.experts(norm(x))

    def experts(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = self.route(x)
        if self.shared is None:
            out = torch.zeros_like(x)
        else:
            out = self.shared(x)  # Llama 4: un-gated, on the unscaled input
            if self.shared_gate is not None:  # Qwen2-MoE
                out = out * torch.sigmoid(linear(x, self.shared_gate))
        if native.moe(x, ids, weights, self.w13, self.w2, out, scale_input=self.sigmoid):
            return out
        flat = ids.flatten()  # [T k]
        if flat.numel() == 1:  # one token, top-1: no grouping
            return out + self.expert(int(flat), x, weights)
        order = flat.argsort(stable=True)
        counts = flat.bincount(minlength=self.w13.shape[0]).tolist()
        tokens, weights = order // self.top_k, weights.flatten()[order, None]
        start = 0
        for e, n in enumerate(counts):
            if n:
                rows = tokens[start : start + n]
                out.index_add_(0, rows, self.expert(e, x[rows], weights[start : start + n]))
                start += n
        return out

    def expert(self, e: int, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.sigmoid:  # the score scales the expert's INPUT (scaling the output is wrong for Llama 4)
            return swiglu(x * w, self.w13[e], self.w2[e])
        return swiglu(x, self.w13[e], self.w2[e]) * w


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.ffn = MoE(cfg) if cfg.moe_layers[layer] else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, batch: Batch, cache: KVCache | None) -> torch.Tensor:
        return self.ffn(self.attn(x, batch, cache, self.attn_norm), self.ffn_norm)  # both add their residual


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.register_buffer("inv_freq", rope_frequencies(cfg), persistent=False)
        self.act_dtype = torch.float32  # set by the loader: activations (and KV cache) dtype

    def forward(self, ids: torch.Tensor, batch: Batch, caches: list[KVCache] | None = None) -> torch.Tensor:
        """Hidden states [T, H] of the packed tokens ``ids`` [T] (before the final norm)."""
        freqs = batch.positions[:, None].float() * self.inv_freq  # [T, hd / 2]
        batch.cos = torch.cat((freqs, freqs), dim=-1).cos()[:, None]  # [T, 1, hd]
        batch.sin = torch.cat((-freqs, freqs), dim=-1).sin()[:, None]  # first half negated (see rotate)
        if self.cfg.attn_temperature is not None:
            scale, floor = self.cfg.attn_temperature
            batch.temperature = torch.log1p(torch.floor((batch.positions.float() + 1) / floor)) * scale + 1
        x = self.embed(ids).to(self.act_dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, batch, None if caches is None else caches[i])
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits [N, V] of the hidden states [N, H] (only the positions that sample)."""
        head = self.embed.weight if self.lm_head is None else self.lm_head
        return linear(hidden, head, norm=self.norm, out_dtype=torch.float32)
