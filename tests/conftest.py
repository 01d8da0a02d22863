from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def prompt_guard_v2(tmp_path_factory) -> str:
    from checkpoints import build_prompt_guard

    return str(build_prompt_guard(tmp_path_factory.mktemp("pg2"), num_labels=2))


@pytest.fixture(scope="session")
def prompt_guard_v1(tmp_path_factory) -> str:
    from checkpoints import build_prompt_guard

    return str(build_prompt_guard(tmp_path_factory.mktemp("pg1"), num_labels=3, seed=1))


@pytest.fixture(scope="session")
def llama_guard_tiny(tmp_path_factory) -> str:
    from checkpoints import build_llama_guard

    return str(build_llama_guard(tmp_path_factory.mktemp("lg")))


@pytest.fixture(autouse=True)
def _private_workdir(tmp_path):
    """Each test runs in its own directory, so default audit files (.guardrails/) never land in the repository."""
    previous = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield
    finally:
        os.chdir(previous)
