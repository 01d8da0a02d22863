"""Reading an audit database: query, statistics, export, retention and chain verification.

``AuditStore(path)`` is the Python API behind ``guardrails audit``; it opens the SQLite file read-mostly (``prune``
is the one writer) and never creates one.
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from guardrails.audit.record import GENESIS, chain_hash
from guardrails.audit.sinks import _CHAIN_ANCHOR, _CHAIN_HEAD, connect, record_columns

__all__ = ["AuditStore", "VerifyReport", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``1h``, ``30d``, ``2w`` (or a bare number of seconds)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise ValueError(f"not a duration: {text!r}; use a number with s, m, h, d or w (e.g. 1h, 30d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    checked: int
    problem: str = ""
    seq: int | None = None  # the first record found wrong
    request_id: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"ok: {self.checked} records, chain intact"
        where = f"record seq {self.seq}" + (f" (request {self.request_id})" if self.request_id else "")
        return f"FAILED at {where}: {self.problem} ({self.checked} records checked before it)"


class AuditStore:
    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self._conn = connect(self.path, busy_timeout=busy_timeout, create=False)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queries -----------------------------------------------------------------------------------------------

    def _where(
        self,
        since: float | None,
        decision: str | None,
        scanner: str | None,
        tenant: str | None,
        category: str | None,
    ) -> tuple[str, list[Any]]:
        clauses, args = [], []
        if since is not None:
            clauses.append("r.ts >= ?")
            args.append(time.time() - since)
        if decision is not None:
            clauses.append("r.decision = ?")
            args.append(decision)
        if tenant is not None:
            clauses.append("r.tenant = ?")
            args.append(tenant)
        if scanner is not None:
            clauses.append("EXISTS (SELECT 1 FROM hits h WHERE h.seq = r.seq AND h.scanner = ?)")
            args.append(scanner)
        if category is not None:
            clauses.append("EXISTS (SELECT 1 FROM hits h WHERE h.seq = r.seq AND h.category = ?)")
            args.append(category)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def records(
        self,
        *,
        since: float | None = None,
        decision: str | None = None,
        scanner: str | None = None,
        tenant: str | None = None,
        category: str | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[dict[str, Any]]:
        """Records matching every filter given (``since`` in seconds back from now), each with its ``seq``."""
        where, args = self._where(since, decision, scanner, tenant, category)
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT r.seq, r.record FROM records r{where} ORDER BY r.seq {order}"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [{"seq": seq, **json.loads(text)} for seq, text in self._conn.execute(sql, args)]

    def get(self, ref: str | int) -> dict[str, Any] | None:
        """A record by request id, or by sequence number."""
        row = self._conn.execute("SELECT seq, record FROM records WHERE request_id = ?", (str(ref),)).fetchone()
        if row is None and str(ref).isdigit():
            row = self._conn.execute("SELECT seq, record FROM records WHERE seq = ?", (int(ref),)).fetchone()
        return None if row is None else {"seq": row[0], **json.loads(row[1])}

    def stats(self, **filters: Any) -> dict[str, Any]:
        """Counts by decision, scanner and category, and latency percentiles, over the matching records."""
        records = self.records(newest_first=False, **filters)
        by_scanner: Counter[str] = Counter()
        by_category: Counter[str] = Counter()
        for record in records:
            fired = {r["scanner"] for r in record["results"] if r["decision"] != "allow" or r["status"] != "ok"}
            by_scanner.update(fired)
            by_category.update({c for r in record["results"] if r["scanner"] in fired for c in r["categories"]})
        latencies = sorted(r["latency_ms"] for r in records)
        percentiles = {}
        if latencies:
            cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
            percentiles = {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "max": latencies[-1]}
        return {
            "records": len(records),
            "by_decision": dict(Counter(r["decision"] for r in records).most_common()),
            "by_scanner": dict(by_scanner.most_common()),
            "by_category": dict(by_category.most_common()),
            "latency_ms": {k: round(v, 3) for k, v in percentiles.items()},
        }

    def export(self, out: TextIO, *, format: str = "jsonl", **filters: Any) -> int:
        """Write matching records, oldest first, as JSON lines (whole records) or CSV (one row each)."""
        records = self.records(newest_first=False, **filters)
        if format == "jsonl":
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        elif format == "csv":
            writer = csv.writer(out)
            writer.writerow(
                [
                    "seq",
                    "time",
                    "request_id",
                    "tenant",
                    "policy",
                    "policy_hash",
                    "decision",
                    "stage",
                    "flags",
                    "scanners",
                    "categories",
                    "latency_ms",
                ]
            )
            for r in records:
                fired = [x for x in r["results"] if x["decision"] != "allow" or x["status"] != "ok"]
                writer.writerow(
                    [
                        r["seq"],
                        r["time"],
                        r["request_id"],
                        r["tenant"] or "",
                        r["policy"]["name"],
                        r["policy"]["hash"],
                        r["decision"],
                        r["stage"] or "",
                        " ".join(r["flags"]),
                        " ".join(x["scanner"] for x in fired),
                        " ".join(sorted({c for x in fired for c in x["categories"]})),
                        r["latency_ms"],
                    ]
                )
        else:
            raise ValueError(f"unknown export format {format!r}; use jsonl or csv")
        return len(records)

    # -- retention and integrity -------------------------------------------------------------------------------

    def prune(self, older_than: float) -> int:
        """Delete records older than ``older_than`` seconds, keeping the chain verifiable from an anchor."""
        cutoff = time.time() - older_than
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Only a prefix of the chain can go: stop at the first record that is recent enough to keep.
            keep = conn.execute("SELECT MIN(seq) FROM records WHERE ts >= ?", (cutoff,)).fetchone()[0]
            last = conn.execute(
                "SELECT seq, hash FROM records WHERE seq < COALESCE(?, 1e18) ORDER BY seq DESC LIMIT 1", (keep,)
            ).fetchone()
            if last is None:
                conn.execute("COMMIT")
                return 0
            deleted = conn.execute("DELETE FROM records WHERE seq <= ?", (last[0],)).rowcount
            conn.execute("INSERT OR REPLACE INTO chain VALUES (?, ?, ?)", (_CHAIN_ANCHOR, last[0], last[1]))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return deleted

    def verify(self, key: bytes | None = None) -> VerifyReport:
        """Walk the chain from the start (or the prune anchor) and report the first record that does not fit."""
        conn = self._conn
        algorithm = (conn.execute("SELECT value FROM meta WHERE key = 'chain'").fetchone() or ["sha256"])[0]
        if algorithm == "hmac-sha256" and key is None:
            return VerifyReport(False, 0, "records are chained with HMAC: give the key (--key-env)")
        if algorithm == "sha256":
            key = None
        anchor = conn.execute("SELECT seq, hash FROM chain WHERE id = ?", (_CHAIN_ANCHOR,)).fetchone()
        head = conn.execute("SELECT seq, hash FROM chain WHERE id = ?", (_CHAIN_HEAD,)).fetchone()
        prev_seq, prev_hash = anchor if anchor else (0, GENESIS)
        checked = 0
        for row in self._rows():
            seq, text, stored_prev, stored_hash, columns = row
            record = json.loads(text)
            request_id = record.get("request_id")
            if seq != prev_seq + 1:
                return VerifyReport(
                    False, checked, f"records {prev_seq + 1}..{seq - 1} are missing (deleted)", prev_seq + 1, None
                )
            if stored_prev != prev_hash:
                return VerifyReport(
                    False,
                    checked,
                    "its prev_hash does not match the record before it (deleted, inserted or reordered)",
                    seq,
                    request_id,
                )
            if chain_hash(prev_hash, seq, text, key) != stored_hash:
                return VerifyReport(False, checked, "its content does not match its hash (edited)", seq, request_id)
            if tuple(columns) != record_columns(record):
                return VerifyReport(
                    False, checked, "its indexed columns disagree with its content (edited)", seq, request_id
                )
            prev_seq, prev_hash = seq, stored_hash
            checked += 1
        if head is not None and (head[0], head[1]) != (prev_seq, prev_hash):
            return VerifyReport(
                False,
                checked,
                f"the chain head says {head[0]} records, the last present is "
                f"{prev_seq} (records at the end were deleted)",
                prev_seq + 1,
                None,
            )
        return VerifyReport(True, checked)

    def _rows(self) -> Iterator[tuple[Any, ...]]:
        cursor = self._conn.execute(
            "SELECT seq, record, prev_hash, hash, request_id, time, ts, tenant, policy, policy_hash, stage, decision, "
            "latency_ms FROM records ORDER BY seq"
        )
        for row in cursor:
            yield row[0], row[1], row[2], row[3], row[4:]


def format_table(records: list[dict[str, Any]]) -> str:
    """A compact table for people: one line per record."""
    out = io.StringIO()
    out.write(
        f"{'seq':>6}  {'time (UTC)':<19}  {'decision':<8}  {'stage':<6}  {'tenant':<12}  {'scanner (score, categories)'}\n"
    )
    for r in records:
        fired = [x for x in r["results"] if x["decision"] != "allow" or x["status"] != "ok"]
        hits = "; ".join(
            f"{x['scanner']} ({x['score']:.2f}{', ' + ' '.join(x['categories']) if x['categories'] else ''}"
            f"{', ' + x['status'] if x['status'] != 'ok' else ''}{', shadow' if not x['enforced'] else ''})"
            for x in fired
        )
        out.write(
            f"{r['seq']:>6}  {r['time'][:19]:<19}  {r['decision']:<8}  {(r['stage'] or '-'):<6}  "
            f"{(r['tenant'] or '-'):<12}  {hits}\n"
        )
    return out.getvalue()
