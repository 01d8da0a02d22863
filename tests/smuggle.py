"""Ways attackers hide text, shared by the tests: spell a payload in invisible or encoded forms."""

from __future__ import annotations

import base64


def tags(text: str) -> str:
    """``text`` spelled in Unicode tag characters (U+E0020-E007E), invisible when rendered."""
    return "".join(chr(0xE0000 + ord(c)) for c in text)


def selectors(data: bytes) -> str:
    """``data`` spelled one byte per variation selector: U+FE00-FE0F for 0-15, U+E0100-E01EF for 16-255."""
    return "".join(chr(0xFE00 + b) if b < 16 else chr(0xE0100 + b - 16) for b in data)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
