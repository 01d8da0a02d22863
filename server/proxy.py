"""One guarded completion: what the pipeline scans, what the upstream gets, and the answer built from both.

The pipeline applies the policy (one code path: :meth:`guardrails.Pipeline.arun` and ``stream``); this module only
translates. What is scanned:

- every message's text (``developer`` counts as ``system``, legacy ``function`` as ``tool``); tool results are
  third-party content, so a policy's ``third_party`` thresholds apply; image parts pass unscanned;
- the response's text and every tool call's arguments: they are appended to the text the output scanners see, each
  behind a marker line carrying a per-request nonce, so a redaction inside arguments lands in the arguments and a
  block drops the calls.

Input redactions reach the upstream (the message's text is replaced); output redactions reach the client.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from guardrails import Decision, Pipeline, Result, Stage
from server.auth import Principal
from server.errors import ContentFiltered, UpstreamError
from server.upstream import Kind, Upstream

__all__ = ["Call", "guard_messages", "pack_output", "unpack_output", "summary", "complete"]

_ROLE = {"developer": "system", "function": "tool"}


@dataclass(slots=True)
class Call:
    """One request on its way through: the body for the upstream and the messages the pipeline scans."""

    kind: Kind
    body: dict[str, Any]
    principal: Principal
    request_id: str
    endpoint: str
    scanned: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.scanned = guard_messages(self.kind, self.body)

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {  # the caller's request id: the response header finds the audit record
            "route": self.principal.route,
            "metadata": {"tenant": self.principal.tenant, "key_id": self.principal.key_id, "endpoint": self.endpoint}
            | ({"user": str(self.body["user"])} if self.body.get("user") else {}),
            "request_id": self.request_id,
        }

    def upstream_body(self, redacted: Any) -> dict[str, Any]:
        """The body for the upstream, with the pipeline's input redactions applied."""
        if not isinstance(redacted, list) or len(redacted) != len(self.scanned):
            return self.body
        pairs = enumerate(zip(redacted, self.scanned, strict=True))
        changed = {i: m["content"] for i, (m, seen) in pairs if m["content"] != seen["content"]}
        if not changed:
            return self.body
        body = dict(self.body)
        if self.kind == "text":
            body["prompt"] = changed.get(0, self.scanned[0]["content"])
            if 1 in changed:
                body["suffix"] = changed[1]
            return body
        messages = list(body["messages"])
        for i, text in changed.items():
            message = dict(messages[i])
            content = message.get("content")
            if isinstance(content, list):  # keep image parts; the text parts become the one redacted text
                others = [p for p in content if not (isinstance(p, Mapping) and p.get("type") == "text")]
                message["content"] = [{"type": "text", "text": text}, *others]
            else:
                message["content"] = text
            messages[i] = message
        body["messages"] = messages
        return body


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text") or "") for p in content if isinstance(p, Mapping) and p.get("type") == "text"
        )
    return ""


