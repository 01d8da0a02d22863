"""The sidecar on our own generation engine (``--model PATH``): a tiny random Llama checkpoint built here, the
official openai client in front, the same greedy text as the engine gives directly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import openai
import pytest
from sidecar import USER_KEY, key_entries, make_policy

from guardrails import Pipeline
from server import Settings, create_app
from server.testing import ServerThread
from server.upstream import engine_upstream

MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = Path(__file__).resolve().parents[1] / "engine" / "engine_checkpoints.py"
    spec = importlib.util.spec_from_file_location("engine_checkpoints", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_checkpoint("llama", tmp_path_factory.mktemp("llama"))


def test_chat_and_stream_through_the_engine_upstream(checkpoint: Path, tmp_path: Path) -> None:
    from guardrails.engine import Engine

    engine = Engine.from_pretrained(checkpoint)
    try:
        expected = engine.generate_sync(MESSAGES, max_tokens=12).text
        assert expected  # the random model writes something (seeded: always the same)
    finally:
        engine.close()
    upstream = engine_upstream(str(checkpoint))
    pipeline = Pipeline(make_policy(tmp_path / "audit.sqlite"), routes={"strict": make_policy(tmp_path / "a.db")})
    app = create_app(Settings(api_keys=key_entries()), pipeline=pipeline, upstream=upstream)
    with (
        ServerThread(app) as server,
        openai.OpenAI(base_url=server.url + "/v1", api_key=USER_KEY, max_retries=0) as client,
    ):
        answer = client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=12)
        assert answer.choices[0].message.content == expected
        pieces = client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=12, stream=True)
        assert "".join(p.choices[0].delta.content or "" for p in pieces if p.choices) == expected
        assert [m.id for m in client.models.list()] == [checkpoint.name]
    pipeline.close()
