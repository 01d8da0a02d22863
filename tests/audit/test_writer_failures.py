"""The audit writer against real failures: an unusable path, a locked database, a full disk, a full spool.

No mocks: each failure is produced the way it happens in production (we run as root, so permissions cannot make a
path unwritable; a regular file where a directory should be, another process's lock and ``/dev/full`` can).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import make_pipeline

from guardrails import Decision, Pipeline, Status
from guardrails.audit import AuditStore
from guardrails.audit.record import GENESIS, canonical, chain_hash
from guardrails.testing import FakeGenerator

REPO = Path(__file__).resolve().parents[2]
BLOCK_ALL = [{"type": "static", "score": 1}]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition``; the timeout only guards against a hang, it is not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def pipelines() -> Iterator[Callable[..., Pipeline]]:
    """Build pipelines that are closed after the test without waiting 10 s on a sink a failed test left broken."""
    made: list[Pipeline] = []

    def make(**kwargs: Any) -> Pipeline:
        pipe = make_pipeline(**kwargs)
        made.append(pipe)
        return pipe

    yield make
    for pipe in made:
        if pipe.audit is not None:
            pipe.audit.close(timeout=0.5)
        pipe.close()


def stored_ids(path: str | Path) -> set[str]:
    with AuditStore(path) as store:
        return {r["request_id"] for r in store.records()}


def verify(path: str | Path) -> None:
    with AuditStore(path) as store:
        report = store.verify()
    assert report.ok, str(report)


def audit_lines(caplog: pytest.LogCaptureFixture, level: int = logging.ERROR) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "guardrails.audit" and r.levelno >= level]


def jsonl_chain(path: Path) -> list[dict[str, Any]]:
    """The lines of a JSONL audit file, asserting the chain links up from the genesis hash."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    prev_seq, prev_hash = 0, GENESIS
    for line in lines:
        assert line["seq"] == prev_seq + 1
        assert line["prev_hash"] == prev_hash
        assert line["hash"] == chain_hash(prev_hash, line["seq"], canonical(line["record"]))
        prev_seq, prev_hash = line["seq"], line["hash"]
    return lines


# -- an SQLite path that cannot be created ----------------------------------------------------------------------


def test_unavailable_sqlite_path_spools_then_writes_everything_once_fixed(pipelines, caplog):
    caplog.set_level(logging.WARNING, logger="guardrails.audit")
    blocker = Path("blocker")
    blocker.write_text("a regular file where the audit directory should be\n")
    db = "blocker/audit.sqlite"
    pipe = pipelines(input=BLOCK_ALL, audit={"sinks": [{"type": "sqlite", "path": db}]})
    gen = FakeGenerator()

    results = [pipe.run(f"request {i}", generate=gen) for i in range(5)]

    # Requests are answered (the refusal), never turned into exceptions by the audit failure.
    assert all(r.blocked and r.text == pipe.policy.refusal.input for r in results)
    assert all(r.verdicts[0].results[0].scanner_id != "audit" for r in results)
    assert gen.calls == []
    writer = pipe.audit
    wait_until(lambda: writer.status()[0].failures > 0, what="a failed write")
    status = writer.status()[0]
    assert status.name == f"sqlite:{db}"
    assert not status.healthy
    assert status.pending == 5
    assert status.written == 0
    assert status.last_error
    errors = audit_lines(caplog)
    assert any(status.name in line and "failing" in line for line in errors), errors
    assert not writer.flush(timeout=0.5)
    assert not Path(db).exists()

    blocker.unlink()

    assert writer.flush(timeout=10)
    status = writer.status()[0]
    assert status.healthy and status.pending == 0 and status.written == 5
    assert any("recovered" in line for line in audit_lines(caplog, logging.WARNING))
    assert stored_ids(db) == {r.request_id for r in results}
    verify(db)


# -- a database locked by another process ----------------------------------------------------------------------


def test_locked_database_is_retried_until_the_lock_is_released(pipelines):
    db = "audit.sqlite"
    pipe = pipelines(input=BLOCK_ALL, audit={"sinks": [{"type": "sqlite", "path": db, "busy_timeout": 0.05}]})
    writer = pipe.audit
    first = pipe.scan_input("before the lock")
    assert writer.flush(timeout=10)
    assert stored_ids(db) == {first.request_id}

    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        locked = [pipe.scan_input(f"while locked {i}") for i in range(4)]
        assert all(r.blocked for r in locked)
        wait_until(lambda: writer.status()[0].failures >= 2, what="a retried write")
        status = writer.status()[0]
        assert not status.healthy and status.pending == 4 and status.written == 1
        assert "locked" in (status.last_error or "")
        assert not writer.flush(timeout=0.3)
        other.execute("COMMIT")
    finally:
        other.close()

    assert writer.flush(timeout=10)
    status = writer.status()[0]
    assert status.healthy and status.pending == 0 and status.written == 5
    assert stored_ids(db) == {first.request_id, *(r.request_id for r in locked)}
    verify(db)


