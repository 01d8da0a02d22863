"""Code Shield: static analysis of generated code, in three tiers, failing closed.

The scanner finds the code in a text (:mod:`.extract`: fenced blocks, whole-code responses, tool-call arguments;
the language from the fence tag or detected, never "every language"), then runs

1. the **regex** tier in-process: the rules in ``rules/*.yaml`` (:mod:`.rules`), comments blanked first;
2. the **semgrep** tier for rules with a structural pattern, on the blocks whose prescan regex matched, in one
   warm semgrep process for the whole batch (:mod:`.semgrep`): no process start per snippet, no network;
3. **bandit** in-process on Python blocks (:mod:`.bandit_tier`).

Findings are merged and de-duplicated (one per block, line and CWE: the most severe wins) and each gets an action:
``rule_actions`` > ``deny`` / ``allow`` > ``cwe_actions`` > ``severity_actions`` (default error -> block,
warning -> warn, advice -> allow). The scan's decision is the worst action found. ``redact`` replaces the whole
block (fences included) with a notice. A tier that fails or runs past its timeout fails the scan, and the scanner's
``on_error`` (block by default) decides: the result and the audit record show status error or timeout and why.
Code is never executed; semgrep's temp files are private and removed after each scan.

While a response streams, a fenced block is held back until its closing fence arrives and is scanned then, so a
stream can be cut before an insecure block is sent (the hold is bounded by the policy's ``output.stream.max_held``:
set it above the largest block you expect).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from guardrails.scanners.base import ScanInput, Scanner, ScannerConfig
from guardrails.scanners.code_shield.extract import CodeBlock, extract
from guardrails.scanners.code_shield.languages import LANGUAGES
from guardrails.scanners.code_shield.rules import SEVERITY_RANK, Rule, RuleSet, Severity, load_rules
from guardrails.scanners.registry import register
from guardrails.types import Decision, Finding, ScanResult, Status

__all__ = ["CodeShieldConfig", "CodeShieldScanner", "CodeIssue"]

Action = Literal["block", "redact", "warn", "allow"]
Tier = Literal["regex", "semgrep", "bandit"]
_SCORE = {"error": 1.0, "warning": 0.66, "advice": 0.33}


@cache
def _default_rules() -> RuleSet:
    return load_rules()


class CodeShieldConfig(ScannerConfig):
    type: Literal["code_shield"]
    action: Literal["block", "redact", "warn"] = Field(
        default="block", description="What rules and CWEs listed in `deny` get."
    )
    timeout: float = Field(default=10.0, gt=0, le=600, description="Seconds for the whole scan, all tiers.")
    tiers: list[Tier] = Field(
        default_factory=lambda: ["regex", "semgrep", "bandit"],
        description="Analysers to run. Without `semgrep`, structural rules are decided by their prescan regex.",
    )
    tier_timeouts: dict[Tier, float] = Field(
        default_factory=lambda: {"regex": 2.0, "semgrep": 8.0, "bandit": 3.0},
        description="Seconds per tier; a tier past its time fails the scan (then `on_error` decides).",
    )
    severity_actions: dict[Severity, Action] = Field(
        default_factory=lambda: {"error": "block", "warning": "warn", "advice": "allow"},
        description="Action per rule severity (error > warning > advice).",
    )
    cwe_actions: dict[str, Action] = Field(
        default_factory=dict, description="Action per CWE id (`CWE-89: block`), over `severity_actions`."
    )
    rule_actions: dict[str, Action] = Field(
        default_factory=dict, description="Action per rule id (`python.md5: allow`), over everything else."
    )
    allow: list[str] = Field(default_factory=list, description="Rule ids or CWE ids never acted on (reported only).")
    deny: list[str] = Field(default_factory=list, description="Rule ids or CWE ids that always get `action`.")
    languages: list[str] | None = Field(
        default=None,
        description="Only these languages get their language's rules; other code gets the language-agnostic ones "
        "(secrets, Trojan Source). Default: every language with rules.",
    )
    default_language: str | None = Field(
        default=None, description="Language assumed for blocks with no tag and no clear evidence (default: none)."
    )
    extra_rules: list[Path] = Field(default_factory=list, description="More rule files, in the format of rules/*.yaml.")
    max_code_chars: int = Field(
        default=100_000, gt=0, description="Longest code block scanned; a longer one fails the scan (`on_error`)."
    )
    redact_with: str = Field(
        default="[insecure code removed by Code Shield: {cwes}]",
        description="Notice that replaces a redacted block; `{cwes}` lists what was found.",
    )

    @model_validator(mode="after")
    def _known_names(self) -> CodeShieldConfig:
        for language in [*(self.languages or []), *([self.default_language] if self.default_language else [])]:
            if language not in LANGUAGES:
                raise ValueError(f"unknown language {language!r}; known: {', '.join(LANGUAGES)}")
        rules = _ruleset(tuple(self.extra_rules))
        for where, names in (("rule_actions", self.rule_actions), ("allow", self.allow), ("deny", self.deny)):
            for name in names:
                if not (name.startswith(("CWE-", "bandit.")) or name in rules.rules):
                    raise ValueError(f"{where}: unknown rule {name!r} (give a rule id, a bandit.Bxxx id or a CWE-n)")
        for cwe in self.cwe_actions:
            if not cwe.startswith("CWE-") or not cwe[4:].isdigit():
                raise ValueError(f"cwe_actions: {cwe!r} is not a CWE id such as CWE-89")
        return self


def _ruleset(extra: tuple[Path, ...]) -> RuleSet:
    if not extra:
        return _default_rules()
    return RuleSet([*_default_rules().rules.values(), *load_rules(list(extra)).rules.values()])


class _TooLarge(Exception):
    """A block over ``max_code_chars``: that text's result comes from ``on_error``."""


