"""Fixtures of the engine tests: tiny checkpoints (see ``engine_checkpoints.py``) and their transformers references."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine_checkpoints import build_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """family -> checkpoint directory, built on first use."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_checkpoint(family, tmp_path_factory.mktemp(family))
        return built[family]

    return get


@pytest.fixture(scope="session")
def reference():
    """family checkpoint -> the transformers model, loaded once."""
    from transformers import AutoModelForCausalLM

    cache: dict[Path, object] = {}

    def get(path: Path):
        if path not in cache:
            model = AutoModelForCausalLM.from_pretrained(path).eval()
            model.generation_config.eos_token_id = None  # generate exactly max_new_tokens, EOS included
            cache[path] = model
        return cache[path]

    return get
