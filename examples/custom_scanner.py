"""Write your own scanner type, register it, and use it from a policy.

Run: python examples/custom_scanner.py
"""

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from guardrails import Pipeline, ScanInput, Scanner, ScannerConfig, register
from guardrails.policy import policy_from_dict


class ShoutingConfig(ScannerConfig):
    type: Literal["shouting"]
    min_letters: int = Field(default=12, description="Ignore texts with fewer letters than this.")


@register
class ShoutingScanner(Scanner):
    """Flags text written mostly in capitals. Score: the share of letters that are capitals."""

    config_model = ShoutingConfig

    async def scan(self, batch: Sequence[ScanInput]):
        results = []
        for item in batch:
            letters = [c for c in item.text if c.isalpha()]
            if len(letters) < self.config.min_letters:
                results.append(self.result(item, score=0.0))
                continue
            share = sum(c.isupper() for c in letters) / len(letters)
            results.append(self.result(item, score=share, categories=["shouting"], reason=f"{share:.0%} capitals"))
        return results


policy = policy_from_dict(
    {
        "name": "no-shouting",
        "input": {"scanners": [{"id": "caps", "type": "shouting", "threshold": 0.8, "action": "warn"}]},
    }
)
pipe = Pipeline(policy, generate=lambda prompt: "noted")
for prompt in ["please summarise this report", "WHY IS NOTHING WORKING TODAY"]:
    result = pipe.run(prompt)
    print(f"{result.decision.value:>5}  {prompt!r}  {result.reason}")
