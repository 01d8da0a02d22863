import subprocess
import sys
from functools import cache
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


@cache
def policy_reference() -> str:
    """The reference as a user's `guardrails policy reference` prints it (no test-only scanner types registered)."""
    cmd = [sys.executable, "-m", "guardrails", "policy", "reference"]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout


def test_readme_policy_reference_matches_the_models():
    text = README.read_text()
    start = text.index("<!-- policy-reference:start -->\n") + len("<!-- policy-reference:start -->\n")
    end = text.index("<!-- policy-reference:end -->")
    assert text[start:end] == policy_reference(), "README is stale: regenerate with `guardrails policy reference`"


def test_readme_opens_with_the_two_commands():
    head = README.read_text().split("\n## ", 1)[0]
    assert "make demo" in head and "make test" in head


def test_reference_covers_every_scanner_type_and_common_key():
    ref = policy_reference()
    for key in (
        "`threshold`",
        "`thresholds`",
        "`on_error`",
        "`timeout`",
        "`roles`",
        "`action`",
        "`mode`",
        "`extends`",
        "`routes`",
        "`check_every`",
        "`max_input_chars`",
    ):
        assert key in ref
    for name in ("invisible_text", "regex", "secrets", "static"):
        assert f"type: {name}" in ref


def test_every_yaml_example_in_the_readme_is_a_valid_policy(tmp_path):
    import re

    from guardrails.policy import load_policy

    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        path = tmp_path / f"example{i}.yaml"
        path.write_text(block)
        assert load_policy(path).name
