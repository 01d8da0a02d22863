"""Prompt Guard scanner throughput and latency with micro-batching, against calling the model once per request.

Run: .venv/bin/python bench/classifier_batching.py [--requests-per-client N] [--dtype float32|bfloat16]

The checkpoint has the real Prompt-Guard-86M shape (mDeBERTa-v3-base: 12 layers, hidden 768, vocabulary 250,105)
with random weights, built into a temporary directory. Prompt lengths are chosen with --lengths (short: 4-30 words,
mixed: 8-180, long: 150-400). At each concurrency level, that many clients each send requests one after another
(closed loop):

- baseline: each request tokenises its text and calls the model alone (batch 1) on a thread of its own, the way a
  service that calls transformers per request does;
- batched: each request goes through the Prompt Guard scanner, whose runtime groups concurrent requests into one
  forward pass (sorted by length, up to max_batch sequences).

Both use the same model object and dtype. Printed: requests/s, p50 and p99 latency, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from checkpoints import CORPUS, build_tokenizer  # noqa: E402  (the tests' offline tokenizer)

from guardrails.scanners import ScanInput, scanner_class  # noqa: E402
from guardrails.types import Role, Stage  # noqa: E402


def build_checkpoint(path: Path) -> Path:
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    tokenizer = build_tokenizer(512)
    config = DebertaV2Config(  # microsoft/mdeberta-v3-base, as Prompt-Guard-86M uses it
        vocab_size=250_105,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=256,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        max_relative_positions=-1,
        num_labels=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    tokenizer.save_pretrained(path)
    DebertaV2ForSequenceClassification(config).save_pretrained(path)
    return path


LENGTHS = {"short": (4, 30), "mixed": (8, 180), "long": (150, 400)}  # words per prompt (about 1.1 tokens each)


def prompts(n: int, lengths: tuple[int, int], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = " ".join(CORPUS).split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(*lengths))) for _ in range(n)]


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def baseline(scanner, texts: list[list[str]]) -> tuple[float, list[float]]:
    """Each client thread calls the model once per request."""
    tokenizer, model = scanner.tokenizer, scanner.model
    latencies: list[float] = []
    lock = threading.Lock()

    def client(batch: list[str]) -> None:
        for text in batch:
            start = time.perf_counter()
            encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=512)
            with torch.inference_mode():
                torch.softmax(model(**encoded).logits.float(), dim=-1)
            with lock:
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / (time.perf_counter() - start), latencies


def batched(scanner, texts: list[list[str]]) -> tuple[float, list[float]]:
    """Each client is a coroutine sending its requests through the scanner (and so through the runtime)."""
    latencies: list[float] = []

    async def client(batch: list[str]) -> None:
        for text in batch:
            start = time.perf_counter()
            await scanner.scan([ScanInput(text, role=Role.USER, index=0, stage=Stage.INPUT)])
            latencies.append(time.perf_counter() - start)

    async def main() -> None:
        await asyncio.gather(*(client(t) for t in texts))

    start = time.perf_counter()
    asyncio.run(main())
    return len(latencies) / (time.perf_counter() - start), latencies


def run_profile(scanner, lengths: str, levels: list[int], requests_per_client: int) -> None:
    span = LENGTHS[lengths]
    batched(scanner, [prompts(4, span, seed=99)])  # warm up this length range
    before = dataclasses.replace(scanner.runner.stats)
    print(f"\n{lengths} prompts ({span[0]}-{span[1]} words)")
    print(f"{'clients':>7} {'':>9} {'req/s':>8} {'p50 ms':>9} {'p99 ms':>9}")
    for level in levels:
        per_client = requests_per_client or max(2, 64 // level)
        texts = prompts(level * per_client, span, seed=level)
        split = [texts[i * per_client : (i + 1) * per_client] for i in range(level)]
        b_tput, b_lat = baseline(scanner, split)
        m_tput, m_lat = batched(scanner, split)
        b50, b99 = percentile(b_lat, 50) * 1000, percentile(b_lat, 99) * 1000
        m50, m99 = percentile(m_lat, 50) * 1000, percentile(m_lat, 99) * 1000
        print(f"{level:>7} {'baseline':>9} {b_tput:8.2f} {b50:9.1f} {b99:9.1f}")
        print(
            f"{level:>7} {'batched':>9} {m_tput:8.2f} {m50:9.1f} {m99:9.1f}   throughput x{m_tput / b_tput:.2f}, "
            f"p99 / baseline p50 = {m99 / b50:.2f}"
        )
    stats = scanner.runner.stats
    passes, seqs = stats.batches - before.batches, stats.sequences - before.sequences
    padding = (stats.padded_tokens - before.padded_tokens) / max(stats.real_tokens - before.real_tokens, 1) - 1
    print(f"runtime: {passes} forward passes, mean batch {seqs / max(passes, 1):.1f}, padding {padding:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests-per-client", type=int, default=0, help="default: enough for ~64 requests a level")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-batch-tokens", type=int, default=1024)
    parser.add_argument("--lengths", default="short,mixed", help=f"comma-separated, of {', '.join(LENGTHS)}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("building a random Prompt-Guard-86M-shaped checkpoint ...", flush=True)
        path = build_checkpoint(Path(tmp) / "pg86m")
        cls = scanner_class("prompt_guard")
        config = cls.config_model(
            type="prompt_guard",
            model=str(path),
            dtype=args.dtype,
            max_batch=args.max_batch,
            max_batch_tokens=args.max_batch_tokens,
            max_wait_ms=5,
        )
        scanner = cls(config)
        baseline(scanner, [prompts(4, LENGTHS["short"], seed=99)])
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, dtype {args.dtype}, max_batch "
            f"{args.max_batch}, max_batch_tokens {args.max_batch_tokens}"
        )
        for lengths in args.lengths.split(","):
            run_profile(scanner, lengths, [int(x) for x in args.levels.split(",")], args.requests_per_client)
        scanner.runner.close()


if __name__ == "__main__":
    main()
