"""Attention over a paged KV cache, for a step that mixes decodes and prefill chunks of many sequences.

A step's tokens are packed into one flat batch ``[T]``: first every single-token segment (decodes), then the multi-token
segments (prefill chunks), each contiguous. The KV cache of a layer is a pair of ``[num_blocks, block_size, kv_heads,
head_dim]`` tensors; a sequence's block table lists its blocks in order, so slot ``p`` of the sequence lives at
``table[p // block_size] * block_size + p % block_size``.

- Decodes run as ONE batched SDPA: each sequence's blocks are gathered (``cache[tables]``, whole blocks) into
  ``[D, kv_heads, L, head_dim]``; the query heads sharing a KV head are laid out as query rows (``[D, kv_heads, group,
  head_dim]``), so grouped-query attention needs no repeated keys; a ``[D, 1, 1, L]`` mask hides padding and enforces
  chunks / windows.
- Each prefill chunk runs its own SDPA (its cost is inherent); a chunk that starts at position 0 attends to its own
  keys directly, a later chunk gathers the cached prefix.

On the CPU the native kernels (``native.attn_block``, or ``native.attn_decode`` where the projections stay in Python;
both from ``model.Attention``) take the whole step instead, decodes and chunks alike, in one call per layer; this
PyTorch code is what runs on CUDA and without a C compiler, and what the kernels are tested against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["Batch", "Segment", "attend", "key_mask"]

KVCache = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Segment:
    start: int  # first token in the flat batch
    end: int
    pos0: int  # position of the first token in its sequence
    table: torch.Tensor | None  # block ids [nb] (None: no cache, the segment starts at 0)


@dataclass
class Batch:
    """What every layer needs to know about a step; built once per step by the runner (no tensors in the scheduler)."""

    positions: torch.Tensor  # [T] long
    slots: torch.Tensor | None  # [T] long: cache slot of each token (None: no cache)
    num_single: int  # leading single-token segments (decodes)
    single_tables: torch.Tensor | None  # [D, nb] block ids, padded with 0
    segments: list[Segment]  # multi-token segments, in batch order
    cos: torch.Tensor | None = None  # [T, head_dim] (set by the model)
    sin: torch.Tensor | None = None
    temperature: torch.Tensor | None = None  # [T] NoPE query scale (Llama 4), None when unused
    tables: torch.Tensor | None = None  # [S, nb] block ids of every sequence in the step: for the native kernel,
    table_rows: torch.Tensor | None = None  # [T] each token's row of tables (None: the step is not for the kernel)
    native_step: tuple | None = None  # the kernel's view of the above, built by the first layer (native._step)
    _masks: dict = field(default_factory=dict)

    def single_mask(self, window: tuple[str, int] | None, block_size: int, dtype: torch.dtype) -> torch.Tensor:
        """[D, 1, 1, L] additive (0 / -inf): which gathered slots each decode sees. Built once per step."""
        key = ("single", window)
        if key not in self._masks:
            d = self.num_single
            length = self.single_tables.shape[1] * block_size
            q = self.positions[:d, None]
            seen = key_mask(q, torch.arange(length, device=q.device)[None], window)
            self._masks[key] = torch.zeros(seen.shape, dtype=dtype, device=q.device).masked_fill_(~seen, float("-inf"))[
                :, None, None
            ]
        return self._masks[key]

    def segment_mask(self, i: int, window: tuple[str, int] | None) -> torch.Tensor | None:
        """[n, L] bool for segment ``i``, or None when plain causal attention from position 0 applies."""
        seg = self.segments[i]
        if window is None and seg.pos0 == 0:
            return None
        key = (i, window)
        if key not in self._masks:
            q = self.positions[seg.start : seg.end, None]
            k = torch.arange(seg.pos0 + seg.end - seg.start, device=q.device)[None]
            self._masks[key] = key_mask(q, k, window)
        return self._masks[key]


def key_mask(q: torch.Tensor, k: torch.Tensor, window: tuple[str, int] | None) -> torch.Tensor:
    """Query positions ``q`` [n, 1] against key positions ``k`` [1, L]: causal, plus a chunk or a sliding window."""
    mask = k <= q
    if window is not None:
        kind, size = window
        mask &= (k // size == q // size) if kind == "chunk" else (q - k < size)
    return mask


def attend(
    q: torch.Tensor,  # [T, H, hd]
    k: torch.Tensor,  # [T, KVH, hd]
    v: torch.Tensor,
    cache: KVCache | None,
    batch: Batch,
    window: tuple[str, int] | None,
    scale: float,
) -> torch.Tensor:  # [T, H, hd]
    t, heads, hd = q.shape
    kv_heads = k.shape[1]
    if cache is not None:
        k_cache, v_cache = cache
        block_size = k_cache.shape[1]
        k_cache.view(-1, kv_heads, hd).index_copy_(0, batch.slots, k)
        v_cache.view(-1, kv_heads, hd).index_copy_(0, batch.slots, v)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # q may be a strided view
    d = batch.num_single
    if d:
        tables = batch.single_tables
        length = tables.shape[1] * block_size
        flat = tables.view(-1)
        keys = k_cache.index_select(0, flat).view(d, length, kv_heads, hd).transpose(1, 2)  # [D, KVH, L, hd]
        values = v_cache.index_select(0, flat).view(d, length, kv_heads, hd).transpose(1, 2)
        queries = q[:d].reshape(d, kv_heads, heads // kv_heads, hd)  # group rows share their KV head
        mask = batch.single_mask(window, block_size, q.dtype)
        out[:d] = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale).view(d, heads, hd)
    for i, seg in enumerate(batch.segments):
        a, b = seg.start, seg.end
        if seg.pos0 == 0:
            keys, values = k[a:b], v[a:b]
        else:
            length = seg.pos0 + b - a
            keys = k_cache.index_select(0, seg.table).view(-1, kv_heads, hd)[:length]
            values = v_cache.index_select(0, seg.table).view(-1, kv_heads, hd)[:length]
        mask = batch.segment_mask(i, window)
        o = F.scaled_dot_product_attention(
            q[a:b].transpose(0, 1),  # [H, n, hd]
            keys.transpose(0, 1),  # [KVH, L, hd]
            values.transpose(0, 1),
            attn_mask=mask,
            is_causal=mask is None,
            scale=scale,
            enable_gqa=heads != kv_heads,
        )
        out[a:b] = o.transpose(0, 1)
    return out
