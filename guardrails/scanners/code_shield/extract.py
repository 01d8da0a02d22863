"""Finding the code in a response: fenced blocks, whole-code responses and tool-call arguments.

- Fenced blocks (```` ``` ```` or ``~~~``, any indentation, with or without an info string, CommonMark's closing
  rule: the same character, at least as long). An unclosed fence runs to the end of the text; while a response is
  still streaming, an unclosed one is reported as such, so the stream can hold it until it closes.
- A response without fences that is code as a whole (a language is detected and few lines read as prose).
- Tool calls written as JSON (``{"name": ..., "arguments"|"parameters": {...}}``, OpenAI's
  ``{"function": {...}}`` and lists of them, bare or in a ``json`` fence): string arguments that hold code, with the
  language taken from the argument or tool name (``command`` -> shell, ``run_python`` -> python) or detected.

Every block carries its offsets in the response, so findings report lines relative to the response and the block.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace

import regex

from guardrails.scanners.code_shield.languages import canonical, detect

__all__ = ["CodeBlock", "extract"]


@dataclass(frozen=True, slots=True)
class CodeBlock:
    code: str
    language: str | None  # canonical name, or None: only language-agnostic rules apply
    source: str  # "fence", "whole", "tool_call", or "open_fence" (a fence still open while streaming)
    start: int  # offset of the code's first character in the response
    line: int  # 1-based line of the response on which the code starts
    span: tuple[int, int]  # the whole block in the response (fences included): what redaction replaces
    tag: str = ""  # the fence's info string or the tool's name, as written
    offsets: tuple[int, ...] | None = None  # response offset of each code line, when lines were re-indented

    def response_offset(self, position: int) -> int:
        """Response offset of ``position`` in :attr:`code`."""
        if self.offsets is None:
            return self.start + position
        line = self.code.count("\n", 0, position)
        line_start = self.code.rfind("\n", 0, position) + 1
        return self.offsets[line] + (position - line_start)

    def response_line(self, block_line: int) -> int:
        """Response line (1-based) of the block's line ``block_line`` (1-based)."""
        return self.line + block_line - 1

    def shifted(self, chars: int, lines: int) -> CodeBlock:
        """This block as found in a text that had ``chars`` characters (``lines`` newlines) before it."""
        offsets = None if self.offsets is None else tuple(o + chars for o in self.offsets)
        span = (self.span[0] + chars, self.span[1] + chars)
        return replace(self, start=self.start + chars, line=self.line + lines, span=span, offsets=offsets)

    def without_language(self) -> CodeBlock:
        return replace(self, language=None)


_FENCE = regex.compile(r"^([ \t]*)(`{3,}|~{3,})[ \t]*([^\n`]*?)[ \t]*$", regex.MULTILINE)


def _fences(text: str) -> Iterator[tuple[int, int, int, int, str, str, bool]]:
    """(block start, code start, code end, block end, info string, indent, closed) for each fenced block."""
    position = 0
    while True:
        opening = _FENCE.search(text, position)
        if opening is None:
            return
        indent, fence, info = opening.group(1), opening.group(2), opening.group(3)
        code_start = opening.end() + 1 if opening.end() < len(text) else opening.end()
        closing_re = regex.compile(rf"^[ \t]*{regex.escape(fence[0])}{{{len(fence)},}}[ \t]*$", regex.MULTILINE)
        closing = closing_re.search(text, code_start) if code_start <= len(text) else None
        if closing is None:
            yield opening.start(), code_start, len(text), len(text), info, indent, False
            return
        code_end = max(code_start, closing.start() - 1)  # without the newline before the closing fence
        yield opening.start(), code_start, code_end, closing.end(), info, indent, True
        position = closing.end()


