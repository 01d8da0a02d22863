"""Code Shield's rules: one YAML file per language in ``rules/``, loaded and checked once, and the regex tier.

A rule file::

    language: python            # a canonical language (see languages.py), or "any" for every block
    rules:
      - id: python.eval         # unique over all files
        cwe: CWE-94
        severity: error         # error > warning > advice; the policy maps severities to actions
        message: eval() runs whatever text reaches it as code.
        fix: Parse data with json.loads or ast.literal_eval.
        regex: '\\beval\\s*\\('     # one pattern or a list; MULTILINE, case-sensitive unless (?i)
        unless: 'literal_eval'  # optional: a match is dropped when this matches the match's line
        requires: 'import os'   # optional: the block must also contain this somewhere
        scope: code             # code (default): comments are blanked first; raw: comments too (secrets)
        secret: github_token    # instead of regex: the pattern of that kind in the secrets scanner
        semgrep: {pattern: eval(...)}   # optional: a semgrep rule body (pattern, patterns, pattern-either, ...)
        tests:
          fire: ["x = eval(input())"]
          near_miss: ["x = ast.literal_eval(s)"]

A rule with ``regex`` only is decided by the regex tier. A rule with ``semgrep`` is decided by semgrep; its
``regex``, when given, is the prescan (the block goes to semgrep for that rule only when the regex matches) and
decides alone when the semgrep tier is switched off. Every rule must carry at least one ``fire`` and one
``near_miss`` snippet; the tests run them all.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import regex
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from guardrails._exceptions import PolicyError
from guardrails.scanners.code_shield.languages import LANGUAGES
from guardrails.scanners.secrets import PATTERNS as SECRET_PATTERNS

__all__ = ["Rule", "RuleSet", "RegexMatch", "Severity", "load_rules", "RULES_DIR", "blank_comments"]

RULES_DIR = Path(__file__).parent / "rules"
Severity = Literal["error", "warning", "advice"]
SEVERITY_RANK = {"advice": 0, "warning": 1, "error": 2}


class RuleTests(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fire: list[str] = Field(min_length=1)
    near_miss: list[str] = Field(min_length=1)


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    cwe: str = Field(pattern=r"^CWE-\d+$")
    severity: Severity
    message: str = Field(min_length=1)
    fix: str = Field(min_length=1)
    regex: list[str] = Field(default_factory=list)
    unless: str | None = None
    requires: str | None = None
    scope: Literal["code", "raw"] = "code"
    secret: str | None = None
    semgrep: dict[str, Any] | None = None
    tests: RuleTests
    language: str = ""  # set by the loader from the file

    @field_validator("regex", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _secret_pattern(self) -> Rule:
        if self.secret is None:
            return self
        if self.secret not in SECRET_PATTERNS:
            raise ValueError(f"unknown secret kind {self.secret!r}; known: {', '.join(SECRET_PATTERNS)}")
        if self.regex:
            raise ValueError("give either `secret` or `regex`, not both")
        object.__setattr__(self, "regex", [SECRET_PATTERNS[self.secret]])
        return self

    @field_validator("regex")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            _compile(pattern)
        return patterns

    @field_validator("unless", "requires")
    @classmethod
    def _compiles_one(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            _compile(pattern)
        return pattern

    @cached_property
    def compiled(self) -> tuple[regex.Pattern[str], ...]:
        return tuple(_compile(p) for p in self.regex)

    @cached_property
    def compiled_unless(self) -> regex.Pattern[str] | None:
        return _compile(self.unless) if self.unless else None

    @cached_property
    def compiled_requires(self) -> regex.Pattern[str] | None:
        return _compile(self.requires) if self.requires else None


def _compile(pattern: str) -> regex.Pattern[str]:
    try:
        return regex.compile(pattern, regex.MULTILINE)
    except regex.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None


class _RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    language: str
    rules: list[Rule] = Field(min_length=1)

    @field_validator("language")
    @classmethod
    def _known(cls, value: str) -> str:
        if value != "any" and value not in LANGUAGES:
            raise ValueError(f"unknown language {value!r}; known: any, {', '.join(LANGUAGES)}")
        return value


@dataclass(frozen=True, slots=True)
class RegexMatch:
    rule: Rule
    start: int  # offsets in the block's code
    end: int
    line: int  # 1-based line in the block


class RuleSet:
    """All rules, indexed by language. ``for_language(None)`` gives the language-agnostic ones only."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: dict[str, Rule] = {}
        for rule in rules:
            if rule.id in self.rules:
                raise PolicyError(f"duplicate Code Shield rule id {rule.id!r}")
            self.rules[rule.id] = rule
        self._by_language: dict[str | None, tuple[Rule, ...]] = {}
        agnostic = tuple(r for r in self.rules.values() if r.language == "any")
        self._by_language[None] = agnostic
        for language in LANGUAGES:
            own = tuple(r for r in self.rules.values() if r.language == language)
            self._by_language[language] = own + agnostic

    def for_language(self, language: str | None) -> tuple[Rule, ...]:
        return self._by_language.get(language, self._by_language[None])

    def select(self, keep: Iterable[str]) -> RuleSet:
        keep = set(keep)
        return RuleSet(r for r in self.rules.values() if r.id in keep)

    def __len__(self) -> int:
        return len(self.rules)

    def regex_matches(
        self, code: str, language: str | None, *, deadline: float, semgrep_rules: bool
    ) -> list[RegexMatch]:
        """Matches of the regex rules for ``language`` in ``code``. With ``semgrep_rules`` false, rules that have a
        semgrep pattern are skipped (semgrep decides them); with it true their regex decides alone.

        Raises TimeoutError once ``deadline`` (``time.monotonic()``) passes, even inside one match."""
        blanked: str | None = None
        out = []
        for rule in self.for_language(language):
            if not rule.regex or (rule.semgrep is not None and not semgrep_rules):
                continue
            if rule.scope == "code":
                if blanked is None:
                    blanked = blank_comments(code, language)
                text = blanked
            else:
                text = code
            out.extend(_rule_matches(rule, text, deadline))
        return out

    def prescan(self, code: str, language: str | None, *, deadline: float) -> list[Rule]:
        """The semgrep rules for ``language`` worth running on ``code``: no regex, or a regex that matches."""
        blanked = blank_comments(code, language)
        out = []
        for rule in self.for_language(language):
            if rule.semgrep is None:
                continue
            if not rule.regex or _rule_matches(rule, blanked if rule.scope == "code" else code, deadline, first=True):
                out.append(rule)
        return out


