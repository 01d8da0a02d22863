"""Latency of the embedded guard models (prompt-guard-mini, llama-guard-mini) per short prompt, offline on a CPU.

Run: .venv/bin/python bench/embedded_latency.py [--requests N]

Each request is one short prompt (4-30 words) scanned alone (no concurrency): the latency a single user sees
("llama-guard-mini flagged": every prompt flagged, so the category model names its S-code too). The
baseline is a bare forward pass of the same MiniLM encoder over the same text in this process (tokenizer, then one
padded batch of 1 through the encoder's model thread: no windows, no head, no pipeline); the ratio shows what the
scanner adds around the model.

The baseline runs on the encoder's own thread, as the scanners' passes do: PyTorch ops started from a second thread
give the process a second OpenMP team, and with more OpenMP threads than cores libgomp stops spin-waiting between
parallel regions, which here made every small forward pass ~1.8x slower (11 -> 19 ms), the baseline's and the
scanners' alike.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from checkpoints import CORPUS  # noqa: E402

from guardrails.embedded import shared_encoder, weights_path  # noqa: E402
from guardrails.scanners import ScanInput, scanner_class  # noqa: E402
from guardrails.types import Role, Stage  # noqa: E402


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    for name in ("prompt-guard-mini", "llama-guard-mini"):
        if not weights_path(name).is_file():
            raise SystemExit(
                f"{weights_path(name)} is missing: python -m guardrails.train {name} --data ../shared/data"
            )
    rng = random.Random(0)
    words = " ".join(CORPUS).split()

    def fresh_texts() -> list[str]:
        """New prompts for each measurement: the encoder remembers texts it has seen, which would flatter a rerun."""
        return [
            " ".join(rng.choice(words) for _ in range(rng.randint(4, 30))) + f" #{rng.random():.12f}"
            for _ in range(args.requests)
        ]

    encoder = shared_encoder()
    scanners = {
        "prompt-guard-mini": scanner_class("prompt_guard").config_model(
            type="prompt_guard", id="pg", model="embedded:prompt-guard-mini"
        ),
        "llama-guard-mini": scanner_class("llama_guard").config_model(
            type="llama_guard", id="lg", model="embedded:llama-guard-mini"
        ),
        # a threshold that flags every prompt: each one also runs the category model, as a flagged prompt does
        "llama-guard-mini flagged": scanner_class("llama_guard").config_model(
            type="llama_guard", id="lg-flagged", model="embedded:llama-guard-mini", threshold=1e-9
        ),
    }
    built = {name: scanner_class(c.type)(c) for name, c in scanners.items()}

    def bare(text: str) -> None:
        ids = encoder.tokenizer(text, truncation=True, max_length=256)["input_ids"]
        encoder.runner.submit([ids]).result()

    async def scan(scanner, text: str) -> None:
        await scanner.scan([ScanInput(text, role=Role.USER, index=0, stage=Stage.INPUT)])

    def timed(fn) -> list[float]:
        out = []
        for text in fresh_texts():
            start = time.perf_counter()
            fn(text)
            out.append((time.perf_counter() - start) * 1000)
        return out

    loop = asyncio.new_event_loop()
    for text in fresh_texts()[:20]:  # warm up
        bare(text)
        for scanner in built.values():
            loop.run_until_complete(scan(scanner, text))
    base = timed(bare)
    b50 = statistics.median(base)
    print(
        f"{args.requests} short prompts (4-30 words), one at a time, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'':<34} {'p50 ms':>8} {'p99 ms':>8} {'p50 / bare':>11}")
    print(f"{'bare MiniLM forward (baseline)':<34} {b50:8.2f} {percentile(base, 99):8.2f} {1.0:11.2f}")
    for name, scanner in built.items():
        lat = timed(lambda t, s=scanner: loop.run_until_complete(scan(s, t)))
        p50 = statistics.median(lat)
        verdict = "under" if p50 < 20 else "OVER"
        print(f"{name + ' scanner':<34} {p50:8.2f} {percentile(lat, 99):8.2f} {p50 / b50:11.2f}   ({verdict} 20 ms)")
    loop.close()


if __name__ == "__main__":
    main()