def _dedent(text: str, start: int, end: int, indent: str) -> tuple[str, tuple[int, ...] | None]:
    code = text[start:end]
    if not indent:
        return code, None
    lines, offsets, position = [], [], start
    for line in code.split("\n"):
        cut = min(len(line) - len(line.lstrip(" \t")), len(indent))
        lines.append(line[cut:])
        offsets.append(position + cut)
        position += len(line) + 1
    return "\n".join(lines), tuple(offsets)


_PROSE = regex.compile(r"^\s*[A-Z][a-z]+(?: [\w,'()-]+){5,}[.!?:]\s*$")


def _looks_like_code(text: str, language: str | None) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or language is None:
        return False
    prose = sum(1 for line in lines if _PROSE.match(line))
    return prose <= 0.2 * len(lines)


_CODE_KEYS = {"code", "script", "source", "source_code", "program", "snippet", "content", "body", "patch", "diff"}
_SHELL_KEYS = {"command", "cmd", "shell", "bash", "commands"}


def _tool_calls(value: object) -> Iterator[tuple[str, dict]]:
    """(tool name, arguments) for each tool call in a parsed JSON value."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, dict):
            continue
        call = item.get("function") if isinstance(item.get("function"), dict) else item
        name = call.get("name")
        args = call.get("arguments", call.get("parameters"))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                args = {"arguments": args}
        if isinstance(name, str) and isinstance(args, dict):
            yield name, args


def _tool_language(tool: str, key: str, value: str) -> str | None:
    if key.lower() in _SHELL_KEYS:
        return "shell"
    lowered = tool.lower()
    for part in regex.split(r"[^a-z0-9#+]+", lowered):
        found = canonical(part)
        if found:
            return found
    return detect(value)


def _tool_blocks(text: str, offset: int, line: int) -> list[CodeBlock]:
    stripped = text.strip()
    if not stripped or stripped[0] not in "[{":
        return []
    try:
        value = json.loads(stripped)
    except ValueError:
        return []
    blocks = []
    for tool, args in _tool_calls(value):
        for key, arg in args.items():
            if not isinstance(arg, str) or not arg.strip():
                continue
            language = _tool_language(tool, key, arg)
            if key.lower() in _CODE_KEYS | _SHELL_KEYS or (language and _looks_like_code(arg, language)):
                # JSON escapes move characters, so a finding points at the whole call rather than inside it
                blocks.append(CodeBlock(arg, language, "tool_call", offset, line, (offset, offset + len(text)), tool))
    return blocks


def extract(text: str, *, default_language: str | None = None, streaming: bool = False) -> list[CodeBlock]:
    """The code blocks in ``text``. ``default_language`` (a name or tag) is assumed for code whose language neither
    a tag nor the evidence gives. With ``streaming`` (more text may follow), a fence still open at the end is not
    scanned: it comes last, with source ``open_fence``."""
    hint = canonical(default_language) if default_language else None
    if default_language and hint is None:
        raise ValueError(f"unknown code language {default_language!r}")
    blocks: list[CodeBlock] = []
    for block_start, code_start, code_end, block_end, info, indent, closed in _fences(text):
        if streaming and not closed:
            blocks.append(CodeBlock("", None, "open_fence", code_start, 0, (block_start, block_end), info))
            break
        code, offsets = _dedent(text, code_start, code_end, indent)
        tag = info.split()[0] if info.split() else ""
        line = text.count("\n", 0, code_start) + 1
        if tag.lower() == "json" or (not tag and code.lstrip()[:1] in "[{"):
            calls = _tool_blocks(code, code_start, line)
            if calls:
                blocks.extend(calls)
                continue
        lang = canonical(tag) or detect(code) or hint
        blocks.append(CodeBlock(code, lang, "fence", code_start, line, (block_start, block_end), info, offsets))
    if blocks:
        return blocks
    calls = _tool_blocks(text, 0, 1)
    if calls:
        return calls
    lang = detect(text)
    if _looks_like_code(text, lang):
        return [CodeBlock(text, lang, "whole", 0, 1, (0, len(text)))]
    return []
