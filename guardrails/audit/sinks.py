"""Where audit records go. A sink writes a batch durably or raises; the writer retries what raised.

- :class:`SQLiteSink`: one file in WAL mode, indexed by time, decision, scanner, category and tenant, hash-chained
  inside the same transaction as the insert (so several processes can share one file);
- :class:`JSONLSink`: append-only JSON lines, fsynced per batch, rotated by size, hash-chained across rotations;
- :class:`StdoutSink`: one JSON line per record, for container logs.

To centralise many sidecars, ship the JSONL or stdout stream to the log pipeline you already run (each line carries
its chain fields), or add a sink for a server database: a class with ``write(records)`` and ``close()``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from guardrails.audit.record import GENESIS, canonical, chain_hash
from guardrails.audit.settings import JSONLSinkSettings, SQLiteSinkSettings, StdoutSinkSettings

__all__ = ["Sink", "SQLiteSink", "JSONLSink", "StdoutSink", "make_sink", "SCHEMA"]


class Sink(Protocol):
    name: str

    def write(self, records: Sequence[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    time TEXT NOT NULL,
    ts REAL NOT NULL,
    tenant TEXT,
    policy TEXT NOT NULL,
    policy_hash TEXT NOT NULL,
    stage TEXT,
    decision TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    record TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_ts ON records (ts);
CREATE INDEX IF NOT EXISTS records_decision ON records (decision, ts);
CREATE INDEX IF NOT EXISTS records_tenant ON records (tenant, ts);
CREATE INDEX IF NOT EXISTS records_request ON records (request_id);
CREATE TABLE IF NOT EXISTS hits (
    seq INTEGER NOT NULL REFERENCES records (seq) ON DELETE CASCADE,
    scanner TEXT NOT NULL,
    decision TEXT NOT NULL,
    status TEXT NOT NULL,
    score REAL NOT NULL,
    category TEXT
);
CREATE INDEX IF NOT EXISTS hits_scanner ON hits (scanner, seq);
CREATE INDEX IF NOT EXISTS hits_category ON hits (category, seq);
CREATE TABLE IF NOT EXISTS chain (id INTEGER PRIMARY KEY CHECK (id IN (1, 2)), seq INTEGER NOT NULL, hash TEXT NOT NULL);
"""
# chain row 1: the head (last record written); row 2: the anchor (last record pruned), absent until a prune.

_CHAIN_HEAD, _CHAIN_ANCHOR = 1, 2


def _ts(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["time"]).timestamp()  # "...Z" is UTC


def record_columns(record: dict[str, Any]) -> tuple[Any, ...]:
    """The indexed columns of a record, derived from its JSON (``verify`` checks they still agree)."""
    return (
        record["request_id"],
        record["time"],
        _ts(record),
        record["tenant"],
        record["policy"]["name"],
        record["policy"]["hash"],
        record["stage"],
        record["decision"],
        record["latency_ms"],
    )


def record_hits(record: dict[str, Any]) -> list[tuple[Any, ...]]:
    """One row per scanner result that did something (fired, failed), per category."""
    rows = []
    for r in record["results"]:
        if r["decision"] == "allow" and r["status"] in ("ok", "skipped"):
            continue
        for category in r["categories"] or [None]:
            rows.append((r["scanner"], r["decision"], r["status"], r["score"], category))
    return rows


def connect(path: str | Path, *, busy_timeout: float = 2.0, create: bool = True) -> sqlite3.Connection:
    """A connection to an audit database (created with its schema when ``create``)."""
    path = Path(path)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.is_file():
        raise FileNotFoundError(f"no audit database at {path}")
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA foreign_keys = ON")
    if create:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(SCHEMA)
    return conn


