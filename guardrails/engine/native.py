"""The engine's native kernels (``kernels.c``: small-batch GEMV on bf16 weights with a fused RMS norm, SwiGLU or
residual; the routed experts of a decode batch; a step's attention over the paged KV cache; a layer's attention,
feed-forward and MoE blocks as one call each), built on first use.

The C file is compiled once with the system C compiler (``$CC``, else ``cc``) into the engine cache
(``~/.cache/guardrails/engine/kernels-<hash>.so``, keyed by the source, the compiler and the flags) and loaded with
ctypes. Anything that goes wrong (no compiler, a failed build, ``GUARDRAILS_NATIVE=0``) leaves the kernels unavailable
(every entry point declines: None, or False from :func:`moe`) and the engine uses PyTorch's kernels instead: slower
decoding, the same results up to rounding (tests/engine/test_native.py compares the two).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from functools import cache
from pathlib import Path

import torch

__all__ = ["MAX_ROWS", "attn_block", "attn_decode", "available", "gemv", "mlp_block", "moe", "moe_block"]

log = logging.getLogger(__name__)

ISA_CAP: int | None = None  # tests lower it to run the AVX2 (1) and portable C (0) kernels on a newer CPU
MAX_ROWS = 32  # activation rows the GEMV may take (16 without AMX: it then declines more)
_SOURCE = Path(__file__).with_name("kernels.c")
_FLAGS = ["-O3", "-fPIC", "-shared", "-fopenmp", "-std=c11"]
_LIBS = ["-lm"]
_local = threading.local()


def _cache_dir() -> Path:
    root = os.environ.get("GUARDRAILS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "guardrails")
    return Path(root) / "engine"


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise OSError(f"no C compiler ({compiler!r} not found)")
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + compiler.encode() + " ".join(_FLAGS).encode()).hexdigest()[:16]
    target = _cache_dir() / f"kernels-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # build aside, then rename: no half-written .so
            out = Path(tmp) / target.name
            proc = subprocess.run(
                [compiler, *_FLAGS, str(_SOURCE), "-o", str(out), *_LIBS], capture_output=True, text=True, timeout=120
            )
            if proc.returncode:
                raise OSError(f"{compiler} failed: {proc.stderr.strip()[-2000:]}")
            os.replace(out, target)
    lib = ctypes.CDLL(str(target))
    lib.gr_isa.restype = ctypes.c_int
    p, n, i, f = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
    lib.gr_gemv_bf16.argtypes = [p, p, p, p, p, p, n, n, n, i, i, i, p, f, i, i]
    lib.gr_gemv_bf16.restype = ctypes.c_int
    lib.gr_moe_bf16.argtypes = [p, p, p, p, p, p, p, n, n, n, n, n, i, i, i, i]
    lib.gr_moe_bf16.restype = ctypes.c_int
    lib.gr_attn_decode.argtypes = [p, p, p, p, p, p, p, n, p, p, p, p, n, n, n, n, n, n, i, n, f, i, f, i, i, i]
    lib.gr_attn_decode.restype = ctypes.c_int
    lib.gr_attn_block_scratch.argtypes = [n, n, n, n, n, n, n, i]
    lib.gr_attn_block_scratch.restype = ctypes.c_long
    lib.gr_attn_block.argtypes = [p, p, p, f, p, p, p, p, p, p, p, p, n, n, n, n, n, i, i, i, n, f, i, f, i]
    lib.gr_attn_block.restype = ctypes.c_int
    lib.gr_moe_block_scratch.argtypes = [n, n, n, n, n, n]
    lib.gr_moe_block_scratch.restype = ctypes.c_long
    lib.gr_moe_block.argtypes = [p, p, f, p, n, n, i, i, p, p, n, p, p, p, n, p, p, n, n, n, i, i, i]
    lib.gr_moe_block.restype = ctypes.c_int
    lib.gr_mlp_block.argtypes = [p, p, f, p, p, p, p, n, n, n, i, i, i]
    lib.gr_mlp_block.restype = ctypes.c_int
    return lib


@cache
def _lib() -> tuple[ctypes.CDLL, int] | None:
    if os.environ.get("GUARDRAILS_NATIVE", "1") == "0":
        return None
    try:
        lib = _build()
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("engine: native decode kernels unavailable, using PyTorch's (%s)", exc)
        return None
    return lib, lib.gr_isa()


def _kernels() -> tuple[ctypes.CDLL, int] | None:
    """The library and the ISA level to run (the CPU's, lowered to :data:`ISA_CAP` when set), or None."""
    loaded = _lib()
    if loaded is None or ISA_CAP is None:
        return loaded
    return loaded[0], min(loaded[1], ISA_CAP)


def _gemv_scratch(m: int, n: int, k: int) -> int:
    """fp32 values of scratch one ``gr_gemv_bf16`` call of m rows, n outputs and k inputs needs."""
    return m * (2 * k + n) + 16 * k


def available() -> bool:
    """Whether the native kernel is built and loaded (builds it on the first call)."""
    return _lib() is not None


def _scratch(n: int) -> torch.Tensor:
    scratch = getattr(_local, "scratch", None)
    if scratch is None or scratch.numel() < n:
        scratch = _local.scratch = torch.empty(max(n, 1 << 16), dtype=torch.float32)
    return scratch


def _acts_ok(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    return x.dtype in (torch.float32, torch.bfloat16) and all(t is None or t.dtype == x.dtype for t in others)


def gemv(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    norm: tuple[torch.Tensor, float] | None = None,
    swiglu: bool = False,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor | None:
    """``prep(x) @ w.T + b (+ residual)`` for bf16 ``w`` [N, K] and 1..32 rows (16 without AMX) of fp32 or bf16 ``x``
    on the CPU, in x's dtype. ``prep``: an RMS norm ``(weight, eps)`` of x, or SwiGLU (x [M, 2K] is gate then up),
    or nothing. ``out_dtype=torch.float32`` keeps the fp32 sums (logits) instead of rounding them to bf16
    activations. None when the kernel cannot take these tensors (the caller falls back)."""
    norm_w = None if norm is None else norm[0]
    if (
        not 1 <= x.shape[0] <= MAX_ROWS
        or w.dtype != torch.bfloat16
        or x.device.type != "cpu"
        or not w.is_contiguous()
        or not _acts_ok(x, b, norm_w, residual)
        or (kernels := _kernels()) is None
    ):
        return None
    lib, isa = kernels
    m, (n, k) = x.shape[0], w.shape
    x = x.contiguous()
    out_f32 = out_dtype == torch.float32
    y = torch.empty((m, n), dtype=torch.float32 if out_f32 else x.dtype)
    status = lib.gr_gemv_bf16(
        x.data_ptr(),
        w.data_ptr(),
        None if b is None else b.contiguous().data_ptr(),
        None if residual is None else residual.contiguous().data_ptr(),
        y.data_ptr(),
        _scratch(_gemv_scratch(m, n, k)).data_ptr(),
        m,
        n,
        k,
        x.dtype == torch.bfloat16,
        out_f32,
        1 if norm is not None else 2 if swiglu else 0,
        None if norm_w is None else norm_w.contiguous().data_ptr(),
        0.0 if norm is None else norm[1],
        torch.get_num_threads(),
        isa,
    )
    return y if status == 0 else None


def moe(
    x: torch.Tensor,  # [T, H]
    ids: torch.Tensor,  # [T, k] expert ids
    scores: torch.Tensor,  # [T, k] routing weights
    w13: torch.Tensor,  # [E, 2I, H] gate then up
    w2: torch.Tensor,  # [E, H, I]
    out: torch.Tensor,  # [T, H], added to in place
    *,
    scale_input: bool,
) -> bool:
    """Add the routed experts' outputs into ``out``, in one call for up to :data:`MAX_ROWS` tokens: each expert on
    the tokens routed to it, their score scaling the expert's input (Llama 4) or its output. False (``out``
    untouched) when the kernel cannot take these tensors (the caller falls back)."""
    if (
        not 1 <= x.shape[0] <= MAX_ROWS
        or not (isinstance(w13, torch.Tensor) and isinstance(w2, torch.Tensor))
        or x.device.type != "cpu"
        or w13.dtype != torch.bfloat16
        or w2.dtype != torch.bfloat16
        or not (w13.is_contiguous() and w2.is_contiguous() and out.is_contiguous())
        or not _acts_ok(x, scores, out)
        or (kernels := _kernels()) is None
    ):
        return False
    lib, isa = kernels
    e, two_i, h = w13.shape
    i, k = two_i // 2, max(h, two_i // 2)
    scratch = _scratch(MAX_ROWS * (2 * h + two_i) + _gemv_scratch(MAX_ROWS, max(two_i, h), k))
    status = lib.gr_moe_bf16(
        x.contiguous().data_ptr(),
        ids.to(torch.int64).contiguous().data_ptr(),
        scores.contiguous().data_ptr(),
        w13.data_ptr(),
        w2.data_ptr(),
        out.data_ptr(),
        scratch.data_ptr(),
        x.shape[0],
        ids.shape[1],
        e,
        h,
        i,
        x.dtype == torch.bfloat16,
        scale_input,
        torch.get_num_threads(),
        isa,
    )
    if status:
        raise RuntimeError(f"gr_moe_bf16 failed ({status})")
    return True


def attn_decode(
    qkv: torch.Tensor,  # [D, (H + 2 KVH) hd]
    cache: tuple[torch.Tensor, torch.Tensor],  # [blocks, block_size, KVH, hd] each
    tables: torch.Tensor,  # [S, width] block ids of the step's sequences
    positions: torch.Tensor,  # [D]
    *,
    table_rows: torch.Tensor | None = None,  # [D]: each token's row of tables (None: row d for token d)
    heads: int,
    kv_heads: int,
    rope: tuple[torch.Tensor, torch.Tensor] | None,  # cos, sin [D, 1, hd] fp32 (sin's first half negated)
    l2_eps: float | None,  # Llama 4's weightless norm of q and k after RoPE
    temperature: torch.Tensor | None,  # [D] fp32: NoPE query scale
    window: tuple[str, int] | None,
    scale: float,
) -> torch.Tensor | None:
    """Attention output [D, H * hd] for D tokens (decodes, and prefill chunks whose tokens share their sequence's
    table row), writing their keys and values into the cache first; None when the kernel cannot take these tensors
    (the caller falls back)."""
    k_cache, v_cache = cache
    hd = k_cache.shape[-1]
    if (
        qkv.device.type != "cpu"
        or hd > 512
        or heads % kv_heads
        or not _acts_ok(qkv, k_cache, v_cache)
        or not (k_cache.is_contiguous() and v_cache.is_contiguous())
        or (kernels := _kernels()) is None
    ):
        return None
    lib, isa = kernels
    d, bs = qkv.shape[0], k_cache.shape[1]
    tables = tables.to(torch.int64).contiguous()
    positions = positions.to(torch.int64).contiguous()
    if table_rows is not None:
        table_rows = table_rows.to(torch.int64).contiguous()
    threads = torch.get_num_threads()
    per_task = heads // kv_heads * (2 * hd + tables.shape[1] * bs) + hd
    scratch = _scratch(max(threads, 1) * per_task)
    out = torch.empty((d, heads * hd), dtype=qkv.dtype)
    cos, sin = (None, None) if rope is None else (rope[0].contiguous(), rope[1].contiguous())
    kind, size = (0, 0) if window is None else (1 if window[0] == "chunk" else 2, window[1])  # as key_mask reads it
    status = lib.gr_attn_decode(
        qkv.contiguous().data_ptr(),
        None if cos is None else cos.data_ptr(),
        None if sin is None else sin.data_ptr(),
        None if temperature is None else temperature.float().contiguous().data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        tables.data_ptr(),
        tables.shape[1],
        None if table_rows is None else table_rows.data_ptr(),
        positions.data_ptr(),
        out.data_ptr(),
        scratch.data_ptr(),
        scratch.numel(),
        d,
        heads,
        kv_heads,
        hd,
        bs,
        kind,
        size,
        scale,
        l2_eps is not None,
        0.0 if l2_eps is None else l2_eps,
        qkv.dtype == torch.bfloat16,
        threads,
        isa,
    )
    if status:
        raise RuntimeError(f"gr_attn_decode failed ({status})")
    return out


class _Step(ctypes.Structure):
    """What every layer's attention shares in a step (``Step`` in kernels.c)."""

    _fields_ = [
        ("cos", ctypes.c_void_p),
        ("sin", ctypes.c_void_p),
        ("temp", ctypes.c_void_p),
        ("tables", ctypes.c_void_p),
        ("table_rows", ctypes.c_void_p),
        ("positions", ctypes.c_void_p),
        ("table_width", ctypes.c_long),
        ("D", ctypes.c_long),
        ("block_size", ctypes.c_long),
        ("threads", ctypes.c_int),
        ("isa", ctypes.c_int),
    ]


def _step(batch, block_size: int, isa: int) -> tuple[_Step, tuple]:
    """The step's :class:`_Step` (built once per step and kept on the batch, with the tensors it points into)."""
    cached = batch.native_step
    if cached is None or cached[0].isa != isa or cached[0].block_size != block_size:
        keep = (
            batch.cos.contiguous() if batch.cos is not None else None,
            batch.sin.contiguous() if batch.sin is not None else None,
            batch.temperature.float().contiguous() if batch.temperature is not None else None,
            batch.tables.to(torch.int64).contiguous(),
            batch.table_rows.to(torch.int64).contiguous(),
            batch.positions.to(torch.int64).contiguous(),
        )
        step = _Step(
            *(None if t is None else t.data_ptr() for t in keep),
            keep[3].shape[1],
            keep[5].shape[0],
            block_size,
            torch.get_num_threads(),
            isa,
        )
        cached = batch.native_step = (step, keep)
    return cached


def attn_block(
    x: torch.Tensor,  # [D, hidden]
    norm: tuple[torch.Tensor, float],
    wqkv: torch.Tensor,
    bqkv: torch.Tensor | None,
    wo: torch.Tensor,
    bo: torch.Tensor | None,
    cache: tuple[torch.Tensor, torch.Tensor],
    batch,  # attention.Batch with tables / table_rows set
    *,
    heads: int,
    kv_heads: int,
    rope: bool,
    temperature: bool,
    l2_eps: float | None,
    window: tuple[str, int] | None,
    scale: float,
) -> torch.Tensor | None:
    """``x + wo @ attention(wqkv @ rmsnorm(x) + bqkv) + bo`` for a whole step in one call (the cache written), or
    None when the kernels cannot take it (the caller runs the projections and :func:`attn_decode` itself)."""
    k_cache, v_cache = cache
    if (
        x.device.type != "cpu"
        or wqkv.dtype != torch.bfloat16
        or wo.dtype != torch.bfloat16
        or not (wqkv.is_contiguous() and wo.is_contiguous() and k_cache.is_contiguous() and v_cache.is_contiguous())
        or not _acts_ok(x, norm[0], bqkv, bo, k_cache, v_cache)
        or (kernels := _kernels()) is None
    ):
        return None
    lib, isa = kernels
    step, _ = _step(batch, k_cache.shape[1], isa)
    d, hidden = x.shape
    hd = k_cache.shape[-1]
    size = lib.gr_attn_block_scratch(d, hidden, heads, kv_heads, hd, step.table_width, step.block_size, step.threads)
    scratch = _scratch(size)
    out = torch.empty_like(x)
    kind, length = (0, 0) if window is None else (1 if window[0] == "chunk" else 2, window[1])
    status = lib.gr_attn_block(
        ctypes.byref(step),
        x.contiguous().data_ptr(),
        norm[0].data_ptr(),
        norm[1],
        wqkv.data_ptr(),
        None if bqkv is None else bqkv.data_ptr(),
        wo.data_ptr(),
        None if bo is None else bo.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        out.data_ptr(),
        scratch.data_ptr(),
        scratch.numel(),
        hidden,
        heads,
        kv_heads,
        hd,
        rope,
        temperature,
        kind,
        length,
        scale,
        l2_eps is not None,
        0.0 if l2_eps is None else l2_eps,
        x.dtype == torch.bfloat16,
    )
    return out if status == 0 else None


def mlp_block(
    x: torch.Tensor, norm: tuple[torch.Tensor, float], w13: torch.Tensor, w2: torch.Tensor
) -> torch.Tensor | None:
    """``x + w2 @ silu-and-multiply(w13 @ rmsnorm(x))`` in one call, or None when the kernels cannot take it."""
    if (
        x.device.type != "cpu"
        or not (isinstance(w13, torch.Tensor) and isinstance(w2, torch.Tensor))
        or w13.dtype != torch.bfloat16
        or w2.dtype != torch.bfloat16
        or not (w13.is_contiguous() and w2.is_contiguous())
        or not _acts_ok(x, norm[0])
        or (kernels := _kernels()) is None
    ):
        return None
    lib, isa = kernels
    (m, hidden), inner = x.shape, w2.shape[1]
    scratch = _scratch(m * 2 * inner + _gemv_scratch(m, max(2 * inner, hidden), max(hidden, inner)))
    out = torch.empty_like(x)
    status = lib.gr_mlp_block(
        x.contiguous().data_ptr(),
        norm[0].data_ptr(),
        norm[1],
        w13.data_ptr(),
        w2.data_ptr(),
        out.data_ptr(),
        scratch.data_ptr(),
        m,
        hidden,
        inner,
        x.dtype == torch.bfloat16,
        torch.get_num_threads(),
        isa,
    )
    return out if status == 0 else None


def moe_block(
    x: torch.Tensor,  # [M, hidden]
    norm: tuple[torch.Tensor, float],
    router: torch.Tensor,  # [E, hidden]
    *,
    top_k: int,
    sigmoid: bool,
    norm_topk: bool,
    shared: tuple[torch.Tensor, torch.Tensor] | None,  # w13 [2 SI, hidden], w2 [hidden, SI]
    shared_gate: torch.Tensor | None,  # [1, hidden]
    w13: torch.Tensor,  # [E, 2I, hidden]
    w2: torch.Tensor,  # [E, hidden, I]
) -> torch.Tensor | None:
    """``x + shared(xn) + experts(xn)``, ``xn = rmsnorm(x)``, routed as ``MoE.route``, in one call; None when the
    kernels cannot take it (the caller runs MoE.experts)."""
    weights = (router, w13, w2, *(shared or ()), *(() if shared_gate is None else (shared_gate,)))
    if (
        x.device.type != "cpu"
        or not all(isinstance(w, torch.Tensor) and w.dtype == torch.bfloat16 and w.is_contiguous() for w in weights)
        or not _acts_ok(x, norm[0])
        or (kernels := _kernels()) is None
    ):
        return None
    lib, isa = kernels
    (m, hidden), (e, inner) = x.shape, (w13.shape[0], w2.shape[2])
    shared_inner = 0 if shared is None else shared[1].shape[1]
    scratch = _scratch(lib.gr_moe_block_scratch(m, hidden, e, top_k, inner, shared_inner))
    out = torch.empty_like(x)
    status = lib.gr_moe_block(
        x.contiguous().data_ptr(),
        norm[0].data_ptr(),
        norm[1],
        router.data_ptr(),
        e,
        top_k,
        sigmoid,
        norm_topk,
        None if shared is None else shared[0].data_ptr(),
        None if shared is None else shared[1].data_ptr(),
        shared_inner,
        None if shared_gate is None else shared_gate.data_ptr(),
        w13.data_ptr(),
        w2.data_ptr(),
        inner,
        out.data_ptr(),
        scratch.data_ptr(),
        scratch.numel(),
        m,
        hidden,
        x.dtype == torch.bfloat16,
        torch.get_num_threads(),
        isa,
    )
    return out if status == 0 else None
