"""Normalisation before classification, shared by every scanner that wants it.

Attackers hide a blocked prompt from a classifier without hiding it from the model: invisible Unicode (tag
characters, zero-width characters, variation selectors), look-alike letters (Cyrillic "о" for Latin "o"), compatibility
forms (fullwidth, mathematical bold) and encodings the model happily decodes (base64, hex, percent-encoding).
:func:`views` turns one text into the forms a scanner should look at:

- ``raw``: the text itself, always first;
- ``normalized``: NFKD, invisible characters and combining marks dropped, confusables folded to ASCII; each
  character keeps the index of the raw character it came from, so a match maps back to a raw span;
- ``hidden``: payloads smuggled in tag characters (U+E0020-E007E map to ASCII) or in runs of variation selectors
  (one byte each);
- ``base64`` / ``hex`` / ``percent``: encoded runs that decode to readable text.

Decoded views are themselves normalised and decoded again (to :data:`MAX_DEPTH`), and map back to the raw span of
the outermost encoded run. Pure ASCII text without encoded runs yields the raw view alone, at the cost of one
regex search.
"""

from __future__ import annotations

import base64
import binascii
import json
import unicodedata
import urllib.parse
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import regex

__all__ = ["View", "views", "skeleton", "hidden_runs", "HiddenRun", "MAX_DEPTH", "prepare"]

MAX_DEPTH = 3  # base64 of hex of base64 is still decoded; deeper nesting is not
MAX_DECODED_CHARS = 200_000  # total decoded text per input, so a huge encoded blob cannot amplify work

_TAG_FIRST, _TAG_LAST = 0xE0000, 0xE007F
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
ZERO_WIDTH = frozenset(
    "\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u180e\u00ad\u034f\u115f\u1160\u3164\uffa0\u200e\u200f\u061c"
)


def _is_variation_selector(cp: int) -> bool:
    return 0xFE00 <= cp <= 0xFE0F or 0xE0100 <= cp <= 0xE01EF


def _variation_selector_byte(cp: int) -> int:
    return cp - 0xFE00 if cp <= 0xFE0F else cp - 0xE0100 + 16


@dataclass(frozen=True, slots=True)
class View:
    """One form of a text. ``raw_span`` maps a span of this view back to the raw text."""

    kind: str
    text: str
    origin: tuple[int, int] | None = None  # decoded views: the raw span they were decoded from
    index_map: tuple[int, ...] | None = None  # normalized view of the raw text: raw index of each character

    def raw_span(self, start: int, end: int) -> tuple[int, int]:
        if self.origin is not None:
            return self.origin
        if self.index_map is None:
            return (start, end)
        if not self.index_map:
            return (0, 0)
        if end <= start:
            at = self.index_map[start] if start < len(self.index_map) else (self.index_map[-1] + 1)
            return (at, at)
        return (self.index_map[start], self.index_map[end - 1] + 1)


@dataclass(frozen=True, slots=True)
class HiddenRun:
    """A run of invisible characters: kind is ``tags``, ``variation_selectors``, ``bidi`` or ``zero_width``."""

    kind: str
    start: int
    end: int
    decoded: str = ""


@lru_cache(maxsize=1)
def _confusables() -> dict[str, str]:
    """Non-ASCII characters that Unicode's confusables data says look like one ASCII letter or digit."""
    data = json.loads(resources.files("confusable_homoglyphs").joinpath("confusables.json").read_text("utf-8"))
    table: dict[str, str] = {}
    for char, entries in data.items():
        if len(char) != 1 or char.isascii():
            continue
        candidates = [e["c"] for e in entries if len(e["c"]) == 1 and e["c"].isascii() and e["c"].isalnum()]
        if not candidates:
            continue
        category = unicodedata.category(char)
        if category == "Lu":
            preferred = [c for c in candidates if c.isupper()]
        elif category == "Ll":
            preferred = [c for c in candidates if c.islower()]
        else:
            preferred = []
        if category == "Lu" and not preferred and candidates[0] == "l":
            preferred = ["I"]  # Unicode's skeleton folds capital I to l; for case-aware matching it is I
        table[char] = (preferred or candidates)[0]
    return table


