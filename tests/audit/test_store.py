from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
import time

import pytest
from support import make_pipeline

from guardrails.audit import AuditStore
from guardrails.testing import FakeGenerator

DB = "audit.sqlite"
SCANNERS = [
    {"id": "words", "type": "regex", "patterns": [{"pattern": "forbidden", "category": "S9"}]},
    {"id": "secrets", "type": "secrets"},
]
TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"


def fill(n: int = 6, **audit) -> list[str]:
    """n audited requests alternating block and redact; returns their request ids in order."""
    pipe = make_pipeline(input=SCANNERS, audit={"sinks": [{"type": "sqlite", "path": DB}], **audit})
    ids = []
    for i in range(n):
        prompt = f"forbidden {i}" if i % 2 == 0 else f"key {TOKEN} #{i}"
        ids.append(pipe.run(prompt, generate=FakeGenerator()).request_id)
    pipe.close()
    return ids


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "guardrails", "audit", *args, "--db", DB],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_chain_of_a_fresh_log_verifies():
    ids = fill()
    with AuditStore(DB) as store:
        report = store.verify()
        assert report.ok and report.checked == len(ids)
        assert [r["request_id"] for r in store.records(newest_first=False)] == ids


def edit(sql: str, *args) -> None:
    conn = sqlite3.connect(DB)  # as an attacker would: plain sqlite3, foreign keys not enforced
    conn.execute(sql, args)
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("tamper", "seq", "problem"),
    [
        (
            lambda: edit("UPDATE records SET record = replace(record, '\"block\"', '\"allow\"') WHERE seq = 3"),
            3,
            "edited",
        ),
        (lambda: edit("UPDATE records SET decision = 'allow' WHERE seq = 3"), 3, "indexed columns disagree"),
        (lambda: edit("DELETE FROM records WHERE seq = 4"), 4, "missing (deleted)"),
        (lambda: edit("DELETE FROM records WHERE seq = 6"), 6, "records at the end were deleted"),
        (
            lambda: (
                edit("UPDATE records SET seq = -2 WHERE seq = 2"),
                edit("UPDATE records SET seq = 2 WHERE seq = 5"),
                edit("UPDATE records SET seq = 5 WHERE seq = -2"),
            ),
            2,
            "prev_hash does not match",
        ),
    ],
    ids=["edit-content", "edit-column", "delete-middle", "delete-last", "reorder"],
)
def test_verify_names_the_first_tampered_record(tamper, seq, problem):
    fill()
    tamper()
    with AuditStore(DB) as store:
        report = store.verify()
    assert not report.ok and report.seq == seq and problem in report.problem
    proc = cli("verify")
    assert proc.returncode == 1 and f"record seq {seq}" in proc.stdout


def test_hmac_chain_needs_the_key(monkeypatch):
    monkeypatch.setenv("AUDIT_KEY", "s3cret")
    fill(hmac_key_env="AUDIT_KEY")
    with AuditStore(DB) as store:
        assert not store.verify().ok  # no key given
        assert store.verify(b"s3cret").ok
        assert not store.verify(b"wrong").ok
    assert cli("verify", "--key-env", "AUDIT_KEY").returncode == 0


def test_hmac_key_env_must_be_set():
    from guardrails import PolicyError

    with pytest.raises(PolicyError, match="NO_SUCH_KEY_VAR"):
        make_pipeline(audit={"hmac_key_env": "NO_SUCH_KEY_VAR"})


def test_prune_of_nothing_old_deletes_nothing():
    fill(4)
    with AuditStore(DB) as store:
        assert store.prune(older_than=3600) == 0
        assert store.verify().ok and len(store.records()) == 4


def test_prune_deletes_old_records_and_anchors_the_chain():
    fill(4)
    later = time.time() + 2 * 86400
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "time", lambda: later)  # two days pass
        with AuditStore(DB) as store:
            assert store.prune(older_than=86400) == 4
            assert store.records() == []
            assert store.verify().ok
    fill(2)  # new records continue the chain after the anchor
    with AuditStore(DB) as store:
        report = store.verify()
        assert report.ok and report.checked == 2
        assert [r["seq"] for r in store.records(newest_first=False)] == [5, 6]


