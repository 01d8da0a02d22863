"""Cost of the pipeline itself: three no-op scanners around a generate call, against calling it bare.

Run: make bench   (or: .venv/bin/python bench/pipeline_overhead.py [--requests N])

Prints, for the sync and async APIs, microseconds per request through the pipeline, for the bare call, the
difference (the pipeline's overhead) and the ratio. Each figure is the median of several rounds run in this
process, interleaved with the baseline, so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from guardrails import Pipeline
from guardrails.policy import policy_from_dict

NOOP = [{"id": f"noop{i}", "type": "static"} for i in range(3)]


def generate(prompt: str) -> str:
    return "ok"


async def agenerate(prompt: str) -> str:
    return "ok"


def per_request_us(fn, n: int) -> float:
    start = time.perf_counter()
    fn(n)
    return (time.perf_counter() - start) / n * 1e6


def measure(label: str, pipe_fn, bare_fn, n: int, rounds: int) -> float:
    piped, bare = [], []
    for _ in range(rounds):
        bare.append(per_request_us(bare_fn, n))
        piped.append(per_request_us(pipe_fn, n))
    p, b = statistics.median(piped), statistics.median(bare)
    print(f"{label:<44} {p:9.1f} us/req   bare {b:7.2f} us/req   overhead {p - b:7.1f} us   ratio {p / b:8.1f}x")
    return p - b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    n, rounds = args.requests, args.rounds

    input_only = Pipeline(policy_from_dict({"name": "bench", "input": {"scanners": NOOP}}))
    both = Pipeline(policy_from_dict({"name": "bench", "input": {"scanners": NOOP}, "output": {"scanners": NOOP}}))

    def bare_sync(k: int) -> None:
        for _ in range(k):
            generate("What is the capital of France?")

    def piped_sync(pipe: Pipeline):
        def run(k: int) -> None:
            for _ in range(k):
                pipe.run("What is the capital of France?", generate=generate)

        return run

    loop = asyncio.new_event_loop()

    def bare_async(k: int) -> None:
        async def go() -> None:
            for _ in range(k):
                await agenerate("What is the capital of France?")

        loop.run_until_complete(go())

    def piped_async(pipe: Pipeline):
        def run(k: int) -> None:
            async def go() -> None:
                for _ in range(k):
                    await pipe.arun("What is the capital of France?", generate=agenerate)

            loop.run_until_complete(go())

        return run

    piped_sync(input_only)(200)  # warm up: first-call imports, loop creation
    print(f"pipeline overhead, {n} requests x {rounds} rounds (median round)")
    headline = measure("sync run(), 3 no-op scanners", piped_sync(input_only), bare_sync, n, rounds)
    measure("async arun(), 3 no-op scanners", piped_async(input_only), bare_async, n, rounds)
    measure("sync run(), 3 no-op on input + 3 on output", piped_sync(both), bare_sync, n, rounds)
    loop.close()
    verdict = "under" if headline < 100 else "OVER"
    print(f"result: {headline:.1f} us per request of pipeline overhead with three no-op scanners ({verdict} 100 us)")


if __name__ == "__main__":
    main()