def _rule_matches(rule: Rule, text: str, deadline: float, *, first: bool = False) -> list[RegexMatch]:
    """The rule's matches in ``text``, at most one per line (lines counted incrementally: linear in the text)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("Code Shield's regex tier ran past its timeout")
    if rule.compiled_requires is not None and not rule.compiled_requires.search(text, timeout=remaining):
        return []
    out = []
    seen_lines: set[int] = set()
    for pattern in rule.compiled:
        line, counted_to = 1, 0
        for match in pattern.finditer(text, timeout=max(deadline - time.monotonic(), 1e-6)):
            if match.start() < counted_to:  # patterns run in turn; each restarts the count
                line, counted_to = 1, 0
            line += text.count("\n", counted_to, match.start())
            counted_to = match.start()
            if line in seen_lines:
                continue
            if rule.compiled_unless is not None:
                line_start = text.rfind("\n", 0, match.start()) + 1
                line_end = text.find("\n", match.start())
                if rule.compiled_unless.search(text, line_start, len(text) if line_end < 0 else line_end):
                    continue
            seen_lines.add(line)
            out.append(RegexMatch(rule, match.start(), match.end(), line))
            if first:
                return out
    return out


# Comments per language family. Strings are matched first so that comment markers inside them are left alone.
_STRING = r"\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'"
_C_COMMENTS = r"//[^\n]*|/\*[\s\S]*?(?:\*/|\Z)"
_HASH_COMMENTS = r"#[^\n]*"
_COMMENT_SYNTAX = {
    "python": regex.compile(r"(\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|" + _STRING + r")|(" + _HASH_COMMENTS + ")"),
    "ruby": regex.compile(r"(" + _STRING + r")|(" + _HASH_COMMENTS + r"|^=begin[\s\S]*?^=end)", regex.MULTILINE),
    "shell": regex.compile(r"(" + _STRING + r")|((?<![\w$#{])#(?!!)[^\n]*)"),
    "php": regex.compile(r"(" + _STRING + r")|(" + _C_COMMENTS + r"|#(?!\[)[^\n]*)"),
    "javascript": regex.compile(r"(" + _STRING + r"|`(?:[^`\\]|\\.)*`)|(" + _C_COMMENTS + r")"),
    "rust": regex.compile(r"(" + _STRING + r")|(" + _C_COMMENTS + r")"),
}
for _name in ("c", "cpp", "csharp", "java", "go"):
    _COMMENT_SYNTAX[_name] = regex.compile(r"(" + _STRING + r")|(" + _C_COMMENTS + r")")


@lru_cache(maxsize=32)  # the regex tier and the semgrep prescan both ask for the same block
def blank_comments(code: str, language: str | None) -> str:
    """``code`` with its comments replaced by spaces (newlines kept), so offsets and lines stay the same."""
    syntax = _COMMENT_SYNTAX.get(language or "")
    if syntax is None:
        return code

    def blank(match: regex.Match[str]) -> str:
        if match.group(2) is None:
            return match.group(0)
        return regex.sub(r"[^\n]", " ", match.group(0))

    return syntax.sub(blank, code)


_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml parses the rule files ten times faster


def load_rules(paths: Sequence[Path] | None = None) -> RuleSet:
    """Load rule files (default: every ``*.yaml`` in ``rules/``). Errors name the file and the rule."""
    files = sorted(RULES_DIR.glob("*.yaml")) if paths is None else [Path(p) for p in paths]
    rules: list[Rule] = []
    for path in files:
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_SafeLoader)
            parsed = _RuleFile.model_validate(data)
        except (OSError, yaml.YAMLError) as exc:
            raise PolicyError(f"{path}: cannot read Code Shield rules: {exc}") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise PolicyError(f"{path}: {where}: {first['msg']}") from None
        rules.extend(rule.model_copy(update={"language": parsed.language}) for rule in parsed.rules)
    return RuleSet(rules)
