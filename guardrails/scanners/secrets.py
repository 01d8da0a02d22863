"""Secrets scanner: credentials in prompts (users pasting keys) and in responses (models repeating them).

Detects the formats below by their documented shapes: fixed prefixes, lengths and alphabets, so a match is rarely
anything but a credential. It also looks inside base64, hex and hidden payloads (``normalize``), and redaction then
masks the whole encoded run. Score: 1.0 when any credential is found; categories name the kinds found.

False positives: documentation placeholders in the right format (``AKIAIOSFODNN7EXAMPLE``) match, as in every
format-based scanner; ``generic_assignment`` (``password = "..."``) needs a quoted value of 8 or more characters
without spaces and can be switched off through ``kinds``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator

from guardrails.scanners._matching import Rule, compile_pattern, complete, find
from guardrails.scanners.base import ScanInput, Scanner, ScannerConfig
from guardrails.scanners.registry import register
from guardrails.types import Finding, ScanResult

__all__ = ["SecretsScanner", "SecretsConfig", "PATTERNS"]

# kind -> pattern. Word-boundary lookarounds keep a token from matching inside a longer random string.
PATTERNS: dict[str, str] = {
    "private_key": r"-----BEGIN (?:RSA |DSA |EC |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"
    r"[\s\S]{16,}?-----END (?:RSA |DSA |EC |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----",
    "aws_access_key_id": r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)[A-Z0-9]{16}(?![A-Z0-9])",
    "aws_secret_access_key": r"(?i:aws_?secret_?access_?key|aws_?secret|secret_?access_?key)[\"']?\s*[:=]\s*[\"']?"
    r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])",
    "github_token": r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{82})(?![A-Za-z0-9_])",
    "gitlab_token": r"(?<![A-Za-z0-9_-])glpat-[A-Za-z0-9_-]{20,}(?![A-Za-z0-9_-])",
    "slack_token": r"(?<![A-Za-z0-9-])xox[abposr]-[A-Za-z0-9-]{10,}(?![A-Za-z0-9-])",
    "slack_webhook": r"https://hooks\.slack\.com/services/T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/[A-Za-z0-9_]{20,}",
    "stripe_key": r"(?<![A-Za-z0-9_])(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{24,}(?![A-Za-z0-9_])",
    "google_api_key": r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])",
    "anthropic_key": r"(?<![A-Za-z0-9_-])sk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_-]{80,}(?![A-Za-z0-9_-])",
    "openai_key": r"(?<![A-Za-z0-9_-])sk-(?:proj-|svcacct-|admin-)?(?!ant-)[A-Za-z0-9_-]{20,}T3BlbkFJ[A-Za-z0-9_-]{20,}"
    r"(?![A-Za-z0-9_-])|(?<![A-Za-z0-9_-])sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,}(?![A-Za-z0-9_-])",
    "huggingface_token": r"(?<![A-Za-z0-9_])hf_[A-Za-z0-9]{34,}(?![A-Za-z0-9_])",
    "npm_token": r"(?<![A-Za-z0-9_])npm_[A-Za-z0-9]{36}(?![A-Za-z0-9_])",
    "pypi_token": r"(?<![A-Za-z0-9_-])pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}(?![A-Za-z0-9_-])",
    "sendgrid_key": r"(?<![A-Za-z0-9_.-])SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])",
    "twilio_key": r"(?<![A-Za-z0-9])SK[0-9a-f]{32}(?![A-Za-z0-9])",
    "azure_storage_key": r"AccountKey=[A-Za-z0-9+/]{86}==",
    "jwt": r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}(?![A-Za-z0-9_-])",
    "url_credentials": r"\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@]{1,64}:[^\s:/@]{3,128}@[^\s/@]{1,255}",
    "generic_assignment": r"(?i:(?<![A-Za-z])"
    r"(?:password|passwd|pwd|secret|api_?key|access_?token|auth_?token|client_?secret))"
    r"[\"']?\s*[:=]\s*[\"']([^\s\"']{8,})[\"']",
}


class SecretsConfig(ScannerConfig):
    type: Literal["secrets"]
    action: Literal["block", "redact", "warn"] = Field(default="redact", description="Redact credentials by default.")
    kinds: list[str] | None = Field(
        default=None, description=f"Credential kinds to detect (default: all): {', '.join(PATTERNS)}."
    )
    normalize: bool = Field(default=True, description="Also look inside decoded and hidden payloads.")
    redact_with: str = Field(default="[REDACTED:{kind}]", description="Replacement; `{kind}` names the credential.")

    @field_validator("kinds")
    @classmethod
    def _known(cls, kinds: list[str] | None) -> list[str] | None:
        unknown = sorted(set(kinds or ()) - set(PATTERNS))
        if unknown:
            raise ValueError(f"unknown kinds {unknown}; known: {', '.join(PATTERNS)}")
        return kinds


@register
class SecretsScanner(Scanner):
    config_model = SecretsConfig
    config: SecretsConfig

    def __init__(self, config: SecretsConfig) -> None:
        super().__init__(config)
        kinds = config.kinds if config.kinds is not None else list(PATTERNS)
        self._rules: list[Rule] = [(kind, compile_pattern(PATTERNS[kind], ignore_case=False), kind) for kind in kinds]

    async def scan(self, batch: Sequence[ScanInput]) -> list[ScanResult]:
        deadline = time.monotonic() + self.config.timeout
        out = []
        for item in batch:
            findings = find(self._rules, item, all_views=self.config.normalize, deadline=deadline)
            kinds = sorted({f.rule for f in complete(findings)})
            out.append(
                self.result(
                    item,
                    score=1.0 if kinds else 0.0,
                    findings=findings,
                    categories=kinds,
                    reason=f"credentials found: {', '.join(kinds)}" if kinds else "",
                )
            )
        return out

    def replacement(self, finding: Finding) -> str:
        return self.config.redact_with.replace("{kind}", finding.rule)
