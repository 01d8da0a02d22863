"""The durability bar: a process killed with SIGKILL while writing a stream of audited requests loses no record that
the API reported as written, and the SQLite file opens cleanly afterwards.

The child process below audits a stream of blocked requests to SQLite and JSONL and prints a request id only after
``flush()`` returned True for it; the parent kills it with SIGKILL in the middle of the stream.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support import make_pipeline

from guardrails.audit import AuditStore
from guardrails.audit.record import GENESIS, canonical, chain_hash

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

REPO = Path(__file__).resolve().parents[2]
REPORTED = 200

CHILD = r"""
import sys

from guardrails import Pipeline
from guardrails.policy import policy_from_dict

db, jsonl = sys.argv[1], sys.argv[2]
policy = policy_from_dict({
    "name": "crash",
    "input": {"scanners": [{"type": "static", "score": 1}]},
    "output": {"scanners": []},
    "audit": {"privacy": "full", "sinks": [{"type": "sqlite", "path": db}, {"type": "jsonl", "path": jsonl}]},
})
pipe = Pipeline(policy)
writer = pipe.audit
n = 0
while True:
    ids = []
    for _ in range(1 + n % 7):  # batches of varying size, so kills land at different points of a write
        ids.append(pipe.scan_input(f"request {n} " + "x" * (n % 500)).request_id)
        n += 1
    if writer.flush(timeout=30):
        sys.stdout.write("".join(i + "\n" for i in ids))
        sys.stdout.flush()
"""


def _read_lines(stream: Any, out: queue.Queue[str | None]) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


def jsonl_lines(path: Path) -> tuple[list[dict[str, Any]], bytes]:
    """The complete lines of a JSONL audit file (chain checked from the genesis hash) and any torn tail."""
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    lines = [json.loads(line) for line in data[:cut].splitlines()]
    prev_seq, prev_hash = 0, GENESIS
    for line in lines:
        assert line["seq"] == prev_seq + 1
        assert line["prev_hash"] == prev_hash
        assert line["hash"] == chain_hash(prev_hash, line["seq"], canonical(line["record"]))
        prev_seq, prev_hash = line["seq"], line["hash"]
    return lines, data[cut:]


def verify(db: Path) -> set[str]:
    with AuditStore(db) as store:
        report = store.verify()
        assert report.ok, str(report)
        return {r["request_id"] for r in store.records()}


def test_sigkill_while_writing_loses_no_reported_record(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    db, jsonl = tmp_path / "audit.sqlite", tmp_path / "audit.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with (tmp_path / "child.stderr").open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(db), str(jsonl)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=tmp_path,
            env=env,
        )
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    reported: list[str] = []
    try:
        deadline = time.monotonic() + 15
        while len(reported) < REPORTED:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line is None:
                break
            reported.append(line.rstrip("\n"))
        alive = proc.poll() is None
        proc.kill()  # SIGKILL: no atexit handler, no flush, no close
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=10)
        proc.stdout.close()
    assert alive, f"the child stopped on its own: {(tmp_path / 'child.stderr').read_text()[-2000:]}"
    assert len(reported) >= REPORTED, f"only {len(reported)} ids in time: {(tmp_path / 'child.stderr').read_text()}"
    assert proc.returncode == -signal.SIGKILL
    # Ids the child printed before it died were reported as written too.
    while not lines.empty():
        line = lines.get_nowait()
        if line is not None and line.endswith("\n"):
            reported.append(line.rstrip("\n"))
    assert len(set(reported)) == len(reported)

    # SQLite: the file opens cleanly and holds every reported record, chain intact.
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    stored = verify(db)
    missing = set(reported) - stored
    assert not missing, f"{len(missing)} reported records missing from SQLite"

    # JSONL: every reported record is on a complete line, and the complete lines chain up.
    before, _torn = jsonl_lines(jsonl)
    missing = set(reported) - {line["record"]["request_id"] for line in before}
    assert not missing, f"{len(missing)} reported records missing from JSONL"

    # A new writer on the same files cuts a torn tail and continues both chains.
    pipe = make_pipeline(
        input=[{"type": "static", "score": 1}],
        audit={"sinks": [{"type": "sqlite", "path": str(db)}, {"type": "jsonl", "path": str(jsonl)}]},
    )
    try:
        after = pipe.scan_input("after the crash")
        assert pipe.audit.flush(timeout=10)
    finally:
        pipe.close()
    lines_after, tail = jsonl_lines(jsonl)
    assert tail == b""
    assert lines_after[:-1] == before
    assert lines_after[-1]["record"]["request_id"] == after.request_id
    assert after.request_id in verify(db)


def test_torn_jsonl_tail_is_cut_when_a_writer_opens_the_file(tmp_path):
    jsonl = tmp_path / "audit.jsonl"
    audit = {"sinks": [{"type": "jsonl", "path": str(jsonl)}]}
    pipe = make_pipeline(input=[{"type": "static", "score": 1}], audit=audit)
    try:
        first = [pipe.scan_input(f"request {i}").request_id for i in range(3)]
        assert pipe.audit.flush(timeout=10)
    finally:
        pipe.close()
    complete = jsonl.read_bytes()
    # What a write killed half-way leaves behind: the start of a line, no newline.
    with jsonl.open("ab") as f:
        f.write(complete.splitlines(keepends=True)[-1][:40])

    pipe = make_pipeline(input=[{"type": "static", "score": 1}], audit=audit)
    try:
        more = pipe.scan_input("after the crash").request_id
        assert pipe.audit.flush(timeout=10)
    finally:
        pipe.close()

    lines, tail = jsonl_lines(jsonl)
    assert tail == b""
    assert jsonl.read_bytes().startswith(complete)
    assert [line["record"]["request_id"] for line in lines] == [*first, more]
