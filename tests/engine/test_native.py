"""The native decode kernels (``kernels.c``) against the PyTorch code they replace, and the fallback without them."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from engine_checkpoints import FAMILIES

from guardrails.engine import EngineCore, ModelConfig, SamplingParams, load_model, native
from guardrails.engine import core as core_module
from guardrails.engine.attention import Batch, Segment
from guardrails.engine.model import Attention, MoE, RMSNorm, rope_frequencies
from guardrails.engine.sequence import Sequence

needs_native = pytest.mark.skipif(not native.available(), reason="no C compiler: the native kernels are not built")
DTYPES = [torch.float32, torch.bfloat16]


def tolerance(dtype: torch.dtype) -> dict:
    # bf16 outputs are rounded to 8 significant bits; fp32 ones differ from float64 by summation order only
    return dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-4, rtol=1e-4)


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 13, 16, 17, 32])
@pytest.mark.parametrize(("n", "k"), [(37, 61), (64, 576), (5, 3), (9, 16), (48, 64)])
@pytest.mark.parametrize("prep", ["none", "norm", "swiglu"])
def test_gemv_matches_the_pytorch_ops_it_fuses(dtype, rows, n, k, prep, isa):
    gen = torch.Generator().manual_seed(n * 1000 + k * 10 + rows)
    w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
    b = torch.randn(n, generator=gen).to(dtype)
    residual = torch.randn(rows, n, generator=gen).to(dtype)
    x = torch.randn(rows, 2 * k if prep == "swiglu" else k, generator=gen).to(dtype)
    norm = RMSNorm(k, 1e-5)
    norm.weight.data = (torch.rand(k, generator=gen) + 0.5).to(dtype)
    if prep == "norm":
        expected_in = norm(x)
    elif prep == "swiglu":
        gate, up = x.chunk(2, dim=-1)
        expected_in = F.silu(gate) * up
    else:
        expected_in = x
    expected = (expected_in.double() @ w.double().T + b.double()).to(dtype)  # the projection, rounded as F.linear's
    expected = (residual.double() + expected.double()).to(dtype)
    got = native.gemv(
        x, w, b, norm=(norm.weight, norm.eps) if prep == "norm" else None, swiglu=prep == "swiglu", residual=residual
    )
    if rows > 16 and not amx(dtype, n, k):
        assert got is None  # only AMX takes more than 16 rows
        return
    assert got is not None and got.dtype == dtype and got.shape == (rows, n)
    torch.testing.assert_close(got, expected, **tolerance(dtype))


def amx(dtype: torch.dtype, n: int, k: int) -> bool:
    """Whether the AMX kernel takes this product (AMX CPU, bf16 activations, whole tiles)."""
    isa = native._lib()[1] if native.ISA_CAP is None else min(native._lib()[1], native.ISA_CAP)
    return isa == 4 and dtype == torch.bfloat16 and k % 32 == 0 and n % 16 == 0


@pytest.fixture(params=["best", 3, 2, 1, 0], ids=lambda p: f"isa-{p}")
def isa(request, monkeypatch):
    """Each kernel generation this CPU can run: AMX (4), AVX-512 BF16 (3), AVX-512 (2), AVX2 (1), portable C (0)."""
    if request.param != "best":
        if not native.available() or native._lib()[1] < request.param:
            pytest.skip(f"this CPU has no ISA level {request.param}")
        monkeypatch.setattr(native, "ISA_CAP", request.param)
    return request.param


@needs_native
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize(("rows", "n", "k", "dtype"), [(2, 301, 577, torch.float32), (9, 336, 576, torch.bfloat16)])
def test_gemv_splits_large_weights_across_threads(threads, rows, n, k, dtype, isa):
    """Above 64K weights the rows are split over OpenMP threads; every row is still computed once."""
    gen, before = torch.Generator().manual_seed(threads), torch.get_num_threads()
    w, x = torch.randn(n, k, generator=gen).to(torch.bfloat16), torch.randn(rows, k, generator=gen).to(dtype)
    torch.set_num_threads(threads)
    try:
        got = native.gemv(x, w)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(got, (x.double() @ w.double().T).to(dtype), **tolerance(dtype))


@needs_native
def test_kernels_called_from_two_threads_at_once(isa):
    """Two Python threads decoding at once (ctypes lets go of the GIL): each call's rows split over its own OpenMP
    team and its own scratch, both results right."""
    gen, before = torch.Generator().manual_seed(11), torch.get_num_threads()
    w = torch.randn(1024, 512, generator=gen).to(torch.bfloat16)
    xs = [torch.randn(3, 512, generator=gen).to(torch.bfloat16) for _ in range(2)]
    expected = [(x.double() @ w.double().T).to(torch.bfloat16) for x in xs]
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    torch.set_num_threads(2)
    try:
        threads = [
            threading.Thread(target=lambda i=i: results[i].extend(native.gemv(xs[i], w) for _ in range(200)))
            for i in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        torch.set_num_threads(before)
    for i in range(2):
        assert len(results[i]) == 200
        for got in results[i]:
            torch.testing.assert_close(got, expected[i], **tolerance(torch.bfloat16))


@needs_native
def test_gemv_declines_what_it_cannot_take():
    w = torch.randn(8, 16).to(torch.bfloat16)
    assert native.gemv(torch.randn(native.MAX_ROWS + 1, 16), w) is None  # more rows than a decode batch takes
    assert native.gemv(torch.randn(1, 16), w.float()) is None  # fp32 weights: F.linear is already at bandwidth
    assert native.gemv(torch.randn(1, 16).half(), w) is None
    assert native.gemv(torch.randn(1, 16), w, torch.randn(8).to(torch.bfloat16)) is None  # mixed activation dtypes
    assert native.gemv(torch.randn(1, 16), w.t().contiguous().t()) is None  # a transposed view


MOE = {
    "llama4_top1_sigmoid_shared": dict(router="sigmoid", top_k=1, shared_expert_size=48),
    "mixtral_top2": dict(top_k=2),
    "qwen2_top2_gated_shared": dict(top_k=2, norm_topk_prob=True, shared_expert_size=32, shared_expert_gate=True),
}


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [1, 3, 8, 32])
@pytest.mark.parametrize("kind", MOE)
def test_fused_experts_match_the_per_expert_loop(kind, tokens, dtype, isa, monkeypatch):
    """The routed experts in one native call against MoE.experts' Python loop over the same GEMV kernel: the same
    gathers, scales, order of additions and rounding, so the same bits. 32 tokens over 3 experts put more than 16
    rows (the vector kernels' most) on an expert."""
    cfg = ModelConfig(
        family="mixtral",
        vocab_size=32,
        hidden_size=64,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        head_dim=32,
        intermediate_size=64,
        moe_layers=(True,),
        num_experts=3,
        moe_intermediate_size=96,
        **MOE[kind],
    )
    gen = torch.Generator().manual_seed(tokens)
    moe = MoE(cfg)
    for param in moe.parameters():
        param.data = torch.randn(param.shape, generator=gen) * param.shape[-1] ** -0.5
    moe.w13.data, moe.w2.data = moe.w13.data.bfloat16(), moe.w2.data.bfloat16()
    if dtype == torch.bfloat16:
        moe.to(dtype)
    x = torch.randn(tokens, 64, generator=gen).to(dtype)
    calls = []
    fused = native.moe
    monkeypatch.setattr(native, "moe", lambda *a, **k: calls.append(fused(*a, **k)) or calls[-1])
    ours = moe.experts(x)
    monkeypatch.setattr(native, "moe", lambda *a, **k: False)
    theirs = moe.experts(x)
    assert calls == [True]
    assert ours.dtype == dtype and ours.abs().max() > 0.1
    rows = moe.route(x)[1].flatten().bincount().max()
    if rows <= 16 or amx(dtype, 2 * 96, 64):  # the loop's GEMVs ran in the same kernels
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    else:  # more than 16 rows without AMX: the loop's went to F.linear (another order of summation)
        torch.testing.assert_close(ours, theirs, **tolerance(dtype))


ATTENTION = {
    "llama_gqa": dict(num_heads=4, num_kv_heads=2),
    "llama4_rope_chunk_l2": dict(num_heads=4, num_kv_heads=1, qk_norm="l2", attn_windows=(("chunk", 8),)),
    "llama4_nope_temperature": dict(num_heads=2, num_kv_heads=2, rope_layers=(False,), attn_temperature=(0.5, 4.0)),
    "sliding_window": dict(num_heads=2, num_kv_heads=1, attn_windows=(("window", 5),)),
}


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ATTENTION)
def test_step_attention_matches_the_pytorch_path(kind, dtype, isa):
    """One step over a paged cache: three decodes at different positions, a prefill chunk from position 0 and a
    later chunk over a cached prefix, all in one native call: same outputs and same cache writes as PyTorch's."""
    cfg = ModelConfig(
        family="llama",
        vocab_size=32,
        hidden_size=32,
        num_layers=1,
        head_dim=16,
        intermediate_size=64,
        **ATTENTION[kind],
    )
    attn = Attention(cfg, 0).to(dtype)
    gen = torch.Generator().manual_seed(7)
    block_size = 4
    shape = (16, block_size, cfg.num_kv_heads, cfg.head_dim)
    k_cache, v_cache = torch.randn(shape, generator=gen).to(dtype), torch.randn(shape, generator=gen).to(dtype)
    # (block table, first position, tokens): non-contiguous blocks; the last chunk's positions 0-5 are cached
    seqs = [([3], 0, 1), ([5, 1, 12], 9, 1), ([2, 4, 6, 7, 8, 9], 22, 1), ([10, 11], 0, 5), ([13, 14, 15], 6, 4)]
    positions = [p for _, p0, n in seqs for p in range(p0, p0 + n)]
    rows = [r for r, (_, _, n) in enumerate(seqs) for _ in range(n)]
    width = max(len(t) for t, _, _ in seqs)
    tables = torch.tensor([t + [0] * (width - len(t)) for t, _, _ in seqs])
    batch = Batch(
        positions=torch.tensor(positions),
        slots=torch.tensor(
            [seqs[r][0][p // block_size] * block_size + p % block_size for r, p in zip(rows, positions, strict=True)]
        ),
        num_single=3,
        single_tables=tables[:3],
        segments=[Segment(3, 8, 0, None), Segment(8, 12, 6, torch.tensor(seqs[4][0]))],
        tables=tables,
        table_rows=torch.tensor(rows),
    )
    freqs = batch.positions[:, None].float() * rope_frequencies(cfg)
    batch.cos = torch.cat((freqs, freqs), dim=-1).cos()[:, None]
    batch.sin = torch.cat((-freqs, freqs), dim=-1).sin()[:, None]
    if cfg.attn_temperature is not None:
        scale, floor = cfg.attn_temperature
        batch.temperature = torch.log1p(torch.floor((batch.positions.float() + 1) / floor)) * scale + 1
    t = len(positions)
    qkv = torch.randn(t, (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim, generator=gen).to(dtype)
    ours = (k_cache.clone(), v_cache.clone())
    theirs = (k_cache.clone(), v_cache.clone())
    got = attn.attend_native(qkv, batch, ours)
    expected = attn.attend(qkv, batch, theirs).view(t, -1)
    assert got is not None
    torch.testing.assert_close(got, expected, **tolerance(dtype))
    torch.testing.assert_close(ours[0], theirs[0], **tolerance(dtype))  # RoPE'd (and normed) keys
    torch.testing.assert_close(ours[1], theirs[1], atol=0, rtol=0)  # values, copied


@pytest.fixture
def without_native(monkeypatch, tmp_path):
    """The kernels as on a machine without a C compiler."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("GUARDRAILS_CACHE", str(tmp_path / "cache"))
    native._lib.cache_clear()
    yield
    native._lib.cache_clear()


def decode_logits(model, prompt: list[int], forced: list[int], monkeypatch) -> list[torch.Tensor]:
    """Logits of each step of one request whose next tokens are ``forced`` (so both paths see the same tokens)."""
    seen, queue = [], list(forced)

    def record(logits, *args):
        seen.append(logits.clone())
        return [queue.pop(0)]

    monkeypatch.setattr(core_module, "sample", record)
    core = EngineCore(model, block_size=4, kv_cache_tokens=256)
    core.add(Sequence(prompt, SamplingParams(max_tokens=len(forced), ignore_eos=True)))
    core.run_until_done()
    monkeypatch.undo()
    return seen


@needs_native
@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_decode_through_the_kernels_matches_pytorch(family, checkpoints, request, monkeypatch):
    """Every family in bf16, native kernels against the PyTorch path: the logits of 12 decode steps agree."""
    model = load_model(checkpoints(family), dtype=torch.bfloat16)
    prompt, forced = list(range(5, 26)), [7, 19, 3, 44, 101, 12, 9, 250, 31, 8, 77, 5, 60]
    ours = decode_logits(model, prompt, forced, monkeypatch)
    request.getfixturevalue("without_native")
    assert not native.available()
    theirs = decode_logits(model, prompt, forced, monkeypatch)
    assert len(ours) == len(theirs) == len(forced)
    for a, b in zip(ours, theirs, strict=True):
        spread = b.abs().max()
        assert spread > 0.5
        assert (a - b).abs().max() <= 0.05 * spread  # bf16 rounding, not a wrong formula


def step_logits(model, monkeypatch, *, blocks: bool) -> tuple[list[torch.Tensor], dict[str, int]]:
    """Logits of 6 steps serving three requests at once (prompts of 9, 14 and 3 tokens, forced outputs): the
    prefills then batches of three decodes, with the native layer blocks or with the kernels they chain; and how
    many calls each block took."""
    taken = dict.fromkeys(("attn_block", "mlp_block", "moe_block"), 0)
    for name in taken:
        kernel = getattr(native, name)

        def counted(*args, _kernel=kernel, _name=name, **kwargs):
            out = _kernel(*args, **kwargs) if blocks else None
            taken[_name] += out is not None
            return out

        monkeypatch.setattr(native, name, counted)
    seen = []

    def record(logits, params, *args):
        seen.append(logits.clone())
        return [(7 * len(seen) + 13 * i) % 200 + 5 for i in range(len(params))]

    monkeypatch.setattr(core_module, "sample", record)
    core = EngineCore(model, block_size=4, kv_cache_tokens=256)
    for n in (9, 14, 3):
        core.add(Sequence(list(range(10 + n, 10 + 2 * n)), SamplingParams(max_tokens=6, ignore_eos=True)))
    core.run_until_done()
    monkeypatch.undo()
    return seen, taken


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_layer_blocks_match_the_kernels_they_chain(family, dtype, checkpoints, monkeypatch):
    """A layer's attention, dense feed-forward and MoE blocks as one native call each, against the same kernels
    called one by one from Python: the same bits, but for the MoE routing (the C softmax / sigmoid may round a routing
    weight the other way)."""
    model = load_model(checkpoints(family), dtype=torch.bfloat16)
    if dtype == torch.float32:  # fp32 activations over bf16 weights: what a CPU without native bf16 matmul runs
        model.act_dtype = torch.float32
        for module in model.modules():
            for param in module.parameters(recurse=False):
                if param.dim() == 1:
                    param.data = param.data.float()
    ours, taken = step_logits(model, monkeypatch, blocks=True)
    theirs, _ = step_logits(model, monkeypatch, blocks=False)
    assert len(ours) == len(theirs) >= 6
    cfg = model.cfg
    moe = any(cfg.moe_layers)
    assert (taken["attn_block"] > 0) == (cfg.qk_norm in (None, "l2") and cfg.clip_qkv is None)
    assert (taken["mlp_block"] > 0) == (not all(cfg.moe_layers))
    assert (taken["moe_block"] > 0) == moe
    for a, b in zip(ours, theirs, strict=True):
        assert b.abs().max() > 0.5
        if moe:
            assert (a - b).abs().max() <= 0.02 * b.abs().max()
        else:
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_without_a_compiler_the_engine_uses_pytorch(without_native, checkpoints):
    assert not native.available()
    assert native.gemv(torch.randn(1, 16), torch.randn(8, 16).to(torch.bfloat16)) is None
    model = load_model(checkpoints("llama"), dtype=torch.bfloat16)
    core = EngineCore(model, block_size=4, kv_cache_tokens=256)
    seq = Sequence(list(range(5, 15)), SamplingParams(max_tokens=6, ignore_eos=True))
    core.add(seq)
    core.run_until_done()
    assert len(seq.output_ids) == 6


@needs_native
def test_the_build_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GUARDRAILS_CACHE", str(tmp_path))
    native._lib.cache_clear()
    try:
        assert native.available()
        (built,) = (tmp_path / "engine").glob("kernels-*.so")
        stamp = built.stat().st_mtime_ns
        native._lib.cache_clear()
        assert native.available() and built.stat().st_mtime_ns == stamp  # loaded, not rebuilt
    finally:
        monkeypatch.undo()
        native._lib.cache_clear()
