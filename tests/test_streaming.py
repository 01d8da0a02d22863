from __future__ import annotations

import pytest
from support import make_pipeline

from guardrails import Decision, Stage
from guardrails.testing import FakeGenerator

FORBIDDEN = {"id": "word", "type": "regex", "patterns": ["forbidden phrase"]}
SECRETS = {"id": "sec", "type": "secrets"}
TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
WINDOW = {"check_every": 32, "overlap": 16, "holdback": 24}


def chunked(text: str, size: int):
    def generate(prompt):
        for i in range(0, len(text), size):
            yield text[i : i + size]

    return generate


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 50, 1000])
def test_blocked_text_is_never_released_even_split_across_chunks(chunk_size):
    text = "A long harmless introduction that goes on for a while. " * 3 + "Now the forbidden phrase. And more text."
    pipe = make_pipeline(output=[FORBIDDEN], stream=WINDOW)
    stream = pipe.stream("hi", generate=chunked(text, chunk_size))
    chunks = list(stream)
    released = "".join(chunks[:-1])
    assert chunks[-1] == pipe.policy.refusal.output
    assert "forbidden" not in released
    assert text.startswith(released)
    assert stream.result.blocked and stream.result.blocked_stage is Stage.OUTPUT


@pytest.mark.parametrize("chunk_size", [1, 5, 13, 1000])
def test_secret_split_across_chunks_is_redacted(chunk_size):
    text = "Intro text that is long enough to fill a window or two. " * 2 + f"key={TOKEN} and the rest of it."
    pipe = make_pipeline(output=[SECRETS], stream=WINDOW)
    stream = pipe.stream("hi", generate=chunked(text, chunk_size))
    out = "".join(stream)
    assert out == text.replace(TOKEN, "[REDACTED:github_token]")
    assert stream.result.decision is Decision.REDACT
    assert stream.result.text == out


def test_allowed_stream_releases_everything_in_order_and_in_several_pieces():
    text = "".join(f"sentence number {i}. " for i in range(40))
    stream = make_pipeline(output=[FORBIDDEN], stream=WINDOW).stream("hi", generate=chunked(text, 4))
    pieces = list(stream)
    assert "".join(pieces) == text
    assert len(pieces) > 5  # released incrementally, not only at the end
    assert stream.result.decision is Decision.ALLOW


def test_guard_work_is_linear_in_response_length():
    scanned: list[int] = []  # length of each window scanned
    pipe = make_pipeline(output=[{"id": "count", "type": "static"}], stream=WINDOW)
    original = pipe._state.default.output[0].scan

    async def counting_scan(batch):
        scanned.extend(len(item.text) for item in batch)
        return await original(batch)

    pipe._state.default.output[0].scan = counting_scan
    for n in (2_000, 8_000):
        scanned.clear()
        list(pipe.stream("hi", generate=chunked("x" * n, 10)))
        # each character is scanned in its window, maybe again while held back, and once more as overlap
        assert sum(scanned) <= 3 * n
        assert max(scanned) <= WINDOW["check_every"] + WINDOW["holdback"] + WINDOW["overlap"] + 10


def test_blocked_input_streams_only_the_refusal():
    gen = FakeGenerator()
    pipe = make_pipeline(input=[FORBIDDEN])
    stream = pipe.stream("a forbidden phrase", generate=gen.stream)
    assert list(stream) == [pipe.policy.refusal.input]
    assert stream.result.blocked and gen.calls == []


async def test_async_stream_with_async_generator():
    gen = FakeGenerator(default=f"token {TOKEN} end", chunk_size=4)
    stream = make_pipeline(output=[SECRETS], stream=WINDOW).stream("hi", generate=gen.astream)
    out = "".join([c async for c in stream])
    assert out == "token [REDACTED:github_token] end"


async def test_stopping_early_closes_the_model_stream():
    closed = []

    async def endless(prompt):
        try:
            while True:
                yield "forbidden phrase "
        finally:
            closed.append(True)

    stream = make_pipeline(output=[FORBIDDEN], stream=WINDOW).stream("hi", generate=endless)
    chunks = [c async for c in stream]
    assert chunks == [stream.result.text] and stream.result.blocked
    assert closed == [True]


def test_oversized_stream_is_cut_and_blocked():
    stream = make_pipeline(limits={"max_output_chars": 100}, stream=WINDOW).stream(
        "hi", generate=chunked("y" * 10_000, 10)
    )
    chunks = list(stream)
    assert stream.result.blocked and chunks[-1] == stream.result.text
    assert len("".join(chunks[:-1])) <= 100


def test_shadow_output_stage_streams_everything_and_records():
    text = "some forbidden phrase inside"
    stream = make_pipeline(output=[FORBIDDEN], output_mode="shadow", stream=WINDOW).stream(
        "hi", generate=chunked(text, 3)
    )
    assert "".join(stream) == text
    verdict = stream.result.verdict("output")
    assert verdict.decision is Decision.BLOCK and not verdict.enforced and not stream.result.blocked


def test_a_stream_can_be_iterated_once():
    stream = make_pipeline().stream("hi", generate=FakeGenerator().stream)
    list(stream)
    with pytest.raises(RuntimeError, match="once"):
        list(stream)


def test_a_long_credential_longer_than_the_holdback_is_held_until_complete():
    key = (
        "-----BEGIN PRIVATE KEY-----\n"
        + ("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" * 20 + "\n") * 3
        + "-----END PRIVATE KEY-----"
    )
    text = "Here is the key you asked for:\n" + key + "\nKeep it safe."
    stream = make_pipeline(output=[SECRETS], stream=WINDOW).stream("hi", generate=chunked(text, 9))
    pieces = list(stream)
    assert "".join(pieces) == "Here is the key you asked for:\n[REDACTED:private_key]\nKeep it safe."
    assert not any("MIIEvQ" in p for p in pieces)