# -- a full disk under the JSONL sink ---------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_full_disk_for_jsonl_is_retried_and_the_chain_stays_consistent(pipelines, caplog):
    caplog.set_level(logging.WARNING, logger="guardrails.audit")
    path = Path("audit.jsonl")
    path.symlink_to("/dev/full")
    pipe = pipelines(input=BLOCK_ALL, audit={"sinks": [{"type": "jsonl", "path": str(path)}]})
    writer = pipe.audit

    results = [pipe.scan_input(f"request {i}") for i in range(6)]

    assert all(r.blocked for r in results)
    wait_until(lambda: writer.status()[0].failures > 0, what="a failed write")
    status = writer.status()[0]
    assert not status.healthy and status.pending == 6 and status.written == 0
    assert "No space left" in (status.last_error or "")
    assert any("jsonl:audit.jsonl" in line for line in audit_lines(caplog))
    assert not writer.flush(timeout=0.3)

    path.unlink()  # the disk has room again: the next retry creates a regular file

    assert writer.flush(timeout=10)
    assert path.is_file() and not path.is_symlink()
    lines = jsonl_chain(path)
    assert [line["record"]["request_id"] for line in lines] == [r.request_id for r in results]

    # The chain continues from the recovered file.
    more = [pipe.scan_input(f"after {i}") for i in range(2)]
    assert writer.flush(timeout=10)
    lines = jsonl_chain(path)
    assert [line["record"]["request_id"] for line in lines] == [r.request_id for r in results + more]


# -- a full spool ------------------------------------------------------------------------------------------------


def test_full_spool_with_on_full_block_refuses_requests_until_the_sink_recovers(pipelines):
    blocker = Path("blocker")
    blocker.write_text("")
    db = "blocker/audit.sqlite"
    pipe = pipelines(
        audit={"record": "all", "queue_size": 3, "on_full": "block", "sinks": [{"type": "sqlite", "path": db}]}
    )
    writer = pipe.audit
    gen = FakeGenerator()

    accepted = [pipe.run(f"hello {i}", generate=gen) for i in range(3)]
    assert [r.decision for r in accepted] == [Decision.ALLOW] * 3
    assert [r.text for r in accepted] == [f"You said: hello {i}" for i in range(3)]
    assert len(gen.calls) == 3
    wait_until(lambda: writer.status()[0].failures > 0, what="a failed write")
    assert writer.status()[0].pending == 3
    assert writer.refused == 0

    refused = [pipe.run(f"refused {i}", generate=gen) for i in range(2)]

    assert len(gen.calls) == 3, "a request the audit log cannot take must not reach the model"
    for result in refused:
        assert result.blocked
        assert result.text == pipe.policy.refusal.input
        scanners = [r for v in result.verdicts for r in v.results]
        assert [r.scanner_id for r in scanners] == ["audit"]
        assert scanners[0].status is Status.ERROR
        assert scanners[0].decision is Decision.BLOCK
        assert "audit log full" in result.reason
    assert writer.refused == 2
    assert writer.status()[0].pending == 3
    assert writer.status()[0].dropped == 0

    blocker.unlink()
    assert writer.flush(timeout=10)

    again = pipe.run("welcome back", generate=gen)
    assert again.decision is Decision.ALLOW and again.text == "You said: welcome back"
    assert len(gen.calls) == 4
    assert writer.refused == 2
    assert writer.flush(timeout=10)
    assert stored_ids(db) == {r.request_id for r in [*accepted, again]}
    verify(db)


def test_full_spool_with_on_full_drop_answers_requests_and_counts_the_dropped_records(pipelines, caplog):
    caplog.set_level(logging.WARNING, logger="guardrails.audit")
    blocker = Path("blocker")
    blocker.write_text("")
    db = "blocker/audit.sqlite"
    pipe = pipelines(
        audit={"record": "all", "queue_size": 3, "on_full": "drop", "sinks": [{"type": "sqlite", "path": db}]}
    )
    writer = pipe.audit
    gen = FakeGenerator()

    results = [pipe.run(f"hello {i}", generate=gen) for i in range(5)]

    assert [r.decision for r in results] == [Decision.ALLOW] * 5
    assert [r.text for r in results] == [f"You said: hello {i}" for i in range(5)]
    assert len(gen.calls) == 5
    status = writer.status()[0]
    assert status.pending == 3
    assert status.dropped == 2
    assert writer.refused == 0
    errors = audit_lines(caplog)
    for dropped in results[3:]:
        assert any(dropped.request_id in line and "dropped" in line for line in errors), errors
    for kept in results[:3]:
        assert not any(kept.request_id in line for line in errors)

    blocker.unlink()
    assert writer.flush(timeout=10)
    status = writer.status()[0]
    assert status.healthy and status.pending == 0 and status.written == 3 and status.dropped == 2
    assert stored_ids(db) == {r.request_id for r in results[:3]}
    verify(db)


