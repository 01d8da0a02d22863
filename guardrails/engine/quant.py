"""Every matrix product of the model goes through :func:`linear`, which picks the kernel for the weight's storage.

- bf16 weights and at most :data:`native.MAX_ROWS` activation rows (decoding): the engine's own kernels
  (``kernels.c``: AVX-512 / AVX2 for a few rows, AMX tiles for 4-32 where the CPU has them), which stream the
  weights at 0.7-0.9 of the memory bandwidth; PyTorch's CPU bf16 GEMV reaches about a third of it here. They also
  fuse the RMS norm or SwiGLU before and the residual after. Without a C compiler, PyTorch's kernels below.
- Same dtype as the activations: ``F.linear``.
- bf16 weights with fp32 activations: CPUs without native bf16 matmul (no AVX512-BF16 / AMX). PyTorch's fallback bf16
  GEMM there costs ~8x more at 8 rows than at one, so one row runs the bf16 GEMV (which reads half the bytes) and
  more rows upcast the weight, a slice at a time, into a cache-sized fp32 scratch and run the fp32 GEMM.
- :class:`Int8Weight` (optional weight-only int8, per output channel, symmetric): PyTorch's packed int8 CPU kernel
  ``aten._weight_int8pack_mm`` (bf16 activations). Its reduction dimension must be a multiple of 8 (it returns garbage
  otherwise), so other weights stay unquantised.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

from . import native

__all__ = ["Int8Weight", "linear", "quantize_int8", "native_bf16"]

_SCRATCH_ELEMENTS = 1 << 20  # 4 MB of fp32: a slice of weight stays in cache between the upcast and the GEMM
_KEEP = ("router", "shared_gate")
_local = threading.local()


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matmuls run natively (always on CUDA; on CPU only with oneDNN's bf16 kernels)."""
    if torch.device(device).type == "cuda":
        return True
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Int8Weight:
    """int8 weight ``q`` [..., N, K] with fp scales ``s`` [..., N]; indexing picks an expert."""

    def __init__(self, q: torch.Tensor, s: torch.Tensor) -> None:
        self.q, self.s = q, s

    @classmethod
    def quantize(cls, w: torch.Tensor) -> Int8Weight:
        scale = w.float().abs().amax(dim=-1).clamp(min=1e-8) / 127  # [..., N]
        q = torch.round(w.float() / scale[..., None]).clamp(-127, 127).to(torch.int8)
        return cls(q.contiguous(), scale.to(torch.bfloat16))

    def __getitem__(self, e: int) -> Int8Weight:
        return Int8Weight(self.q[e], self.s[e])

    @property
    def shape(self) -> torch.Size:
        return self.q.shape


def linear(
    x: torch.Tensor,
    w: torch.Tensor | Int8Weight,
    b: torch.Tensor | None = None,
    *,
    norm: nn.Module | None = None,
    swiglu: bool = False,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``residual + prep(x) @ w.T + b`` for x [T, K], w [N, K]; returns ``out_dtype`` (default x's dtype). ``prep``:
    the RMSNorm module ``norm``, or SwiGLU when ``swiglu`` (x [T, 2K] holds gate then up), or nothing. The native
    kernel fuses them."""
    if x.shape[0] <= native.MAX_ROWS and isinstance(w, torch.Tensor) and w.dtype == torch.bfloat16:
        fused = native.gemv(
            x,
            w,
            b,
            norm=None if norm is None else (norm.weight, norm.eps),
            swiglu=swiglu,
            residual=residual,
            out_dtype=out_dtype,
        )
        if fused is not None:
            return fused
    if norm is not None:
        x = norm(x)
    elif swiglu:
        gate, up = x.chunk(2, dim=-1)
        x = F.silu(gate) * up
    y = _linear(x, w, b)
    y = y if residual is None else residual + y
    return y if out_dtype is None else y.to(out_dtype)


def _linear(x: torch.Tensor, w: torch.Tensor | Int8Weight, b: torch.Tensor | None) -> torch.Tensor:
    if isinstance(w, Int8Weight):
        y = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), w.q, w.s).to(x.dtype)
        return y if b is None else y + b
    if w.dtype == x.dtype:
        return F.linear(x, w, b)
    if x.shape[0] == 1:  # the bias joins in x's dtype: F.linear refused a bf16 input with an fp32 bias (AVX2 CPU)
        y = F.linear(x.to(w.dtype), w).to(x.dtype)
        return y if b is None else y + b.to(x.dtype)
    rows = max(1, _SCRATCH_ELEMENTS // w.shape[1])
    bias = None if b is None else b.to(x.dtype)
    if w.shape[0] <= rows:
        return F.linear(x, _upcast(w, x.dtype), bias)
    parts = [F.linear(x, _upcast(w[i : i + rows], x.dtype)) for i in range(0, w.shape[0], rows)]
    out = torch.cat(parts, dim=-1)
    return out if bias is None else out + bias


def _upcast(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    scratch = getattr(_local, "scratch", None)
    if (
        scratch is None
        or scratch.numel() < w.numel()
        or scratch.dtype != dtype
        or scratch.device != w.device
        # made under inference_mode, it cannot be written outside it (a thread that ran a step, then a plain call)
        or (scratch.is_inference() and not torch.is_inference_mode_enabled())
    ):
        scratch = _local.scratch = torch.empty(max(w.numel(), _SCRATCH_ELEMENTS), dtype=dtype, device=w.device)
    return scratch[: w.numel()].view(w.shape).copy_(w)


def quantize_int8(model: nn.Module) -> int:
    """Replace every 2-D / 3-D matrix weight whose reduction dim is a multiple of 8 by an :class:`Int8Weight`.

    Embeddings, norms and routers stay as they are (a router is tiny, and rounding its logits flips experts).
    Returns the number of weights quantised.
    """
    done = 0
    for module in list(model.modules()):
        for name, param in list(module.named_parameters(recurse=False)):
            if param.dim() < 2 or param.shape[-1] % 8 or isinstance(module, nn.Embedding) or name in _KEEP:
                continue
            delattr(module, name)
            setattr(module, name, Int8Weight.quantize(param.data))
            done += 1
    return done
