from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError
from support import make_pipeline

from guardrails import Decision
from guardrails.scanners import ScanInput, scanner_class
from guardrails.testing import FakeGenerator
from guardrails.types import Role, Stage


def cascade(**params):
    cls = scanner_class("cascade")
    return cls(cls.config_model(type="cascade", id="c", **params))


def item(text: str) -> ScanInput:
    return ScanInput(text, role=Role.USER, index=0, stage=Stage.INPUT)


# first tier: 0.95 for "sure", 0.5 for "maybe", 0.0 otherwise; second tier: 1.0 for "maybe bad"
FIRST = {"type": "static", "score": 0.5, "contains": "maybe"}
THEN = {"type": "regex", "patterns": ["maybe bad"]}


@pytest.mark.parametrize(
    ("text", "tier", "decision"),
    [
        ("nothing here", "first", Decision.ALLOW),  # first-tier score 0.0: below the band, decided cheaply
        ("maybe fine", "then", Decision.ALLOW),  # 0.5: in the band, the second tier says no
        ("maybe bad", "then", Decision.BLOCK),  # in the band, the second tier says yes
    ],
)
async def test_only_uncertain_scores_reach_the_second_tier(text, tier, decision):
    scanner = cascade(first=FIRST, then=THEN, defer_between=(0.2, 0.9))
    [result] = await scanner.scan([item(text)])
    assert result.decision is decision
    assert [f.detail for f in result.findings if f.rule == "tier"] == [tier]
    assert scanner.decided_by[tier] == 1


async def test_a_confident_first_tier_decides_alone():
    scanner = cascade(first={"type": "static", "score": 0.95}, then=THEN, defer_between=(0.2, 0.9))
    [result] = await scanner.scan([item("maybe bad")])
    assert result.decision is Decision.BLOCK and result.score == 0.95
    assert scanner.decided_by == {"first": 1}


def test_tiers_are_validated_with_their_own_config_models():
    with pytest.raises(ValidationError, match="patterns"):
        cascade(first=FIRST, then={"type": "regex"})
    with pytest.raises(ValidationError, match="cannot itself be a cascade"):
        cascade(first=FIRST, then={"type": "cascade", "first": FIRST, "then": THEN})
    with pytest.raises(ValidationError, match="defer_between"):
        cascade(first=FIRST, then=THEN, defer_between=(0.9, 0.1))


def test_a_failing_second_tier_fails_the_cascade_closed():
    pipe = make_pipeline(
        input=[{"id": "c", "type": "cascade", "first": FIRST, "then": {"type": "static", "error": "gpu down"}}]
    )
    result = pipe.run("maybe", generate=FakeGenerator())
    assert result.blocked and "gpu down" in result.verdict("input").results[0].reason


def test_eval_reports_the_calls_the_cascade_saved(tmp_path):
    policy = tmp_path / "cascade.yaml"
    policy.write_text(
        "name: c\ninput:\n  scanners:\n    - id: c\n      type: cascade\n"
        f"      first: {json.dumps(FIRST)}\n      then: {json.dumps(THEN)}\n"
    )
    data = tmp_path / "rows.jsonl"
    rows = [("a", "nothing here", 0), ("b", "maybe bad", 1), ("c", "plain", 0), ("d", "also plain", 0)]
    data.write_text("".join(json.dumps({"id": i, "set": "s", "text": t, "attack": y}) + "\n" for i, t, y in rows))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "guardrails",
            "eval",
            "--quiet",
            "--policy",
            str(policy),
            "--out",
            str(tmp_path / "o"),
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "cascade: 3 decided by the first tier, 1 deferred to the second (75.0% of second-tier calls saved)" in (
        proc.stdout
    )
