"""Test doubles for the sidecar, for our tests and yours: a stub OpenAI-compatible upstream and a server thread.

:func:`stub_upstream` is a small Starlette app that answers ``/v1/chat/completions``, ``/v1/completions`` and
``/v1/models`` in OpenAI's format, streamed or not. What it says is scripted: ``replies`` maps a substring of the last
user turn to the reply (default: ``"You said: <prompt>"``), and directives in the prompt shape the answer:
``[[sleep S]]`` waits S seconds first, ``[[delay S]]`` waits between streamed chunks, ``[[status N]]`` answers HTTP N,
``[[tool NAME]]`` answers with a call of tool NAME (arguments: the reply as JSON), ``[[long N]]`` answers N characters
of varied prose, ``[[pad N]]`` puts N characters of prose before the reply. ``GET /stub/stats`` reports requests
and streams started, finished and cancelled (a client that went away), so a test can see that a proxy cancelled its
upstream request.

:class:`ServerThread` runs any ASGI app under uvicorn on a free loopback port in a background thread.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

__all__ = ["stub_upstream", "ServerThread", "prose"]

_DIRECTIVE = re.compile(r"\[\[(sleep|delay|status|tool|long|pad) ([^\]]+)\]\]")
_WORDS = (
    "the river carried light across stones while an old ferry waited for morning passengers and a small dog slept "
    "under benches near the harbour where gulls argued about bread crumbs and fishermen mended their green nets"
).split()


def prose(n: int, seed: int = 0) -> str:
    """``n`` characters of harmless prose, different for each seed (words drawn at random, so no window repeats)."""
    rng = random.Random(seed)
    out, size = [], 0
    while size < n:
        word = rng.choice(_WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:n]


def _json(content: Any, status: int = 200) -> Response:
    return Response(json.dumps(content), status, media_type="application/json")  # ASCII, as the sidecar answers


def _last_user(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    for m in reversed(messages or []):
        if isinstance(m, Mapping) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
            return str(content or "")
    return ""


def stub_upstream(
    replies: Mapping[str, str] | None = None, *, chunk_size: int = 4, model: str = "stub-model"
) -> Starlette:
    """A scripted OpenAI-compatible upstream (see the module docstring)."""
    replies = dict(replies or {})
    stats = {"requests": 0, "streams_started": 0, "streams_finished": 0, "streams_cancelled": 0}
    counter = {"n": 0}

    def script(prompt: str) -> tuple[str, dict[str, str]]:
        directives = {k: v.strip() for k, v in _DIRECTIVE.findall(prompt)}
        clean = _DIRECTIVE.sub("", prompt).strip()
        pad = prose(int(directives["pad"]), seed=7) + " " if "pad" in directives else ""
        if "long" in directives:
            counter["n"] += 1
            return pad + prose(int(directives["long"]), seed=counter["n"]), directives
        for needle, reply in replies.items():
            if needle in clean:
                return pad + reply, directives
        return f"{pad}You said: {clean}", directives

    async def completion(request: Request) -> Response:
        stats["requests"] += 1
        kind = "chat" if request.url.path.endswith("chat/completions") else "text"
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _json({"error": {"message": "invalid JSON", "type": "invalid_request_error"}}, 400)
        prompt = _last_user(body.get("messages")) if kind == "chat" else str(body.get("prompt", ""))
        text, directives = script(prompt)
        if "sleep" in directives:
            await asyncio.sleep(float(directives["sleep"]))
        if "status" in directives:
            status = int(directives["status"])
            return _json({"error": {"message": f"stub status {status}", "type": "stub"}}, status)
        tool = directives.get("tool")
        ident = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:16]
        created = int(time.time())
        name = str(body.get("model") or model)
        if not body.get("stream"):
            if kind == "text":
                choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
            elif tool:
                call = {
                    "id": "call_" + uuid.uuid4().hex[:8],
                    "type": "function",
                    "function": {"name": tool, "arguments": json.dumps({"text": text})},
                }
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                    "finish_reason": "tool_calls",
                    "logprobs": None,
                }
            else:
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            usage = {
                "prompt_tokens": len(prompt) // 4,
                "completion_tokens": len(text) // 4,
                "total_tokens": (len(prompt) + len(text)) // 4,
            }
            return _json(
                {
                    "id": ident,
                    "object": "chat.completion" if kind == "chat" else "text_completion",
                    "created": created,
                    "model": name,
                    "choices": [choice],
                    "usage": usage,
                }
            )
        delay = float(directives.get("delay", 0))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any] | str, finish: str | None = None) -> bytes:
            if kind == "text":
                choice = {"index": 0, "text": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            obj = {
                "id": ident,
                "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                "created": created,
                "model": name,
                "choices": [choice],
            }
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        async def events() -> AsyncIterator[bytes]:
            stats["streams_started"] += 1
            try:
                if kind == "chat":
                    yield chunk({"role": "assistant", "content": ""})
                if tool:
                    args = json.dumps({"text": text})
                    yield chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": "call_1",
                                    "type": "function",
                                    "function": {"name": tool, "arguments": ""},
                                }
                            ]
                        }
                    )
                    for i in range(0, len(args), chunk_size):
                        yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + chunk_size]}}]})
                    yield chunk({}, "tool_calls")
                else:
                    for i in range(0, len(text), chunk_size):
                        if delay:
                            await asyncio.sleep(delay)
                        piece = text[i : i + chunk_size]
                        yield chunk(piece if kind == "text" else {"content": piece})
                    yield chunk("" if kind == "text" else {}, "stop")
                if include_usage:
                    usage = {
                        "prompt_tokens": len(prompt) // 4,
                        "completion_tokens": len(text) // 4,
                        "total_tokens": (len(prompt) + len(text)) // 4,
                    }
                    yield (
                        b"data: "
                        + json.dumps(
                            {
                                "id": ident,
                                "object": "chat.completion.chunk",
                                "created": created,
                                "model": name,
                                "choices": [],
                                "usage": usage,
                            }
                        ).encode()
                        + b"\n\n"
                    )
                yield b"data: [DONE]\n\n"
                stats["streams_finished"] += 1
            except (asyncio.CancelledError, GeneratorExit):
                stats["streams_cancelled"] += 1
                raise

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        return _json({"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "stub"}]})

    async def stub_stats(request: Request) -> Response:
        return _json(stats)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completion, methods=["POST"]),
            Route("/v1/completions", completion, methods=["POST"]),
            Route("/v1/models", models),
            Route("/stub/stats", stub_stats),
        ]
    )


class ServerThread:
    """``with ServerThread(app) as server: server.url`` -- uvicorn on 127.0.0.1, a free port, in a daemon thread."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        config.setdefault("log_level", "warning")
        config.setdefault("access_log", False)
        config.setdefault("lifespan", "on")
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **config))
        self.thread = threading.Thread(target=self._run, name="uvicorn", daemon=True)
        self.host = host
        self.port = port

    def _run(self) -> None:
        try:
            self.server.run()
        except SystemExit:  # uvicorn exits when the app fails to start; start() reports it
            pass

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server failed to start (see its log)")
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start in time")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