@dataclass(frozen=True, slots=True)
class CodeIssue:
    """One finding before actions: which rule, where, and which analyser saw it."""

    rule_id: str
    cwe: str
    severity: str
    message: str
    fix: str
    block: int  # index of the block in the text
    line: int  # 1-based line in the block
    analyzer: str  # regex, semgrep or bandit


@register
class CodeShieldScanner(Scanner):
    config_model = CodeShieldConfig
    config: CodeShieldConfig

    def __init__(self, config: CodeShieldConfig) -> None:
        super().__init__(config)
        self.rules = _ruleset(tuple(config.extra_rules))
        self._languages = frozenset(config.languages) if config.languages is not None else None
        self._semgrep = None
        if "semgrep" in config.tiers:
            from guardrails.scanners.code_shield.semgrep import SharedSemgrep

            structural = [r for r in self.rules.rules.values() if r.semgrep]
            self._semgrep = SharedSemgrep(structural, timeout=self._tier_timeout("semgrep"))
        self._bandit = None
        if "bandit" in config.tiers:
            from guardrails.scanners.code_shield.bandit_tier import BanditTier

            self._bandit = BanditTier()

    def _tier_timeout(self, tier: str) -> float:
        return self.config.tier_timeouts.get(tier, self.config.timeout)

    async def scan(self, batch: Sequence[ScanInput]) -> list[ScanResult]:
        found: list[tuple[list[CodeBlock], int | None] | str] = []
        for item in batch:
            try:
                found.append(self._blocks(item))
            except _TooLarge as exc:
                found.append(str(exc))
        issues = iter(await self.analyse([f[0] for f in found if not isinstance(f, str)]))
        return [
            self._error(f) if isinstance(f, str) else self._result(item, f[0], next(issues), f[1])
            for item, f in zip(batch, found, strict=True)
        ]

    def _blocks(self, item: ScanInput) -> tuple[list[CodeBlock], int | None]:
        """The item's blocks (in its offsets), and where a fence still open while streaming starts."""
        start = item.fresh_from
        blocks = extract(item.text[start:], default_language=self.config.default_language, streaming=item.partial)
        partial_at = None
        if item.partial and blocks and blocks[-1].source == "open_fence":
            partial_at = start + blocks.pop().span[0]
        if start:
            blocks = [b.shifted(start, item.text.count("\n", 0, start)) for b in blocks]
        for block in blocks:
            if len(block.code) > self.config.max_code_chars:
                raise _TooLarge(
                    f"code block of {len(block.code)} characters at line {block.line}; "
                    f"max_code_chars is {self.config.max_code_chars}"
                )
        if self._languages is not None:
            blocks = [b if b.language in self._languages else b.without_language() for b in blocks]
        return blocks, partial_at

    async def analyse(self, texts: Sequence[Sequence[CodeBlock]]) -> list[list[CodeIssue]]:
        """Every tier over every block of every text, in one semgrep call; issues merged per text."""
        flat = [(t, b, block) for t, blocks in enumerate(texts) for b, block in enumerate(blocks)]
        found: list[list[CodeIssue]] = [[] for _ in texts]
        if "regex" in self.config.tiers:
            deadline = time.monotonic() + self._tier_timeout("regex")
            semgrep_off = self._semgrep is None
            for t, b, block in flat:
                matches = self.rules.regex_matches(
                    block.code, block.language, deadline=deadline, semgrep_rules=semgrep_off
                )
                found[t].extend(_issue(m.rule, b, m.line, "regex") for m in matches)
        if self._semgrep is not None:
            await self._run_semgrep(flat, found)
        if self._bandit is not None:
            deadline = time.monotonic() + self._tier_timeout("bandit")
            for t, b, block in flat:
                if block.language != "python":
                    continue
                if time.monotonic() > deadline:
                    raise TimeoutError(f"bandit tier ran past {self._tier_timeout('bandit'):g}s")
                for hit in self._bandit.scan(block.code):
                    fix = f"See bandit's documentation of {hit.rule_id.split('.', 1)[1]}."
                    found[t].append(
                        CodeIssue(hit.rule_id, hit.cwe, hit.severity, hit.message, fix, b, hit.line, "bandit")
                    )
        return [_dedupe(issues) for issues in found]

    async def _run_semgrep(self, flat: list[tuple[int, int, CodeBlock]], found: list[list[CodeIssue]]) -> None:
        from guardrails.scanners.code_shield.semgrep import SemgrepJob

        deadline = time.monotonic() + self._tier_timeout("semgrep")
        jobs, owners = [], []
        for t, b, block in flat:
            if block.language is None:
                continue
            wanted = self.rules.prescan(block.code, block.language, deadline=deadline)
            if wanted:
                jobs.append(SemgrepJob(block.code, block.language, tuple(r.id for r in wanted)))
                owners.append((t, b))
        if not jobs:
            return
        remaining = max(deadline - time.monotonic(), 0.001)
        try:
            hits = await asyncio.wait_for(self._semgrep.scan(jobs), remaining)
        except TimeoutError:
            raise TimeoutError(f"semgrep tier ran past {self._tier_timeout('semgrep'):g}s") from None
        for (t, b), job_hits in zip(owners, hits, strict=True):
            for hit in job_hits:
                found[t].append(_issue(self.rules.rules[hit.rule_id], b, hit.line, "semgrep"))

    def action_for(self, issue: CodeIssue) -> Action:
        config = self.config
        if issue.rule_id in config.rule_actions:
            return config.rule_actions[issue.rule_id]
        if issue.rule_id in config.deny or issue.cwe in config.deny:
            return config.action
        if issue.rule_id in config.allow or issue.cwe in config.allow:
            return "allow"
        if issue.cwe in config.cwe_actions:
            return config.cwe_actions[issue.cwe]
        return config.severity_actions.get(issue.severity, "allow")  # type: ignore[arg-type]

    def _result(
        self, item: ScanInput, blocks: list[CodeBlock], issues: list[CodeIssue], partial_at: int | None
    ) -> ScanResult:
        findings: list[Finding] = []
        decision = Decision.ALLOW
        score = 0.0
        categories: dict[str, None] = {}
        summary: list[str] = []
        for issue in issues:
            block = blocks[issue.block]
            action = self.action_for(issue)
            line = block.response_line(issue.line)
            where = f"{block.language or 'unknown language'} block {issue.block + 1}, line {issue.line}"
            findings.append(
                Finding(
                    rule=issue.rule_id,
                    message_index=item.index,
                    span=block.span if action == "redact" else None,
                    detail=f"{issue.cwe} {issue.severity} ({issue.analyzer}, {where}; action {action}): "
                    f"{issue.message} Fix: {issue.fix}",
                    line=line,
                )
            )
            if action != "allow":
                score = max(score, _SCORE[issue.severity])
                decision = Decision.worst((decision, Decision(action)))
                categories[issue.cwe] = None
                summary.append(f"{issue.cwe} {issue.rule_id} at line {line}")
        if partial_at is not None:
            # a block still being written: the stream holds it from its opening fence until it closes
            findings.append(
                Finding(rule="open-fence", message_index=item.index, span=(partial_at, len(item.text)), view="partial")
            )
        reason = "; ".join(summary[:5]) + (f" and {len(summary) - 5} more" if len(summary) > 5 else "")
        if not blocks:
            reason = "no code found"
        return ScanResult(self.id, decision, score, tuple(categories), tuple(findings), reason)

    def _error(self, problem: str) -> ScanResult:
        return ScanResult(self.id, Decision(self.config.on_error), 0.0, reason=problem, status=Status.ERROR)

    def replacement(self, finding: Finding) -> str:
        cwe = finding.detail.split(" ", 1)[0] if finding.detail else ""
        return self.config.redact_with.format(cwes=cwe or "insecure code")

    async def aclose(self) -> None:
        if self._semgrep is not None:
            await self._semgrep.aclose()


