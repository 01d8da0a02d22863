"""The semgrep tier against a real ``semgrep lsp``: positions, batches, failures, and its temporary files."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from guardrails._exceptions import PolicyError, ScannerError
from guardrails.scanners.code_shield import semgrep as semgrep_module
from guardrails.scanners.code_shield.rules import Rule
from guardrails.scanners.code_shield.semgrep import SemgrepHit, SemgrepJob, SemgrepTier

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _rule(rule_id: str, language: str, body: dict[str, Any]) -> Rule:
    tests = {"fire": ["unused"], "near_miss": ["unused"]}
    return Rule(id=rule_id, cwe="CWE-94", severity="error", message=f"{rule_id} fired", fix="Don't.", semgrep=body,
                tests=tests, language=language)  # fmt: skip


SHELL_TRUE = [{"pattern": "subprocess.$F(..., shell=True, ...)"}, {"pattern-not": "subprocess.$F('...', ...)"}]
RULES = [
    _rule("py.eval", "python", {"pattern": "eval(...)"}),
    _rule("py.shell", "python", {"patterns": SHELL_TRUE}),
    _rule("js.eval", "javascript", {"pattern-either": [{"pattern": "eval(...)"}, {"pattern": "new Function(...)"}]}),
    _rule("java.exec", "java", {"pattern": "Runtime.getRuntime().exec(...)"}),
]
PY = ("py.eval", "py.shell")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tier() -> AsyncIterator[SemgrepTier]:
    tier = SemgrepTier(RULES)
    await tier.start()
    yield tier
    await tier.aclose()


def _texts(code: str, hits: list[SemgrepHit]) -> list[str]:
    return [code[hit.start : hit.end] for hit in hits]


async def test_hits_carry_lines_and_offsets(tier: SemgrepTier) -> None:
    code = "import subprocess\nx = eval(input())\n\nsubprocess.run(cmd, shell=True)\nsubprocess.run('ls', shell=True)\n"
    [hits] = await tier.scan([SemgrepJob(code, "python", PY)])
    assert _texts(code, hits) == ["eval(input())", "subprocess.run(cmd, shell=True)"]
    assert [(h.rule_id, h.line, h.end_line) for h in hits] == [("py.eval", 2, 2), ("py.shell", 4, 4)]


async def test_a_match_over_several_lines(tier: SemgrepTier) -> None:
    code = "y = eval(\n    input()\n)\n"
    [[hit]] = await tier.scan([SemgrepJob(code, "python", PY)])
    assert (hit.line, hit.end_line, code[hit.start : hit.end]) == (1, 3, "eval(\n    input()\n)")


async def test_only_the_requested_rules_are_reported(tier: SemgrepTier) -> None:
    code = "import subprocess\neval(x)\nsubprocess.call(c, shell=True)\n"
    results = await tier.scan([SemgrepJob(code, "python", ("py.shell",)), SemgrepJob(code, "python", ())])
    assert [[h.rule_id for h in hits] for hits in results] == [["py.shell"], []]


async def test_non_ascii_and_crlf_offsets_are_characters(tier: SemgrepTier) -> None:
    code = "s = 'héllo 😀 世界'\r\nt = '🐍'; y = eval(s)  # 注释\r\nz = eval(t)\r\n"
    [hits] = await tier.scan([SemgrepJob(code, "python", PY)])
    assert _texts(code, hits) == ["eval(s)", "eval(t)"]
    assert [h.line for h in hits] == [2, 3]


async def test_a_batch_across_languages_comes_back_in_order(tier: SemgrepTier) -> None:
    snippets = [
        ("python", "import os\nv = eval(data)\n", PY, ["eval(data)"]),
        ("python", "print('hello')\n", PY, []),
        ("javascript", "const f = new Function('a', body);\nlet r = eval(s);\n", ("js.eval",),
         ["new Function('a', body)", "eval(s)"]),
        ("javascript", "console.log(JSON.parse(s));\n", ("js.eval",), []),
        ("java", "class A { void f() throws Exception { Runtime.getRuntime().exec(cmd); } }\n", ("java.exec",),
         ["Runtime.getRuntime().exec(cmd)"]),
        ("java", "class B { void f() { System.out.println(1); } }\n", ("java.exec",), []),
        ("go", "package main\nfunc main() {}\n", ("go.exec",), []),  # no semgrep rules for Go: not sent
    ]  # fmt: skip
    jobs = [SemgrepJob(code, language, ids) for language, code, ids, _ in snippets] * 30
    results = await tier.scan(jobs)
    assert len(results) == len(jobs)
    for job, hits, (_, _, _, expected) in zip(jobs, results, snippets * 30, strict=True):
        assert _texts(job.code, hits) == expected


async def test_unparsable_snippets_give_no_hits(tier: SemgrepTier) -> None:
    jobs = [
        SemgrepJob("\x00\x01\x02 ((((( def class", "python", PY),
        SemgrepJob("def (((:\n  ))) class class\n", "python", PY),
        SemgrepJob("", "python", PY),
        SemgrepJob("x = eval(y)\n", "python", PY),
    ]
    results = await tier.scan(jobs)
    assert [len(hits) for hits in results] == [0, 0, 0, 1]


async def test_a_long_one_line_snippet_is_still_scanned(tier: SemgrepTier) -> None:
    code = "var a=1;" * 2000 + "eval(x);"  # what semgrep's language server would skip as "minified"
    [[hit]] = await tier.scan([SemgrepJob(code, "javascript", ("js.eval",))])
    assert (hit.start, hit.line, code[hit.start : hit.end]) == (16000, 1, "eval(x)")


async def test_nosemgrep_comments_do_not_silence_findings(tier: SemgrepTier) -> None:
    code = "x = eval(input())  # nosemgrep\ny = eval(z)  # nosemgrep: py.eval\n"
    [hits] = await tier.scan([SemgrepJob(code, "python", PY)])
    assert [h.line for h in hits] == [1, 2]


async def test_concurrent_scans_are_each_answered(tier: SemgrepTier) -> None:
    codes = [f"a{i} = 1\n" * i + f"v = eval(d{i})\n" for i in range(12)]
    results = await asyncio.gather(*(tier.scan([SemgrepJob(code, "python", PY)]) for code in codes))
    assert [[(h.line, code[h.start : h.end]) for h in hits] for code, [hits] in zip(codes, results, strict=True)] == [
        [(i + 1, f"eval(d{i})")] for i in range(12)
    ]


async def test_results_do_not_carry_over_between_scans(tier: SemgrepTier) -> None:
    bad, good = "x = eval(y)\n", "x = int(y)\n"
    assert [len(h) for h in await tier.scan([SemgrepJob(bad, "python", PY)] * 5)] == [1] * 5
    assert [len(h) for h in await tier.scan([SemgrepJob(good, "python", PY)] * 3)] == [0] * 3  # same file names
    assert [len(h) for h in await tier.scan([SemgrepJob(good, "python", PY), SemgrepJob(bad, "python", PY)])] == [0, 1]


async def test_a_server_that_reported_on_many_files_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(semgrep_module, "_RECYCLE_AFTER", 5)
    tier = SemgrepTier(RULES)
    await tier.start()
    try:
        first = tier._server
        assert [len(h) for h in await tier.scan([SemgrepJob("eval(x)\n", "python", PY)] * 6)] == [1] * 6
        assert tier._server is None
        [[hit]] = await tier.scan([SemgrepJob("x = 1\neval(x)\n", "python", PY)])
        assert hit.line == 2 and tier._server is not first
        assert await asyncio.wait_for(first.process.wait(), 5) == -signal.SIGKILL
    finally:
        await tier.aclose()


async def test_snippets_are_never_executed(tier: SemgrepTier, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    jobs = [
        SemgrepJob(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\neval('1')\n", "python", PY),
        SemgrepJob(f"require('fs').writeFileSync({str(marker)!r}, 'x');\neval('1');\n", "javascript", ("js.eval",)),
    ]
    results = await tier.scan(jobs)
    assert [len(hits) for hits in results] == [1, 1]
    assert not marker.exists()


async def test_snippet_files_are_removed_after_each_scan(tier: SemgrepTier) -> None:
    await tier.scan([SemgrepJob("eval(x)\n", "python", PY), SemgrepJob("eval(x);\n", "javascript", ("js.eval",))])
    workspace = tier._dir / "ws"
    assert sorted(p.name for p in workspace.iterdir()) == [".semgrepignore"]
    assert (tier._dir.stat().st_mode & 0o777) == 0o700


async def test_a_timeout_kills_the_process_and_the_next_scan_gets_a_fresh_one() -> None:
    tier = SemgrepTier(RULES, timeout=10.0)
    await tier.start()
    try:
        old = tier._server
        tier.timeout = 1e-4
        with pytest.raises(TimeoutError):
            await tier.scan([SemgrepJob("x = eval(y)\n", "python", PY)])
        assert await asyncio.wait_for(old.process.wait(), 5) == -signal.SIGKILL
        assert sorted(p.name for p in (tier._dir / "ws").iterdir()) == [".semgrepignore"]
        tier.timeout = 10.0
        [[hit]] = await tier.scan([SemgrepJob("x = eval(y)\n", "python", PY)])
        assert hit.rule_id == "py.eval" and tier._server is not old
    finally:
        await tier.aclose()


async def test_a_dead_process_raises_and_is_restarted() -> None:
    tier = SemgrepTier(RULES)
    await tier.start()
    try:
        os.kill(tier._server.process.pid, signal.SIGKILL)
        with pytest.raises(ScannerError, match="exited"):
            await tier.scan([SemgrepJob("x = eval(y)\n", "python", PY)])
        [[hit]] = await tier.scan([SemgrepJob("x = eval(y)\n", "python", PY)])
        assert hit.rule_id == "py.eval"
    finally:
        await tier.aclose()


async def test_aclose_removes_the_temporary_directory() -> None:
    tier = SemgrepTier(RULES)
    await tier.start()
    directory = tier._dir
    assert directory.is_dir()
    await tier.aclose()
    assert not directory.exists()
    with pytest.raises(ScannerError, match="not started"):
        await tier.scan([SemgrepJob("eval(x)\n", "python", PY)])


async def test_an_unclosed_tier_leaves_no_directory_at_exit() -> None:
    script = (
        "import asyncio\n"
        "from guardrails.scanners.code_shield.rules import Rule\n"
        "from guardrails.scanners.code_shield.semgrep import SemgrepTier\n"
        "async def main():\n"
        "    rule = Rule(id='py.eval', cwe='CWE-94', severity='error', message='m', fix='f', language='python',\n"
        "                semgrep={'pattern': 'eval(...)'}, tests={'fire': ['eval(x)'], 'near_miss': ['x']})\n"
        "    tier = SemgrepTier([rule])\n"
        "    await tier.start()\n"
        "    print(tier._dir, flush=True)\n"
        "    return tier\n"
        "tier = asyncio.run(main())\n"
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE)
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    directory = Path(output.decode().strip())
    assert process.returncode == 0 and directory.name.startswith("guardrails-semgrep-")
    assert not directory.exists()


async def test_an_invalid_rule_fails_start_naming_it() -> None:
    tier = SemgrepTier([*RULES, _rule("py.broken", "python", {"pattern": "eval((("})])
    with pytest.raises(ScannerError, match="py.broken"):
        await tier.start()
    assert tier._dir is None


async def test_missing_semgrep_fails_start_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(semgrep_module, "find_spec", lambda name: None)
    with pytest.raises(ScannerError, match="semgrep is not installed"):
        await SemgrepTier(RULES).start()


@pytest.mark.parametrize(
    ("language", "body"),
    [("any", {"pattern": "eval(...)"}), ("python", {"pattern": "eval(...)", "languages": ["generic"]})],
)
async def test_rules_the_tier_cannot_run_are_refused(language: str, body: dict[str, Any]) -> None:
    with pytest.raises(PolicyError, match="py.odd"):
        SemgrepTier([_rule("py.odd", language, body)])