def prepare() -> None:
    """Load the confusables table now (scanners call this at start-up, so no request pays for it)."""
    _confusables()


def _invisible(ch: str) -> bool:
    cp = ord(ch)
    return (
        ch in ZERO_WIDTH
        or ch in BIDI_CONTROLS
        or _TAG_FIRST <= cp <= _TAG_LAST
        or _is_variation_selector(cp)
        or unicodedata.category(ch) == "Cf"
    )


def skeleton(text: str) -> tuple[str, tuple[int, ...]]:
    """The text a classifier should see, and the raw index of each of its characters.

    NFKD per character (compatibility forms to their base letters, accents split off), invisible characters and
    combining marks dropped, confusables folded to ASCII. Case is kept.
    """
    table = _confusables()
    out: list[str] = []
    index_map: list[int] = []
    for i, ch in enumerate(text):
        if ch.isascii():
            out.append(ch)
            index_map.append(i)
            continue
        if _invisible(ch):
            continue
        for c in unicodedata.normalize("NFKD", ch):
            if unicodedata.combining(c):
                continue
            out.append(table.get(c, c))
            index_map.append(i)
    return "".join(out), tuple(index_map)


def _is_subdivision_flag(text: str, start: int, end: int) -> bool:
    """A tag run that spells a flag emoji (black flag, 2-7 tag letters or digits, cancel tag), e.g. England's."""
    if start == 0 or text[start - 1] != "\U0001f3f4" or text[end - 1] != "\U000e007f" or not 3 <= end - start <= 8:
        return False
    return all(0xE0030 <= ord(c) <= 0xE0039 or 0xE0061 <= ord(c) <= 0xE007A for c in text[start : end - 1])


def _is_emoji(ch: str) -> bool:
    return ord(ch) >= 0x1F000 or unicodedata.category(ch) == "So"


def hidden_runs(text: str) -> list[HiddenRun]:
    """Runs of invisible characters, with what tag and variation-selector runs decode to.

    A zero-width joiner between two emoji and a single variation selector after a visible character are ordinary
    emoji spelling, not hiding, and are left out.
    """
    runs: list[HiddenRun] = []
    n = len(text)
    i = 0
    while i < n:
        ch = text[i]
        if ch.isascii():
            i += 1
            continue
        cp = ord(ch)
        if _TAG_FIRST <= cp <= _TAG_LAST:
            j = i
            while j < n and _TAG_FIRST <= ord(text[j]) <= _TAG_LAST:
                j += 1
            if _is_subdivision_flag(text, i, j):
                i = j
                continue
            decoded = "".join(chr(ord(c) - _TAG_FIRST) for c in text[i:j] if 0x20 <= ord(c) - _TAG_FIRST <= 0x7E)
            runs.append(HiddenRun("tags", i, j, decoded))
            i = j
        elif _is_variation_selector(cp):
            j = i
            while j < n and _is_variation_selector(ord(text[j])):
                j += 1
            if j - i >= 2:
                raw = bytes(_variation_selector_byte(ord(c)) for c in text[i:j])
                runs.append(HiddenRun("variation_selectors", i, j, raw.decode("utf-8", "replace")))
            i = j
        elif ch in BIDI_CONTROLS:
            runs.append(HiddenRun("bidi", i, i + 1))
            i += 1
        elif ch in ZERO_WIDTH:
            before = text[i - 2] if i >= 2 and text[i - 1] == "\ufe0f" else text[i - 1] if i else ""
            between_emoji = ch == "\u200d" and before and i < n - 1 and _is_emoji(before) and _is_emoji(text[i + 1])
            leading_bom = ch == "\ufeff" and i == 0
            if not (between_emoji or leading_bom):
                runs.append(HiddenRun("zero_width", i, i + 1))
            i += 1
        else:
            i += 1
    return runs


