"""The async engine: generate, stream, chat templates, concurrency, aborts, the sync wrappers."""

from __future__ import annotations

import asyncio
import time

import pytest

from guardrails.engine import Completion, Engine, SamplingParams

PROMPTS = ["def reverse(s):", "The quick brown fox", "Guardrails scan", "import os\n", "x", "Ünïcödé 🙂 and emoji"]


@pytest.fixture(scope="module")
def engine(checkpoints):
    engine = Engine.from_pretrained(
        checkpoints("mixtral"), max_num_batched_tokens=24, block_size=4, kv_cache_tokens=1024
    )
    yield engine
    engine.close()


def idle(engine: Engine, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        blocks = engine.core.scheduler.blocks
        if not engine.core.has_work() and len(blocks.free_blocks) == blocks.num_blocks:
            return True
        time.sleep(0.01)
    return False


async def test_generate_returns_a_completion(engine):
    out = await engine.generate(PROMPTS[0], max_tokens=12)
    assert isinstance(out, Completion) and out.prompt_tokens == len(engine.encode(PROMPTS[0]))
    assert out.finish_reason in ("stop", "length") and 1 <= len(out.token_ids) <= 12
    visible = [t for t in out.token_ids if t not in engine.eos_token_ids]
    assert out.text == engine.tokenizer.decode(visible, skip_special_tokens=True)


async def test_stream_yields_the_text_of_generate(engine):
    chunks = [c async for c in engine.stream(PROMPTS[5], max_tokens=24, ignore_eos=True)]
    assert all(isinstance(c, str) and c for c in chunks) and len(chunks) > 1
    assert "".join(chunks) == (await engine.generate(PROMPTS[5], max_tokens=24, ignore_eos=True)).text


async def test_concurrent_requests_match_sequential_ones(engine):
    params = [SamplingParams(max_tokens=6 + 3 * i, ignore_eos=True) for i in range(len(PROMPTS))]
    sequential = [await engine.generate(p, q) for p, q in zip(PROMPTS, params, strict=True)]
    steps = engine.core.steps
    concurrent = await asyncio.gather(*(engine.generate(p, q) for p, q in zip(PROMPTS, params, strict=True)))
    assert [c.token_ids for c in concurrent] == [s.token_ids for s in sequential]
    assert engine.core.steps - steps < sum(len(s.token_ids) for s in sequential)  # they shared steps


async def test_seeded_sampling_is_independent_of_the_batch(engine):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=3, max_tokens=16, ignore_eos=True)
    alone = await engine.generate(PROMPTS[1], params)
    together = await asyncio.gather(*(engine.generate(p, params) for p in PROMPTS[:3]))
    assert together[1].token_ids == alone.token_ids


async def test_chat_messages_use_the_template(engine):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    ids = engine.encode(messages)
    text = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert ids == engine.tokenizer.encode(text, add_special_tokens=False)
    assert (await engine.generate(messages, max_tokens=4)).prompt_tokens == len(ids)


async def test_leaving_a_stream_early_aborts_the_request(engine):
    async for _ in engine.stream(PROMPTS[2], max_tokens=200, ignore_eos=True):
        break
    assert await asyncio.to_thread(idle, engine)


async def test_stop_string_through_the_engine(engine):
    texts = [(await engine.generate(p, max_tokens=40, ignore_eos=True)).text for p in PROMPTS[:4]]
    prompt, full = max(zip(PROMPTS[:4], texts, strict=True), key=lambda pt: len(pt[1]))
    assert len(full) > 8
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = await engine.generate(prompt, max_tokens=40, ignore_eos=True, stop=[stop, "never"])
    assert cut.finish_reason == "stop" and cut.text == full[: full.index(stop)]


async def test_a_request_too_long_for_the_cache_fails_alone(engine):
    with pytest.raises(ValueError, match="exceed the KV cache"):
        await engine.generate("x " * 600, max_tokens=600)
    assert (await engine.generate(PROMPTS[4], max_tokens=3)).token_ids


def test_sync_wrappers(engine):
    out = engine.generate_sync(PROMPTS[0], max_tokens=10, ignore_eos=True)
    assert "".join(engine.stream_sync(PROMPTS[0], max_tokens=10, ignore_eos=True)) == out.text
    assert len(out.token_ids) == 10


async def test_a_failing_step_fails_the_requests_in_flight_and_the_engine_recovers(engine, monkeypatch):
    def broken(scheduled):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine.core.runner, "run", broken)
    with pytest.raises(RuntimeError, match="generation failed.*boom"):
        await engine.generate(PROMPTS[0], max_tokens=4)
    monkeypatch.undo()
    assert await asyncio.to_thread(idle, engine)
    assert len((await engine.generate(PROMPTS[0], max_tokens=4, ignore_eos=True)).token_ids) == 4


async def test_closing_fails_requests_in_flight(checkpoints):
    engine = Engine.from_pretrained(checkpoints("llama"), kv_cache_tokens=256)
    task = asyncio.create_task(engine.generate(PROMPTS[0], max_tokens=200, ignore_eos=True))
    await asyncio.sleep(0.05)
    await asyncio.to_thread(engine.close)
    with pytest.raises(RuntimeError, match="closed"):
        await task
    with pytest.raises(RuntimeError, match="closed"):
        await engine.generate(PROMPTS[0])


def test_chat_engines_send_plain_strings_as_a_user_turn(engine):
    chat = Engine(engine.model, engine.tokenizer, chat=True, kv_cache_tokens=64)
    assert chat.encode("Hi") == engine.encode([{"role": "user", "content": "Hi"}]) != engine.encode("Hi")
    assert chat.encode([5, 6]) == [5, 6]
