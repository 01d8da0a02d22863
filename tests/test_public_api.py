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


def test_importing_the_core_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, guardrails; from guardrails.policy import load_policy; load_policy('default'); "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False False", out.stderr
