"""The sampler and the per-sequence text handling (incremental detokenisation, stop strings, limits)."""

from __future__ import annotations

import pytest
import torch
from engine_checkpoints import build_tokenizer

from guardrails.engine import SamplingParams
from guardrails.engine.sampling import sample
from guardrails.engine.sequence import Detokenizer, Sequence

LOGITS = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0, 0.0]])


def draw(params: SamplingParams, n: int = 400, history=(), logits=LOGITS) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.tensor([sample(logits, [params], [list(history)], [gen])[0] for _ in range(n)])


def test_greedy_and_degenerate_filters_pick_the_argmax():
    assert sample(LOGITS, [SamplingParams()], [[]], [None]) == [4]
    assert set(draw(SamplingParams(temperature=1.0, top_k=1)).tolist()) == {4}
    assert set(draw(SamplingParams(temperature=1.0, top_p=0.01)).tolist()) == {4}


def test_top_k_and_top_p_restrict_the_support():
    assert set(draw(SamplingParams(temperature=1.0, top_k=2)).tolist()) == {0, 4}
    probs = LOGITS.softmax(-1)[0]  # sorted: 4 (.56), 0 (.21), 1 (.08), ...
    assert probs[4] < 0.7 < probs[4] + probs[0]
    assert set(draw(SamplingParams(temperature=1.0, top_p=0.7)).tolist()) == {0, 4}


def test_temperature_follows_the_softmax():
    counts = torch.bincount(draw(SamplingParams(temperature=2.0), n=4000), minlength=6).float() / 4000
    torch.testing.assert_close(counts, (LOGITS[0] / 2).softmax(-1), atol=0.03, rtol=0)


def test_seed_reproduces_a_sequence_of_draws():
    def run(seed):
        seq = Sequence([1], SamplingParams(temperature=1.0, seed=seed, max_tokens=50))
        return [sample(LOGITS, [seq.params], [[]], [seq.generator])[0] for _ in range(30)]

    assert run(5) == run(5) != run(6)


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    history = [0, 3, 3]
    expected = RepetitionPenaltyLogitsProcessor(1.5)(torch.tensor([history]), LOGITS.clone())
    assert sample(LOGITS, [SamplingParams(repetition_penalty=1.5)], [history], [None]) == [int(expected.argmax())]
    logits = torch.tensor([[3.0, 2.5, -1.0]])  # 0 wins without a penalty, 1 with one
    assert sample(logits, [SamplingParams(repetition_penalty=1.5)], [[0]], [None]) == [1]


@pytest.mark.parametrize("bad", [dict(max_tokens=0), dict(top_p=0), dict(temperature=-1), dict(stop=[""])])
def test_invalid_params(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_incremental_detokenisation_equals_full_decode(tokenizer):
    text = "Ünïcödé 🙂 def reverse(s):\n    return s[::-1]  ok"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text) // 4  # multi-byte characters span several tokens
    decode = lambda t: tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    detok = Detokenizer(decode, [])
    pieces = [detok.add(t) for t in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)  # partial UTF-8 held back, never emitted


def feed(tokenizer, text: str, **params) -> tuple[list[str], Sequence]:
    decode = lambda t: tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    seq = Sequence([5], SamplingParams(**params), eos_token_ids=frozenset({2}), decode=decode)
    pieces = []
    for token in tokenizer.encode(text):
        pieces.append(seq.append(token))
        if seq.finished:
            break
    return pieces, seq


def test_stop_strings_cut_the_text_and_hold_back_partial_matches(tokenizer):
    pieces, seq = feed(tokenizer, "print(x)\nEND of it", stop=["\nEND", "zzz"])
    assert seq.finished and seq.finish_reason == "stop"
    assert "".join(pieces) == seq.text == "print(x)"
    pieces, seq = feed(tokenizer, "a\nENx and more", stop=["\nEND"], max_tokens=100)
    assert not seq.finished and "".join(pieces) == "a\nENx and more"  # a prefix that did not complete is released


def test_eos_and_max_tokens(tokenizer):
    pieces, seq = feed(tokenizer, "hi<|im_end|>never")
    assert seq.finish_reason == "stop" and seq.text == "hi" and seq.output_ids[-1] == 2
    pieces, seq = feed(tokenizer, "one two three four five six", max_tokens=3)
    assert seq.finish_reason == "length" and len(seq.output_ids) == 3 and "".join(pieces) == seq.text