def test_queries_filter_by_decision_scanner_category_tenant_and_time():
    ids = fill(6)
    with AuditStore(DB) as store:
        assert len(store.records()) == 6
        assert {r["request_id"] for r in store.records(decision="block")} == set(ids[0::2])
        assert {r["request_id"] for r in store.records(scanner="secrets")} == set(ids[1::2])
        assert {r["request_id"] for r in store.records(category="S9")} == set(ids[0::2])
        assert store.records(category="S1") == []
        assert store.records(tenant="acme") == []
        assert len(store.records(since=3600)) == 6
        assert len(store.records(limit=2)) == 2
        assert store.get(ids[3])["request_id"] == ids[3]
        assert store.get("4")["request_id"] == ids[3]
        assert store.get("nope") is None
        stats = store.stats()
        assert stats["by_decision"] == {"block": 3, "redact": 3}
        assert stats["by_scanner"] == {"words": 3, "secrets": 3}
        assert stats["by_category"] == {"S9": 3, "github_token": 3}
        assert set(stats["latency_ms"]) == {"p50", "p95", "p99", "max"}


def test_export_jsonl_and_csv():
    ids = fill(4)
    with AuditStore(DB) as store:
        out = io.StringIO()
        assert store.export(out, format="jsonl") == 4
        assert [json.loads(line)["request_id"] for line in out.getvalue().splitlines()] == ids
        out = io.StringIO()
        store.export(out, format="csv", decision="redact")
        rows = list(csv.DictReader(io.StringIO(out.getvalue())))
        assert [r["request_id"] for r in rows] == ids[1::2]
        assert rows[0]["scanners"] == "secrets" and rows[0]["categories"] == "github_token"


def test_audit_cli_commands():
    ids = fill(4)
    listing = cli("list", "--decision", "block")
    assert listing.returncode == 0 and listing.stdout.count("words (1.00, S9)") == 2
    as_json = json.loads(cli("list", "--format", "json", "--scanner", "secrets").stdout)
    assert [r["request_id"] for r in as_json] == ids[3::-2]
    shown = json.loads(cli("show", ids[0]).stdout)
    assert shown["request_id"] == ids[0] and shown["results"][0]["scanner"] == "words"
    stats = cli("stats")
    assert "block" in stats.stdout and "latency ms: p50" in stats.stdout
    assert cli("export", "--format", "csv").stdout.count("\n") == 5
    assert cli("verify").stdout.startswith("ok: 4 records")
    assert "pruned 0 records" in cli("prune", "--older-than", "30d").stdout
    assert cli("show", "missing-id").returncode == 2
    assert cli("list", "--since", "yesterday").returncode == 2


def test_audit_cli_without_a_database_says_so():
    proc = cli("list")
    assert proc.returncode == 2 and "no audit database" in proc.stderr


def test_demo_records_blocked_requests_without_raw_text_on_disk(tmp_path):
    demo = subprocess.run([sys.executable, "-m", "guardrails", "demo"], capture_output=True, text=True, timeout=120)
    assert demo.returncode == 0, demo.stderr
    listing = subprocess.run(
        [sys.executable, "-m", "guardrails", "audit", "list", "--decision", "block"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "injection-phrases (1.00, prompt_injection prompt_leak)" in listing.stdout
    assert "hidden-text (1.00, tags)" in listing.stdout
    from guardrails.demo import EXCHANGES

    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "audit.sqlite" for p in files)
    for _, prompt in EXCHANGES:
        needle = prompt.encode()
        for path in files:
            assert needle not in path.read_bytes(), f"raw prompt found in {path}"


def test_routes_are_recorded_as_tenants(tmp_path):
    from guardrails import Pipeline

    audit = f"audit: {{sinks: [{{type: sqlite, path: {DB}}}]}}\n"
    (tmp_path / "tenant.yaml").write_text("name: tenant\ninput:\n  scanners: [{type: static, score: 1}]\n" + audit)
    (tmp_path / "main.yaml").write_text("name: main\nroutes: {acme: tenant.yaml}\n" + audit)
    with Pipeline.from_policy(tmp_path / "main.yaml") as pipe:
        routed = pipe.run("hi", generate=FakeGenerator(), route="acme")
    with AuditStore(DB) as store:
        [record] = store.records(tenant="acme")
    assert record["request_id"] == routed.request_id and record["policy"]["name"] == "tenant"
