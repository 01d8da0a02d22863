from __future__ import annotations

import typing

import pytest

from guardrails import Pipeline
from guardrails._exceptions import ScannerError
from guardrails.policy import policy_from_dict
from guardrails.scanners import scanner_types
from guardrails.scanners.registry import register
from guardrails.testing import FakeGenerator


@pytest.fixture
def required(prompt_guard_v2, llama_guard_tiny):
    """The smallest config of each type: the keys it requires beyond `type`."""
    return {
        "regex": {"patterns": ["x"]},
        "prompt_guard": {"model": prompt_guard_v2},
        "llama_guard": {"model": llama_guard_tiny, "threshold": 1.0},
        "cascade": {"first": {"type": "static"}, "then": {"type": "static"}},
    }


@pytest.mark.parametrize("name", sorted(n for n in scanner_types() if not n.startswith("test_")))
def test_every_registered_type_builds_from_a_minimal_policy_and_scans(name, required):
    config = {"type": name, **required.get(name, {})}
    policy = policy_from_dict({"name": "minimal", "input": {"scanners": [config]}, "output": {"scanners": [config]}})
    with Pipeline(policy) as pipe:
        result = pipe.run("hello", generate=FakeGenerator(default="world"))
    assert result.text == "world"
    assert [r.scanner_id for v in result.verdicts for r in v.results] == [name, name]


def test_builtin_types_are_registered():
    assert {"invisible_text", "regex", "secrets", "static"} <= set(scanner_types())


def test_type_must_be_a_single_literal():
    from guardrails.scanners import Scanner, ScannerConfig

    class Loose(ScannerConfig):
        type: str

    class LooseScanner(Scanner):
        config_model = Loose

        async def scan(self, batch):
            return []

    with pytest.raises(ScannerError, match="Literal"):
        register(LooseScanner)


def test_a_type_name_cannot_be_taken_twice():
    from guardrails.scanners import Scanner, ScannerConfig

    class Other(ScannerConfig):
        type: typing.Literal["regex"]

    class OtherScanner(Scanner):
        config_model = Other

        async def scan(self, batch):
            return []

    with pytest.raises(ScannerError, match="already registered"):
        register(OtherScanner)