def _issue(rule: Rule, block: int, line: int, analyzer: str) -> CodeIssue:
    return CodeIssue(rule.id, rule.cwe, rule.severity, rule.message, rule.fix, block, line, analyzer)


def _dedupe(issues: list[CodeIssue]) -> list[CodeIssue]:
    """One issue per (block, line, CWE), the most severe, semgrep before regex. Bandit maps some tests to other
    CWEs than ours (eval: CWE-78), so a bandit issue on a line where one of our rules fired is dropped unless it is
    more severe than all of ours there."""
    best: dict[tuple[int, int, str], CodeIssue] = {}
    ours: dict[tuple[int, int], int] = {}
    for issue in sorted(issues, key=lambda i: (-SEVERITY_RANK[i.severity], i.analyzer != "semgrep")):
        if issue.analyzer != "bandit":
            place = (issue.block, issue.line)
            ours[place] = max(ours.get(place, -1), SEVERITY_RANK[issue.severity])
        best.setdefault((issue.block, issue.line, issue.cwe), issue)
    kept = [
        i
        for i in best.values()
        if i.analyzer != "bandit" or SEVERITY_RANK[i.severity] > ours.get((i.block, i.line), -1)
    ]
    return sorted(kept, key=lambda i: (i.block, i.line, i.rule_id))