# -- close -------------------------------------------------------------------------------------------------------


def test_close_writes_records_submitted_just_before_it():
    db = "audit.sqlite"
    pipe = make_pipeline(input=BLOCK_ALL, audit={"sinks": [{"type": "sqlite", "path": db}]})
    results = [pipe.scan_input(f"request {i}") for i in range(50)]

    pipe.close()

    assert stored_ids(db) == {r.request_id for r in results}
    verify(db)


def test_close_waits_for_a_sink_that_recovers_while_closing():
    db = "audit.sqlite"
    pipe = make_pipeline(input=BLOCK_ALL, audit={"sinks": [{"type": "sqlite", "path": db, "busy_timeout": 0.05}]})
    writer = pipe.audit
    first = pipe.scan_input("first")
    assert writer.flush(timeout=10)

    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    results = [pipe.scan_input(f"request {i}") for i in range(10)]
    wait_until(lambda: writer.status()[0].failures > 0, what="a failed write")
    assert writer.status()[0].pending == 10

    def release() -> None:
        time.sleep(0.3)
        other.execute("COMMIT")
        other.close()

    releaser = threading.Thread(target=release)
    releaser.start()
    try:
        pipe.close()
    finally:
        releaser.join(timeout=10)

    assert stored_ids(db) == {first.request_id, *(r.request_id for r in results)}
    verify(db)


# -- library bugs found while writing these tests ---------------------------------------------------------------


async def test_full_spool_with_on_full_block_never_answers_a_request_it_did_not_record(pipelines):
    blocker = Path("blocker")
    blocker.write_text("")
    db = "blocker/audit.sqlite"
    pipe = pipelines(
        output=[{"type": "static", "score": 0, "delay": 0.5}],
        audit={"record": "all", "queue_size": 1, "on_full": "block", "sinks": [{"type": "sqlite", "path": db}]},
    )
    gen = FakeGenerator()

    results = await asyncio.gather(pipe.arun("one", generate=gen), pipe.arun("two", generate=gen))

    blocker.unlink()
    assert pipe.audit.flush(timeout=10)
    answered = {r.request_id for r in results if not r.blocked}
    assert answered <= stored_ids(db), f"answered but never recorded; refused={pipe.audit.refused}"


def test_close_timing_out_during_a_write_attempt_does_not_crash_the_writer_thread(pipelines, monkeypatch):
    crashes: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(args.exc_value))
    db = "audit.sqlite"
    pipe = pipelines(input=BLOCK_ALL, audit={"sinks": [{"type": "sqlite", "path": db, "busy_timeout": 3.0}]})
    writer = pipe.audit
    pipe.scan_input("first")
    assert writer.flush(timeout=10)

    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    [pipe.scan_input(f"request {i}") for i in range(3)]  # the writer thread now waits up to 3 s for the lock

    def release() -> None:
        time.sleep(0.5)  # after close(timeout=0.2) gave up, before the writer's busy timeout runs out
        other.execute("COMMIT")
        other.close()

    releaser = threading.Thread(target=release)
    releaser.start()
    try:
        writer.close(timeout=0.2)
    finally:
        releaser.join(timeout=10)
    writer._thread.join(timeout=10)  # the attempt that was in flight when close() gave up has ended

    assert crashes == []


FSIZE_CHILD = r"""
import resource, signal, sys
from guardrails import Pipeline
from guardrails.policy import policy_from_dict

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing us
pipe = Pipeline(policy_from_dict({
    "name": "fsize",
    "input": {"scanners": [{"type": "static", "score": 1}]},
    "output": {"scanners": []},
    "audit": {"sinks": [{"type": "jsonl", "path": "audit.jsonl"}]},
}))
writer = pipe.audit
pipe.scan_input("first request")
assert writer.flush(timeout=10)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
size = len(open("audit.jsonl", "rb").read())
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))  # the disk fills up 100 bytes into the next line
pipe.scan_input("second request")
assert not writer.flush(timeout=0.5)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again
assert writer.flush(timeout=10)
pipe.close()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE")
def test_jsonl_write_cut_short_by_a_full_disk_leaves_no_torn_line(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(FSIZE_CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "short write" in proc.stderr  # the full disk really cut a write short
    lines = jsonl_chain(tmp_path / "audit.jsonl")
    assert [line["record"]["content"]["messages"][0]["length"] for line in lines] == [13, 14]
