"""Bandit, in-process, as Code Shield's second opinion on Python.

Bandit's command costs ~146 ms a file (a process start); its node visitor called directly costs about 1 ms a
snippet after a one-time ~0.15 s import, so the tier builds bandit's config and test set once and runs the visitor
per block. ``# nosec`` comments are ignored: the code under review is the model's, and a model can write them too.
A block that does not parse (a fragment) gives no bandit findings; the regex and semgrep tiers still see it.

Bandit's severities map to ours: HIGH -> error, MEDIUM -> warning, LOW -> advice. Each bandit test becomes a rule
id ``bandit.<test id>`` (``bandit.B602``) that policies can override like any other rule.
"""

from __future__ import annotations

import io
import logging
import textwrap
import warnings
from dataclasses import dataclass

from guardrails._exceptions import ScannerError

__all__ = ["BanditHit", "BanditTier"]

_SEVERITY = {"HIGH": "error", "MEDIUM": "warning", "LOW": "advice"}


@dataclass(frozen=True, slots=True)
class BanditHit:
    rule_id: str  # bandit.B602
    cwe: str
    severity: str  # error, warning or advice
    message: str
    line: int  # 1-based, in the block


class BanditTier:
    def __init__(self) -> None:
        with warnings.catch_warnings():
            # bandit 1.9 passes stevedore an argument that stevedore 5.5 deprecates (on import): not ours to act on
            warnings.filterwarnings("ignore", message="The verify_requirements argument", category=DeprecationWarning)
            try:
                from bandit.core import config, meta_ast, metrics, node_visitor, test_set
            except ImportError as exc:
                raise ScannerError(
                    f"Code Shield's bandit tier needs bandit ({exc}); install guardrails[code] or remove 'bandit' "
                    "from the scanner's tiers"
                ) from None
            self._tests = test_set.BanditTestSet(config.BanditConfig(), {})
        # bandit logs "Unable to find qualified name for module" for every snippet (it is not a file on a path)
        logging.getLogger("bandit").setLevel(logging.CRITICAL)
        self._meta_ast = meta_ast
        self._metrics = metrics
        self._visitor = node_visitor.BanditNodeVisitor

    def scan(self, code: str) -> list[BanditHit]:
        """Bandit's findings in one Python block (none if it does not parse)."""
        source = textwrap.dedent(code).encode("utf-8")
        visitor = self._visitor(
            "snippet.py", io.BytesIO(source), self._meta_ast.BanditMetaAst(), self._tests, False, {},
            self._metrics.Metrics(),
        )  # fmt: skip
        try:
            visitor.process(source)
        except (SyntaxError, ValueError):  # ValueError: null bytes in the source
            return []
        hits = []
        for issue in visitor.tester.results:
            cwe = f"CWE-{issue.cwe.id}" if issue.cwe and issue.cwe.id else "CWE-0"
            severity = _SEVERITY.get(str(issue.severity).upper(), "advice")
            hits.append(BanditHit(f"bandit.{issue.test_id}", cwe, severity, issue.text, int(issue.lineno)))
        return hits
