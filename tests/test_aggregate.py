from __future__ import annotations

import itertools

import pytest

from guardrails.aggregate import decide, merge_results
from guardrails.types import Decision, Finding, ScanResult, Status

A, W, R, B = Decision.ALLOW, Decision.WARN, Decision.REDACT, Decision.BLOCK


def res(decision: Decision, status: Status = Status.OK, score: float = 0.0, sid: str = "s") -> ScanResult:
    return ScanResult(sid, decision, score, status=status)


@pytest.mark.parametrize(
    ("decisions", "expected"),
    [
        ((), A),
        ((A,), A),
        ((A, A, A), A),
        ((A, W), W),
        ((W, R), R),
        ((R, A, W), R),
        ((A, B), B),
        ((B, R, W, A), B),
    ],
)
def test_truth_table_any_block_wins(decisions, expected):
    assert decide([res(d) for d in decisions]) is expected


def test_every_order_gives_the_same_decision():
    for combo in itertools.product([A, W, R, B], repeat=3):
        expected = max(combo, key=lambda d: d.severity)
        for perm in itertools.permutations(combo):
            assert decide([res(d) for d in perm]) is expected


@pytest.mark.parametrize(
    ("failed", "on_error_decision", "others", "expected"),
    [
        (Status.ERROR, B, (A,), B),  # an error blocks by default
        (Status.TIMEOUT, B, (A,), B),
        (Status.ERROR, A, (A,), A),  # on_error: allow lets it through
        (Status.ERROR, A, (B,), B),  # ... but never overrides another scanner's block
        (Status.TIMEOUT, A, (R,), R),
    ],
)
def test_errors_carry_their_on_error_decision(failed, on_error_decision, others, expected):
    results = [res(on_error_decision, failed), *(res(d) for d in others)]
    assert decide(results) is expected


def test_merge_keeps_worst_decision_max_score_and_all_findings():
    a = ScanResult("x", A, 0.1, ("c1",), (Finding("r1", 0, (0, 1)),), "first")
    b = ScanResult("x", B, 0.9, ("c2", "c1"), (Finding("r2", 1, (2, 3)),), "second", Status.OK, 1.0)
    merged = merge_results([a, b], duration_ms=5.0)
    assert merged.decision is B
    assert merged.score == 0.9
    assert merged.categories == ("c1", "c2")
    assert [f.rule for f in merged.findings] == ["r1", "r2"]
    assert merged.reason == "first; second"
    assert merged.duration_ms == 5.0


def test_merge_reports_the_worst_status():
    merged = merge_results([res(A), res(B, Status.TIMEOUT), res(B, Status.ERROR)])
    assert merged.status is Status.ERROR


def test_score_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ScanResult("x", A, 1.5)
