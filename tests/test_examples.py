from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# What each example must print: the behaviour it demonstrates.
EXPECTED = {
    "wrap_function.py": ["allow  'hello' -> 'Hi! How can I help?'", "blocked by injection-phrases"],
    "async_generate.py": ["(echo) Question 4", "redact  Your token is [REDACTED:github_token]"],
    "streaming.py": ["[REDACTED:aws_access_key_id]", "decision: redact"],
    "custom_scanner.py": ["allow  'please summarise this report'", "warn  'WHY IS NOTHING WORKING TODAY'"],
    "openai_client.py": ["blocked: content_filter", "[REDACTED:aws_access_key_id]"],
}


def test_every_example_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name):
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for expected in EXPECTED[name]:
        assert expected in proc.stdout, proc.stdout
    assert "AKIAQ3EGRV7ZXB2MN4PK" not in proc.stdout and "ghp_a1B2" not in proc.stdout