def guard_messages(kind: Kind, body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What the input scanners see: role and text of every turn (a request may mark a turn third-party, not unmark)."""
    if kind == "text":
        prompt = body["prompt"]
        out = [{"role": "user", "content": prompt if isinstance(prompt, str) else prompt[0]}]
        if body.get("suffix"):
            out.append({"role": "user", "content": body["suffix"]})
        return out
    out = []
    for m in body["messages"]:
        item: dict[str, Any] = {"role": _ROLE.get(m["role"], m["role"]), "content": _text_of(m.get("content"))}
        if m.get("third_party") is True:
            item["third_party"] = True
        out.append(item)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The output text: content plus tool-call arguments behind marker lines


def marker(nonce: str, index: int) -> str:
    return f"\n\n[tool call {nonce}.{index}]\n"


def pack_output(content: str, tool_calls: Sequence[Mapping[str, Any]] | None) -> tuple[str, str | None]:
    """The text the output scanners see, and the nonce of its markers (None without tool calls)."""
    if not tool_calls:
        return content, None
    nonce = secrets.token_hex(6)
    parts = [content]
    for i, call in enumerate(tool_calls):
        function = call.get("function") or {}
        parts.append(marker(nonce, i) + str(function.get("arguments") or ""))
    return "".join(parts), nonce


def unpack_output(text: str, nonce: str | None, count: int) -> tuple[str, list[str]] | None:
    """Content and each call's arguments back from (possibly redacted) packed text; None if it no longer splits."""
    if nonce is None:
        return text, []
    pieces = re.split(r"\n\n\[tool call " + re.escape(nonce) + r"\.(\d+)\]\n", text)
    content, rest = pieces[0], pieces[1:]
    if len(rest) != 2 * count or [int(i) for i in rest[0::2]] != list(range(count)):
        return None
    return content, list(rest[1::2])


# ---------------------------------------------------------------------------------------------------------------
# Answers


def summary(result: Result, *, scores: bool = False) -> dict[str, Any]:
    """What a client learns about a decision: id, decision, policy, and the scanners that fired (no content)."""
    fired = []
    for verdict in result.verdicts:
        for r in verdict.results:
            if r.decision is not Decision.ALLOW or r.status.value in ("error", "timeout"):
                item = {
                    "stage": verdict.stage.value,
                    "scanner": r.scanner_id,
                    "decision": r.decision.value,
                    "categories": list(r.categories),
                    "status": r.status.value,
                    "enforced": verdict.enforced,
                }
                if scores:
                    item["score"] = round(r.score, 4)
                fired.append(item)
    blocked = result.blocked_stage
    return {
        "request_id": result.request_id,
        "decision": result.decision.value,
        "blocked_stage": blocked.value if blocked else None,
        "policy": {"name": result.policy_name, "hash": result.policy_hash, "route": result.route},
        "results": fired,
    }


def input_blocked(result: Result) -> ContentFiltered:
    """The HTTP 400 of a blocked prompt; ``.result`` keeps the pipeline's result (for metrics)."""
    error = ContentFiltered(
        "the prompt was blocked by the content policy: " + (result.text or "request refused"),
        extra={"guardrails": summary(result)},
    )
    error.result = result  # type: ignore[attr-defined]
    return error


def _first_choice(response: Mapping[str, Any]) -> dict[str, Any]:
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamError("the upstream answered without choices", code="upstream_error")
    return choices[0]


def _output_of(kind: Kind, choice: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    if kind == "text":
        return str(choice.get("text") or ""), []
    message = choice.get("message") or {}
    return _text_of(message.get("content")), list(message.get("tool_calls") or [])


async def complete(pipeline: Pipeline, upstream: Upstream, call: Call) -> tuple[Result, dict[str, Any]]:
    """Guard one non-streamed completion: the pipeline's result and the response body for the client."""
    got: dict[str, Any] = {}

    async def generate(prompt: Any) -> str:
        response = await upstream.complete(call.kind, call.upstream_body(prompt))
        text, tools = _output_of(call.kind, _first_choice(response))
        packed, nonce = pack_output(text, tools)
        got.update(response=response, nonce=nonce, tools=tools)
        return packed

    result = await pipeline.arun(call.scanned, generate=generate, **call.pipeline_kwargs())
    if result.blocked_stage is Stage.INPUT:
        raise input_blocked(result)
    response = dict(got["response"])
    choice = dict(_first_choice(response))
    output = result.verdict(Stage.OUTPUT)
    decision = output.effective if output is not None else Decision.ALLOW
    if decision is Decision.BLOCK:
        _refuse(call.kind, choice, result.text)
    elif decision is Decision.REDACT:
        split = unpack_output(result.text, got["nonce"], len(got["tools"]))
        if split is None:  # a redaction crossed a marker: fail closed
            _refuse(call.kind, choice, pipeline.policy.refusal.output)
        else:
            _apply(call.kind, choice, got["tools"], *split)
    if decision is not Decision.ALLOW:
        choice["logprobs"] = None  # token logprobs would spell out what was redacted or refused
    response["choices"] = [choice]
    response["id"] = ("chatcmpl-" if call.kind == "chat" else "cmpl-") + result.request_id
    response["guardrails"] = summary(result)
    return result, response


def _refuse(kind: Kind, choice: dict[str, Any], refusal: str) -> None:
    choice["finish_reason"] = "content_filter"
    if kind == "text":
        choice["text"] = refusal
    else:
        choice["message"] = {"role": "assistant", "content": refusal}


def _apply(kind: Kind, choice: dict[str, Any], tools: list[dict[str, Any]], content: str, args: list[str]) -> None:
    if kind == "text":
        choice["text"] = content
        return
    message = dict(choice.get("message") or {})
    if message.get("content") is not None or not tools:
        message["content"] = content
    if tools:
        message["tool_calls"] = [
            {**call, "function": {**(call.get("function") or {}), "arguments": a}}
            for call, a in zip(tools, args, strict=False)
        ]
    choice["message"] = message
