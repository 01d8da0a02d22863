"""guardrails: safety middleware around any LLM generate call.

from guardrails import Pipeline

pipe = Pipeline.from_policy("default")
result = pipe.run("Summarise this email ...", generate=my_generate)
result.text, result.blocked, result.decision, result.verdicts, result.request_id
"""

from guardrails._exceptions import Blocked, GuardrailError, PolicyError, ScannerError
from guardrails.pipeline import GuardedStream, Pipeline
from guardrails.policy import Policy, load_policy
from guardrails.scanners import ScanInput, Scanner, ScannerConfig, register
from guardrails.types import Decision, Finding, Message, Result, Role, ScanResult, Stage, Status, Verdict

__version__ = "0.1.0"

__all__ = [
    "Pipeline",
    "GuardedStream",
    "Policy",
    "load_policy",
    "Message",
    "Role",
    "Stage",
    "Decision",
    "Status",
    "Finding",
    "ScanResult",
    "Verdict",
    "Result",
    "Scanner",
    "ScannerConfig",
    "ScanInput",
    "register",
    "GuardrailError",
    "PolicyError",
    "ScannerError",
    "Blocked",
    "__version__",
]