# Encoded runs. Lookarounds keep a match from starting or ending inside a longer run of the same alphabet.
# A run of the base64 alphabet may also be hex (hex digits are a subset): _decode tries hex first for those.
_ENCODED = regex.compile(
    r"(?P<base64>(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-]))"
    r"|(?P<hexesc>(?:\\x[0-9A-Fa-f]{2}){4,})"
    r"|(?P<percent>(?:%[0-9A-Fa-f]{2}){4,})"
)
_HEX_RUN = regex.compile(r"(?:[0-9A-Fa-f]{2})+")


def _readable(data: bytes) -> str | None:
    """``data`` as text if it is UTF-8 and reads like text (mostly printable, some letters), else None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text:
        return None
    if text.isascii() and text.isprintable():
        # Random bytes are all printable ASCII with probability ~0.37 per byte: real text (or a nested encoding).
        return text if len(text) >= 8 and sum(c.isalpha() for c in text) >= 4 else None
    printable = sum(1 for c in text if c.isprintable() or c in "\n\r\t")
    letters = sum(1 for c in text if c.isalpha())
    return text if printable / len(text) >= 0.95 and letters >= 4 and letters / len(text) >= 0.3 else None


def _decode(kind: str, run: str) -> tuple[str, str] | None:
    """(view kind, decoded text) for an encoded run that decodes to readable text, else None."""
    if kind == "base64" and _HEX_RUN.fullmatch(run):
        decoded = _readable(bytes.fromhex(run))
        if decoded is not None:
            return "hex", decoded
    text = _decode_as(kind, run)
    return None if text is None else ("hex" if kind == "hexesc" else kind, text)


def _decode_as(kind: str, run: str) -> str | None:
    try:
        if kind == "base64":
            if not (any(c.isdigit() or c in "+/=_-" for c in run) or (run != run.lower() and run != run.upper())):
                return None  # a plain long word, not an encoding
            padded = run + "=" * (-len(run) % 4)
            altchars = b"-_" if ("-" in run or "_" in run) else None
            return _readable(base64.b64decode(padded, altchars=altchars, validate=True))
        if kind == "hexesc":
            return _readable(bytes.fromhex(run.replace("\\x", "")))
        if kind == "percent":
            return _readable(urllib.parse.unquote_to_bytes(run))
    except (binascii.Error, ValueError):
        return None
    return None


def _derived(text: str, origin: tuple[int, int] | None, depth: int, budget: list[int], out: list[View]) -> None:
    """Append the normalised, hidden and decoded views of ``text`` (itself a view mapped to ``origin``)."""
    if not text.isascii():
        folded, index_map = skeleton(text)
        if folded != text:
            out.append(View("normalized", folded, origin, None if origin else index_map))
        for run in hidden_runs(text):
            if run.decoded and budget[0] > 0:
                budget[0] -= len(run.decoded)
                span = origin or (run.start, run.end)
                out.append(View("hidden", run.decoded, span))
                if depth < MAX_DEPTH:
                    _derived(run.decoded, span, depth + 1, budget, out)
    if depth >= MAX_DEPTH:
        return
    for match in _ENCODED.finditer(text):
        if budget[0] <= 0:
            return
        found = _decode(match.lastgroup, match.group())
        if found is None:
            continue
        kind, decoded = found
        budget[0] -= len(decoded)
        span = origin or match.span()
        out.append(View(kind, decoded, span))
        _derived(decoded, span, depth + 1, budget, out)


def views(text: str) -> tuple[View, ...]:
    """Every form of ``text`` a scanner should look at, the raw text first (see the module docstring)."""
    out = [View("raw", text)]
    _derived(text, None, 0, [MAX_DECODED_CHARS], out)
    return tuple(out)
