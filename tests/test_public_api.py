import guardrails

EXPECTED = {
    "Pipeline",
    "GuardedStream",
    "Policy",
    "load_policy",
    "Message",
    "Role",
    "Stage",
    "Decision",
    "Status",
    "Finding",
    "ScanResult",
    "Verdict",
    "Result",
    "Scanner",
    "ScannerConfig",
    "ScanInput",
    "register",
    "GuardrailError",
    "PolicyError",
    "ScannerError",
    "Blocked",
    "__version__",
}


def test_public_api_is_pinned():
    assert set(guardrails.__all__) == EXPECTED
    for name in guardrails.__all__:
        assert getattr(guardrails, name) is not None


def test_exception_tree():
    assert issubclass(guardrails.PolicyError, guardrails.GuardrailError)
    assert issubclass(guardrails.ScannerError, guardrails.GuardrailError)
    assert issubclass(guardrails.Blocked, guardrails.GuardrailError)
    doc = guardrails._exceptions.__doc__
    for name in ("GuardrailError", "PolicyError", "ScannerError", "Blocked"):
        assert name in doc
