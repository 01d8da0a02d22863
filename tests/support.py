"""Helpers the tests import (a module of its own: ``conftest`` is not importable by name once a subfolder has one)."""

from __future__ import annotations

from typing import Any

from guardrails import Pipeline
from guardrails.policy import policy_from_dict


def make_pipeline(*, input: list[dict[str, Any]] = (), output: list[dict[str, Any]] = (), **policy: Any) -> Pipeline:
    """A pipeline over a policy given inline (no file)."""
    data: dict[str, Any] = {"name": "test", "input": {"scanners": list(input)}, "output": {"scanners": list(output)}}
    for key, value in policy.items():
        if key in ("input_mode", "output_mode"):
            data[key.split("_")[0]]["mode"] = value
        elif key == "stream":
            data["output"]["stream"] = value
        else:
            data[key] = value
    return Pipeline(policy_from_dict(data))
