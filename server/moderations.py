"""``/v1/moderations`` in OpenAI's response shape, from a policy's input stage.

Our hazard codes (Llama Guard's S1-S14, the MLCommons taxonomy) map onto OpenAI's categories as below; a category
is flagged when a scanner that fired (its decision is not allow) reported a code that maps to it, and its score is
the highest such scanner score. Codes without an OpenAI counterpart (S6 specialised advice, S7 privacy, S8
intellectual property, S13 elections) and non-hazard findings (prompt injection, credentials, hidden text) still set
``flagged`` when they block, and appear under ``guardrails``: the raw codes with scores, every scanner's decision and
the request id of the audit record.
"""

from __future__ import annotations

from typing import Any

from guardrails import Decision, Result
from server.proxy import summary

__all__ = ["OPENAI_CATEGORIES", "S_CODE_CATEGORIES", "moderation_result"]

OPENAI_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)

S_CODE_CATEGORIES: dict[str, tuple[str, ...]] = {
    "S1": ("violence", "illicit/violent"),  # violent crimes
    "S2": ("illicit",),  # non-violent crimes
    "S3": ("sexual", "illicit"),  # sex-related crimes
    "S4": ("sexual/minors",),  # child sexual exploitation
    "S5": ("harassment",),  # defamation
    "S6": (),  # specialised advice
    "S7": (),  # privacy
    "S8": (),  # intellectual property
    "S9": ("illicit/violent", "violence"),  # indiscriminate weapons
    "S10": ("hate",),  # hate
    "S11": ("self-harm", "self-harm/intent", "self-harm/instructions"),  # suicide and self-harm
    "S12": ("sexual",),  # sexual content
    "S13": (),  # elections
    "S14": ("illicit",),  # code interpreter abuse
}


def moderation_result(result: Result) -> dict[str, Any]:
    flags = dict.fromkeys(OPENAI_CATEGORIES, False)
    scores = dict.fromkeys(OPENAI_CATEGORIES, 0.0)
    codes: dict[str, float] = {}
    for verdict in result.verdicts:
        for r in verdict.results:
            for category in r.categories:
                if category in S_CODE_CATEGORIES:
                    codes[category] = max(codes.get(category, 0.0), r.score)
                    for name in S_CODE_CATEGORIES[category]:
                        scores[name] = max(scores[name], r.score)
                        if r.decision is not Decision.ALLOW:
                            flags[name] = True
    applied = {name: (["text"] if flags[name] else []) for name in OPENAI_CATEGORIES}
    info = summary(result, scores=True)
    info["s_codes"] = {code: round(score, 4) for code, score in sorted(codes.items(), key=lambda kv: int(kv[0][1:]))}
    return {
        "flagged": result.blocked or any(flags.values()),
        "categories": flags,
        "category_scores": {k: round(v, 6) for k, v in scores.items()},
        "category_applied_input_types": applied,
        "guardrails": info,
    }
