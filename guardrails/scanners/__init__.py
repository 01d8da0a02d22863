"""Scanners: one type per module, registered by the name policies use in ``type:``.

Built-in types: ``invisible_text``, ``regex``, ``secrets`` (no model needed), ``code_shield`` (static analysis of
generated code: rules, semgrep and bandit), ``prompt_guard`` and ``llama_guard``
(Meta's checkpoints, local with the ``models`` extra, or Llama Guard on a remote server), and ``static`` (a test double
from :mod:`guardrails.testing`). Register your own with :func:`register` before loading a policy that names it.
"""

from guardrails.scanners.base import ScanInput, Scanner, ScannerConfig
from guardrails.scanners.registry import register, scanner_class, scanner_types

# Built-in types register themselves on import.
from guardrails.scanners import (  # noqa: E402,F401  isort: skip
    cascade,
    code_shield,
    invisible_text,
    llama_guard,
    prompt_guard,
    regex,
    secrets,
)
from guardrails import testing  # noqa: E402,F401  isort: skip

__all__ = ["Scanner", "ScannerConfig", "ScanInput", "register", "scanner_class", "scanner_types"]
