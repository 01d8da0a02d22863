"""server.codec reads what json reads into the same objects, and writes JSON that json reads back to the same value."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server import codec

_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
_VALUES = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20
)


@given(_VALUES)
def test_loads_reads_what_json_reads(value):
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False)):  # escapes, lone surrogates included
        assert codec.loads(text.encode("utf-8", "surrogatepass")) == json.loads(text)
        assert codec.loads(text) == json.loads(text)


@given(_VALUES)
def test_dumps_round_trips_through_json(value):
    out = codec.dumps(value)
    assert isinstance(out, bytes)
    assert json.loads(out) == value


@pytest.mark.parametrize(
    "text",
    [
        b'{"n": NaN, "i": Infinity}',  # json reads these; so must we
        b'{"big": 123456789012345678901234567890, "neg": -98765432109876543210987654321}',  # exact, not floats
        b'{"lone": "a \\ud800 b", "pair": "\\ud83d\\ude00"}',  # a lone surrogate escape is text json accepts
        b'{"huge": 1.5e400, "tiny": 5e-400}',
        b'[1, "two", {"three": [3.0]}]',
        '{"unicode": "caf\u00e9 \u2603"}'.encode(),
    ],
)
def test_loads_edge_cases_match_json(text):
    got, want = codec.loads(text), json.loads(text)
    assert repr(got) == repr(want)  # repr: NaN != NaN, and 1 == 1.0 would hide a float where json has an int


@pytest.mark.parametrize("text", [b"", b"{", b'{"a": 1} trailing', b"\xff\xfe", b"{'single': 1}"])
def test_invalid_json_raises_value_error_like_json(text):
    with pytest.raises(ValueError):
        codec.loads(text)


def test_dumps_edge_cases():
    assert codec.dumps({"a": float("nan"), "b": -math.inf}) == b'{"a":null,"b":null}'  # JSON has no NaN
    assert json.loads(codec.dumps({"big": 2**100})) == {"big": 2**100}
    lone = codec.dumps({"t": "x\ud800y"})  # not UTF-8 encodable: written as an ASCII escape
    assert lone == b'{"t":"x\\ud800y"}' and json.loads(lone) == {"t": "x\ud800y"}
    assert codec.dumps({"c": "caf\u00e9"}) == '{"c":"caf\u00e9"}'.encode()
    with pytest.raises(TypeError):
        codec.dumps({"o": object()})
