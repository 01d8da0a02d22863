"""Audit log cost: records per second into SQLite while the pipeline runs, and added latency per audited request.

Run: .venv/bin/python bench/audit_throughput.py [--requests N]

1. Throughput: threads drive requests through a pipeline that blocks and records every one of them; the writer
   thread stores them in the background. Records/s = requests / (time until the last record is durably written).
2. Added latency: the same pipeline with `record: all` against `record: none`, interleaved rounds in this process;
   the median difference is what auditing adds to a request (the write itself is off the request path).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from guardrails import Pipeline
from guardrails.audit import AuditStore
from guardrails.policy import policy_from_dict
from guardrails.testing import FakeGenerator

SCANNERS = [{"id": "always", "type": "static", "score": 1.0, "categories": ["S9"]}, {"id": "noop", "type": "static"}]


def pipeline(path: Path, record: str, synchronous: str = "full") -> Pipeline:
    audit = {
        "record": record,
        "sinks": [{"type": "sqlite", "path": str(path), "synchronous": synchronous}],
        "queue_size": 1_000_000,
    }
    return Pipeline(policy_from_dict({"name": "bench", "input": {"scanners": SCANNERS}, "audit": audit}))


def throughput(path: Path, n: int, threads: int, synchronous: str) -> float:
    pipe = pipeline(path, "all", synchronous)
    gen = FakeGenerator()
    pipe.run("warm up", generate=gen)
    pipe.audit.flush(timeout=60)
    per_thread = n // threads

    def drive() -> None:
        for i in range(per_thread):
            pipe.run(f"request {i}", generate=gen)

    start = time.perf_counter()
    workers = [threading.Thread(target=drive) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    submitted = time.perf_counter() - start
    assert pipe.audit.flush(timeout=600)
    elapsed = time.perf_counter() - start
    pipe.close()
    with AuditStore(path) as store:
        report = store.verify()
    assert report.ok, report
    total = per_thread * threads
    print(
        f"  sqlite synchronous={synchronous:<6} {threads} threads: {total} records in {elapsed:6.2f} s = "
        f"{total / elapsed:8.0f} records/s (requests finished after {submitted:5.2f} s; chain verified: "
        f"{report.checked} records)"
    )
    return total / elapsed


def added_latency(path: Path, n: int, rounds: int) -> None:
    audited, plain = pipeline(path, "all"), pipeline(path.with_name("unused.sqlite"), "none")
    gen = FakeGenerator()

    def per_request(pipe: Pipeline) -> float:
        start = time.perf_counter()
        for _ in range(n):
            pipe.run("a blocked request", generate=gen)
        return (time.perf_counter() - start) / n * 1e6

    per_request(audited), per_request(plain)  # warm up
    a, p = [], []
    for _ in range(rounds):
        p.append(per_request(plain))
        a.append(per_request(audited))
        audited.audit.flush(timeout=600)  # keep the spool from growing across rounds
    ma, mp = statistics.median(a), statistics.median(p)
    print(
        f"  audited {ma:7.1f} us/request, unaudited {mp:7.1f} us/request: auditing adds {ma - mp:6.1f} us "
        f"per request (ratio {ma / mp:.2f}x)"
    )
    audited.close()
    plain.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("throughput into SQLite, pipeline running concurrently:")
        throughput(Path(tmp) / "full.sqlite", args.requests, 4, "full")
        throughput(Path(tmp) / "normal.sqlite", args.requests, 4, "normal")
        print("added latency per audited request (median of interleaved rounds):")
        added_latency(Path(tmp) / "latency.sqlite", args.requests // 10, args.rounds)


if __name__ == "__main__":
    main()
