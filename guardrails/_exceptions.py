"""Every error the library raises on purpose.

Exception tree::

    GuardrailError                  base of everything below; catch this to catch them all
    ├── PolicyError                 a policy file is missing, is not valid YAML, or does not validate;
    │                               the message names the file, line, column, key and what is allowed
    ├── ScannerError                a scanner cannot be built, or broke its contract while scanning
    │                               (inside a request this becomes a result with status error, not a raise)
    └── Blocked                     raised only when the caller passes ``raise_on_block=True``;
                                    ``.result`` holds the full :class:`~guardrails.Result`

A blocked request is a normal outcome: by default it returns a ``Result`` whose ``blocked`` is true and whose
``text`` is the policy's refusal. Nothing raises for it unless asked to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from guardrails.types import Result

__all__ = ["GuardrailError", "PolicyError", "ScannerError", "Blocked"]


class GuardrailError(Exception):
    """Base class of every error raised by guardrails."""


class PolicyError(GuardrailError):
    """A policy could not be loaded: the message says where and how to fix it."""


class ScannerError(GuardrailError):
    """A scanner could not be built, or returned something that breaks the scanner contract."""


class Blocked(GuardrailError):
    """The request was blocked and the caller asked for an exception (``raise_on_block=True``)."""

    def __init__(self, result: Result) -> None:
        self.result = result
        super().__init__(f"request {result.request_id} blocked at {result.blocked_stage}: {result.reason}")
