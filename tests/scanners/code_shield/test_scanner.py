"""The code_shield scanner through the pipeline: decisions, policy overrides, redaction, failures, streaming.

These run the regex and bandit tiers; tests/scanners/code_shield/test_semgrep.py covers the semgrep tier and
test_code_shield_semgrep below the scanner with it.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from support import make_pipeline

from guardrails import Decision, Stage, Status
from guardrails._exceptions import PolicyError
from guardrails.audit import AuditStore

TIERS = ["regex", "bandit"]
EVAL_BLOCK = "Here is the calculator:\n\n```python\nexpr = input()\nprint(eval(expr))\n```\n\nEnjoy."


def shield(**config):
    return {"type": "code_shield", "tiers": TIERS, **config}


def scan(response: str, **config):
    pipe = make_pipeline(output=[shield(**config)])
    [result] = pipe.scan_output("write code", response).verdicts[0].results
    return result


def test_insecure_block_is_blocked_with_lines_relative_to_response_and_block() -> None:
    result = scan(EVAL_BLOCK)
    assert result.decision is Decision.BLOCK and result.status is Status.OK
    assert "CWE-94" in result.categories
    [finding] = [f for f in result.findings if f.rule == "python.eval"]
    assert finding.line == 5  # line 5 of the response
    assert "python block 1, line 2" in finding.detail
    assert "Fix:" in finding.detail


def test_safe_code_and_prose_are_allowed() -> None:
    result = scan("```python\nimport json\nvalue = json.loads(text)\n```")
    assert result.decision is Decision.ALLOW
    assert scan("No code here, just an explanation of eval and exec.").decision is Decision.ALLOW


def test_code_in_an_unknown_language_gets_only_language_agnostic_rules() -> None:
    # Meta's scanner checks untagged code as every language; ours runs no Python or JavaScript rule on it
    assert scan("```\nvalue = eval(x)\n```").decision is Decision.ALLOW
    token = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
    result = scan(f"```\nTOKEN := {token}\n```")
    assert result.decision is Decision.BLOCK and result.categories == ("CWE-798",)


@pytest.mark.parametrize(
    ("config", "decision"),
    [
        ({"rule_actions": {"python.eval": "warn"}}, Decision.WARN),
        ({"cwe_actions": {"CWE-94": "allow"}}, Decision.ALLOW),
        ({"allow": ["python.eval"]}, Decision.ALLOW),
        ({"allow": ["CWE-94"], "deny": ["python.eval"]}, Decision.BLOCK),  # deny beats allow
        ({"severity_actions": {"error": "warn"}}, Decision.WARN),
        ({"rule_actions": {"python.eval": "block"}, "cwe_actions": {"CWE-94": "allow"}}, Decision.BLOCK),
    ],
)
def test_policy_overrides(config: dict, decision: Decision) -> None:
    assert scan(EVAL_BLOCK, **config).decision is decision


def test_redact_replaces_the_whole_block_with_a_notice() -> None:
    pipe = make_pipeline(output=[shield(severity_actions={"error": "redact"})])
    result = pipe.run("write code", generate=lambda prompt: EVAL_BLOCK)
    assert result.decision is Decision.REDACT
    assert result.text == "Here is the calculator:\n\n[insecure code removed by Code Shield: CWE-94]\n\nEnjoy."


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"rule_actions": {"python.evl": "allow"}}, "unknown rule 'python.evl'"),
        ({"cwe_actions": {"89": "block"}}, "not a CWE id"),
        ({"languages": ["klingon"]}, "unknown language 'klingon'"),
        ({"severity_actions": {"critical": "block"}}, "severity_actions"),
        ({"tiers": ["regex", "semgrap"]}, "tiers"),
    ],
)
def test_bad_configuration_is_a_policy_error(config: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        make_pipeline(output=[shield(**config)])


def test_oversized_code_fails_closed_and_says_why() -> None:
    response = "```python\n" + "x = 1\n" * 200 + "```"
    result = scan(response, max_code_chars=100)
    assert result.status is Status.ERROR and result.decision is Decision.BLOCK
    assert "max_code_chars" in result.reason
    assert scan(response, max_code_chars=100, on_error="allow").decision is Decision.ALLOW


def test_a_crashing_tier_blocks_and_is_recorded(tmp_path, monkeypatch) -> None:
    from guardrails.scanners.code_shield.bandit_tier import BanditTier

    def boom(self, code):
        raise RuntimeError("bandit exploded")

    monkeypatch.setattr(BanditTier, "scan", boom)
    db = tmp_path / "audit.db"
    pipe = make_pipeline(output=[shield()], audit={"sinks": [{"type": "sqlite", "path": str(db)}]})
    result = pipe.run("write code", generate=lambda prompt: "```python\nprint('hello')\n```")
    pipe.close()
    [scanned] = result.verdicts[-1].results
    assert scanned.status is Status.ERROR and "bandit exploded" in scanned.reason
    assert result.decision is Decision.BLOCK
    with AuditStore(db) as store:
        [record] = store.records()
    [output] = [r for r in record["results"] if r["stage"] == "output"]
    assert output["status"] == "error" and "bandit exploded" in output["reason"]


def test_a_hanging_tier_times_out_and_blocks(monkeypatch) -> None:
    from guardrails.scanners import code_shield

    async def hang(self, texts):
        await asyncio.sleep(30)

    monkeypatch.setattr(code_shield.CodeShieldScanner, "analyse", hang)
    result = scan(EVAL_BLOCK, timeout=0.2)
    assert result.status is Status.TIMEOUT and result.decision is Decision.BLOCK


def test_tool_call_arguments_are_scanned() -> None:
    call = {"name": "run_python", "arguments": json.dumps({"code": "import pickle\nobj = pickle.loads(blob)"})}
    result = scan(json.dumps(call))
    assert result.decision is not Decision.ALLOW
    assert "CWE-502" in result.categories


def test_findings_reach_the_audit_record_with_lines(tmp_path) -> None:
    db = tmp_path / "audit.db"
    pipe = make_pipeline(output=[shield()], audit={"sinks": [{"type": "sqlite", "path": str(db)}]})
    pipe.run("write code", generate=lambda prompt: EVAL_BLOCK)
    pipe.close()
    with AuditStore(db) as store:
        [record] = store.records()
    [output] = [r for r in record["results"] if r["stage"] == "output"]
    findings = output["findings"]
    assert {"rule": "python.eval", "line": 5}.items() <= next(f for f in findings if f["rule"] == "python.eval").items()


def chunked(text: str, size: int):
    def generate(prompt):
        for i in range(0, len(text), size):
            yield text[i : i + size]

    return generate


@pytest.mark.parametrize("chunk_size", [1, 4, 17, 1000])
def test_streamed_insecure_block_is_cut_before_it_is_sent(chunk_size: int) -> None:
    prose = "Let me explain the approach in a few sentences before showing any code at all. " * 4 + "\n\n"
    text = prose + "```python\nimport os\nresult = eval(user_expression)\n```\n" + "Some closing words after it. " * 8
    pipe = make_pipeline(output=[shield()], stream={"check_every": 32, "overlap": 16, "holdback": 8})
    stream = pipe.stream("hi", generate=chunked(text, chunk_size))
    chunks = list(stream)
    released = "".join(chunks[:-1])
    assert chunks[-1] == pipe.policy.refusal.output
    assert "```" not in released and "eval" not in released
    assert prose.startswith(released)
    if chunk_size < len(prose) // 2:
        assert len(released) > len(prose) // 2  # the prose went out while the model was still writing
    assert stream.result.blocked and stream.result.blocked_stage is Stage.OUTPUT


@pytest.mark.parametrize("chunk_size", [1, 9, 1000])
def test_streamed_safe_blocks_pass_whole_even_after_earlier_blocks(chunk_size: int) -> None:
    # the window's overlap can start inside an earlier block: its closing fence must not open a new one
    block = "```python\nfor i in range(3):\n    print(i)\n```\n"
    text = ("Text between blocks that is long enough. " * 2 + block) * 4 + "The end."
    pipe = make_pipeline(output=[shield()], stream={"check_every": 24, "overlap": 40, "holdback": 4})
    stream = pipe.stream("hi", generate=chunked(text, chunk_size))
    assert "".join(stream) == text
    assert stream.result.decision is Decision.ALLOW


SQL_ACROSS_LINES = (
    "```python\n"
    "def find(conn, name):\n"
    "    query = f\"SELECT * FROM users WHERE name = '{name}'\"\n"
    "    log.debug('looking up')\n"
    "    return conn.cursor().execute(query).fetchall()\n"
    "```"
)


def test_semgrep_tier_finds_structure_across_lines_from_several_threads() -> None:
    import threading

    pipe = make_pipeline(output=[{"type": "code_shield", "tiers": ["semgrep"]}])
    outcomes: list = []

    def worker() -> None:  # each thread drives the pipeline on its own event loop
        for _ in range(3):
            [result] = pipe.scan_output("q", SQL_ACROSS_LINES).verdicts[0].results
            outcomes.append((result.decision, result.categories, [f.line for f in result.findings]))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pipe.close()
    assert len(outcomes) == 9
    assert all(decision is not Decision.ALLOW and categories == ("CWE-89",) for decision, categories, _ in outcomes)
    assert all(lines and lines[0] in (3, 5) for _, _, lines in outcomes)  # response lines of the query
    safe = "```python\nquery = 'SELECT * FROM users WHERE name = ?'\nconn.execute(query, (name,))\n```"
    pipe = make_pipeline(output=[{"type": "code_shield", "tiers": ["semgrep"]}])
    assert pipe.scan_output("q", safe).decision is Decision.ALLOW
    pipe.close()
