"""Every Code Shield rule fires on its own ``fire`` snippets and stays quiet on its ``near_miss`` snippets.

Regex rules are checked through the regex tier; rules with a semgrep pattern through a real semgrep process
(tests/scanners/code_shield/test_semgrep.py covers the tier itself).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from guardrails.scanners.code_shield.rules import Rule, load_rules
from guardrails.scanners.code_shield.semgrep import SemgrepJob, SemgrepTier

RULES = load_rules()
REGEX_RULES = [r for r in RULES.rules.values() if r.semgrep is None]
SEMGREP_RULES = [r for r in RULES.rules.values() if r.semgrep is not None]


def _fires(rule: Rule, code: str) -> bool:
    ruleset = RULES.select([rule.id])
    language = None if rule.language == "any" else rule.language
    matches = ruleset.regex_matches(code, language, deadline=time.monotonic() + 5, semgrep_rules=True)
    return any(m.rule.id == rule.id for m in matches)


@pytest.mark.parametrize("rule", REGEX_RULES, ids=lambda r: r.id)
def test_regex_rule_fires_on_its_snippets(rule: Rule) -> None:
    for snippet in rule.tests.fire:
        assert _fires(rule, snippet), f"{rule.id} did not fire on {snippet!r}"


@pytest.mark.parametrize("rule", REGEX_RULES, ids=lambda r: r.id)
def test_regex_rule_quiet_on_near_misses(rule: Rule) -> None:
    for snippet in rule.tests.near_miss:
        assert not _fires(rule, snippet), f"{rule.id} fired on near miss {snippet!r}"


@pytest.fixture(scope="module")
def semgrep_fires() -> dict[tuple[str, str], bool]:
    """(rule id, snippet) -> whether semgrep reported that rule, for every test snippet of every semgrep rule, all
    scanned in one batch by one SemgrepTier."""
    cases = [(rule, code) for rule in SEMGREP_RULES for code in (*rule.tests.fire, *rule.tests.near_miss)]

    async def scan() -> list[bool]:
        tier = SemgrepTier(SEMGREP_RULES, timeout=60)
        await tier.start()
        try:
            results = await tier.scan([SemgrepJob(code, rule.language, (rule.id,)) for rule, code in cases])
        finally:
            await tier.aclose()
        return [any(hit.rule_id == rule.id for hit in hits) for (rule, _), hits in zip(cases, results, strict=True)]

    return {(rule.id, code): fired for (rule, code), fired in zip(cases, asyncio.run(scan()), strict=True)}


@pytest.mark.parametrize("rule", SEMGREP_RULES, ids=lambda r: r.id)
def test_semgrep_rule_fires_on_its_snippets(rule: Rule, semgrep_fires: dict[tuple[str, str], bool]) -> None:
    for snippet in rule.tests.fire:
        assert semgrep_fires[rule.id, snippet], f"{rule.id} did not fire (semgrep) on {snippet!r}"


@pytest.mark.parametrize("rule", SEMGREP_RULES, ids=lambda r: r.id)
def test_semgrep_rule_quiet_on_near_misses(rule: Rule, semgrep_fires: dict[tuple[str, str], bool]) -> None:
    for snippet in rule.tests.near_miss:
        assert not semgrep_fires[rule.id, snippet], f"{rule.id} fired (semgrep) on near miss {snippet!r}"


def test_every_language_has_rules() -> None:
    from guardrails.scanners.code_shield.languages import LANGUAGES

    missing = [lang for lang in LANGUAGES if not any(r.language == lang for r in RULES.rules.values())]
    assert not missing, f"languages without rules: {missing}"