class SQLiteSink:
    def __init__(self, settings: SQLiteSinkSettings, key: bytes | None) -> None:
        self.settings = settings
        self.name = f"sqlite:{settings.path}"
        self._path = Path(settings.path).absolute()  # relative to the working directory at start-up, not later
        self._key = key
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = connect(self._path, busy_timeout=self.settings.busy_timeout)
            try:
                conn.execute(f"PRAGMA synchronous = {self.settings.synchronous.upper()}")
                algorithm = "hmac-sha256" if self._key is not None else "sha256"
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('chain', ?)", (algorithm,))
                stored = conn.execute("SELECT value FROM meta WHERE key = 'chain'").fetchone()[0]
                if stored != algorithm:
                    raise RuntimeError(f"{self._path} is chained with {stored}, this policy uses {algorithm}")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        try:
            conn = self._open()
            conn.execute("BEGIN IMMEDIATE")  # serialises writers: the chain head is read and moved atomically
            try:
                head = conn.execute("SELECT seq, hash FROM chain WHERE id = ?", (_CHAIN_HEAD,)).fetchone()
                seq, prev = head if head else (0, GENESIS)
                rows, hits = [], []
                for record in records:
                    seq += 1
                    text = canonical(record)
                    digest = chain_hash(prev, seq, text, self._key)
                    rows.append((seq, *record_columns(record), text, prev, digest))
                    hits.extend((seq, *hit) for hit in record_hits(record))
                    prev = digest
                conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                conn.executemany("INSERT INTO hits VALUES (?, ?, ?, ?, ?, ?)", hits)
                conn.execute("INSERT OR REPLACE INTO chain VALUES (?, ?, ?)", (_CHAIN_HEAD, seq, prev))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except Exception:
            self.close()  # reopen on the next try: the file may have been fixed, moved or recreated
            raise

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


class JSONLSink:
    """``{"seq", "prev_hash", "hash", "record"}`` per line; the chain continues across rotated files."""

    def __init__(self, settings: JSONLSinkSettings, key: bytes | None) -> None:
        self.settings = settings
        self.name = f"jsonl:{settings.path}"
        self._key = key
        self._path = Path(settings.path).absolute()  # relative to the working directory at start-up, not later
        self._head: tuple[int, str] | None = None

    def _last_line(self) -> tuple[int, str]:
        """The chain head from the newest file, after cutting a line torn by a crash (never reported written)."""
        if self._path.is_file():
            with self._path.open("rb+") as f:
                data = f.read()
                if data and not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
        for path in (self._path, Path(f"{self._path}.1")):
            if path.is_file() and path.stat().st_size:
                with path.open("rb") as f:
                    f.seek(max(path.stat().st_size - 1_000_000, 0))
                    lines = f.read().splitlines()
                if lines:
                    last = json.loads(lines[-1])
                    return last["seq"], last["hash"]
        return 0, GENESIS

    def _rotate(self) -> None:
        if self.settings.backups == 0:
            self._path.unlink(missing_ok=True)
            return
        for i in range(self.settings.backups - 1, 0, -1):
            older = Path(f"{self._path}.{i}")
            if older.exists():
                older.replace(f"{self._path}.{i + 1}")
        self._path.replace(f"{self._path}.1")

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        seq, prev = self._head or self._last_line()
        lines = []
        for record in records:
            seq += 1
            text = canonical(record)
            digest = chain_hash(prev, seq, text, self._key)
            lines.append(f'{{"seq":{seq},"prev_hash":"{prev}","hash":"{digest}","record":{text}}}\n')
            prev = digest
        data = "".join(lines).encode()
        size = self._path.stat().st_size if self._path.exists() else 0
        if size and size + len(data) > self.settings.max_bytes:
            self._rotate()
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            start = os.fstat(fd).st_size
            try:
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(f"short write to {self._path}: {written} of {len(data)} bytes")
                if self.settings.fsync:
                    os.fsync(fd)
            except BaseException:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.ftruncate(fd, start)  # no torn line stays behind for the retry to append after
                raise
        finally:
            os.close(fd)
        self._head = (seq, prev)

    def close(self) -> None:
        self._head = None


class StdoutSink:
    def __init__(self, settings: StdoutSinkSettings, key: bytes | None) -> None:
        self.name = "stdout"

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        sys.stdout.write("".join(canonical({"guardrails_audit": record}) + "\n" for record in records))
        sys.stdout.flush()

    def close(self) -> None:
        pass


def make_sink(settings: Any, key: bytes | None) -> Sink:
    kinds = {"sqlite": SQLiteSink, "jsonl": JSONLSink, "stdout": StdoutSink}
    return kinds[settings.type](settings, key)
