"""Streamed completions, moderated as they arrive, in one of two modes.

``buffered`` (default): the client gets only text the pipeline released, i.e. text its output scanners have seen
(:class:`guardrails.streaming.WindowedModeration`: windows of ``check_every`` new characters with ``overlap``
characters of context and a ``holdback``); no character a scanner blocks is ever sent, and redactions apply.

``async``: every piece is sent the moment the upstream sends it, and the same pipeline stream moderates a copy; a
block cuts the stream at the next window, so at most ``check_every`` characters plus one upstream chunk follow the
end of the offending text. Redactions cannot apply to text already sent (they are recorded); use buffered mode
where credentials must never leave.

Either way a blocked stream ends with a chunk whose delta is the policy's refusal and whose ``finish_reason`` is
``content_filter`` (with a ``guardrails`` object naming the request id and scanners), then ``data: [DONE]``.
Tool-call deltas are collected, scanned with the text (see :mod:`server.proxy`) and sent whole once the verdict is
in. A blocked prompt never opens a stream: it is the HTTP 400 of the non-streamed API. Upstream failures before the
first byte are JSON errors (502/504); later ones end the stream with an ``error`` event. When the client goes away
the pipeline stream is cancelled, which closes the upstream request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from guardrails import Pipeline, Result, Stage
from server import codec
from server.errors import ServerError, UpstreamError, error_body
from server.metrics import Metrics
from server.proxy import Call, input_blocked, marker, pack_output, summary, unpack_output
from server.settings import StreamMode
from server.upstream import Upstream

__all__ = ["GuardedStream", "SSEResponse"]

log = logging.getLogger("guardrails.server")

_TOOL_PREFIX = "\n\n[tool call "


def _sse(obj: Any) -> bytes:
    return b"data: " + codec.dumps(obj) + b"\n\n"


_DONE = b"data: [DONE]\n\n"


class _Splitter:
    """Separates released text into content and the tool-call section that starts at the nonce's first marker."""

    def __init__(self) -> None:
        self.buffer = ""
        self.tools: str | None = None  # the tool section, once its marker was seen

    def feed(self, text: str, nonce: str | None) -> str:
        """Content that is safe to emit now (text that might begin a marker stays buffered)."""
        if self.tools is not None:
            self.tools += text
            return ""
        self.buffer += text
        if nonce is not None:
            at = self.buffer.find(marker(nonce, 0))
            if at >= 0:
                content, self.tools = self.buffer[:at], self.buffer[at:]
                self.buffer = ""
                return content
        head = marker(nonce, 0) if nonce is not None else _TOOL_PREFIX
        keep = next((k for k in range(min(len(head), len(self.buffer)), 0, -1) if head.startswith(self.buffer[-k:])), 0)
        out, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep :]
        return out

    def finish(self, nonce: str | None) -> str:
        out = self.feed("", nonce)
        rest, self.buffer = self.buffer, ""
        return out + rest


class GuardedStream:
    """One streamed completion: the pipeline stream runs in a task and hands events to the response body."""

    def __init__(
        self, pipeline: Pipeline, upstream: Upstream, call: Call, *, mode: StreamMode, metrics: Metrics
    ) -> None:
        self.pipeline, self.upstream, self.call, self.mode, self.metrics = pipeline, upstream, call, mode, metrics
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=64)
        self.tools: dict[int, dict[str, Any]] = {}
        self.nonce: str | None = None
        self.finish_reason: str | None = None
        self.usage: Any = None
        self.model = str(call.body.get("model", ""))
        self.created = int(time.time())
        self.output_chars = 0
        self.output_chunks = 0
        self.result: Result | None = None
        self._stream: Any = None
        self._task: asyncio.Task | None = None

    # -- the producer side: upstream -> pipeline -> events --------------------------------------------------------

    async def _generate(self, prompt: Any) -> AsyncIterator[str]:
        kind = self.call.kind
        async with self.upstream.stream(kind, self.call.upstream_body(prompt)) as chunks:
            await self.events.put(("opened", None))
            async for chunk in chunks:
                self.model = str(chunk.get("model") or self.model)
                if chunk.get("usage"):
                    self.usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                        continue
                    if choice.get("finish_reason"):
                        self.finish_reason = str(choice["finish_reason"])
                    if kind == "text":
                        text = choice.get("text") or ""
                    else:
                        delta = choice.get("delta") or {}
                        text = delta.get("content") or ""
                        for call in delta.get("tool_calls") or ():
                            self._collect_tool(call)
                    if text:
                        self.output_chars += len(text)
                        self.output_chunks += 1
                        if self.mode == "async":
                            await self.events.put(("text", text))
                        yield text
        if self.tools:
            section, self.nonce = pack_output("", [self.tools[i] for i in sorted(self.tools)])
            yield section

    def _collect_tool(self, delta: dict[str, Any]) -> None:
        index = int(delta.get("index", len(self.tools)))
        call = self.tools.setdefault(index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        if delta.get("id"):
            call["id"] = delta["id"]
        if delta.get("type"):
            call["type"] = delta["type"]
        function = delta.get("function") or {}
        if function.get("name"):
            call["function"]["name"] += function["name"]
        if function.get("arguments"):
            call["function"]["arguments"] += function["arguments"]

    async def _drive(self) -> None:
        self._stream = stream = self.pipeline.stream(
            self.call.scanned, generate=self._generate, **self.call.pipeline_kwargs()
        )
        blocked = False
        try:
            async for piece in stream:
                if stream.result is not None and stream.result.blocked:
                    blocked = True  # the pipeline's last piece is the refusal; the stream ends after it
                    await self.events.put(("blocked", stream.result))
                elif not blocked:
                    await self.events.put(("released", piece))
            if not blocked:
                await self.events.put(("end", stream.result))
        except ServerError as exc:
            await self.events.put(("error", exc))
        except Exception as exc:  # noqa: BLE001 - the client gets an error event, the log the type only
            log.error("stream %s failed: %s", self.call.request_id, type(exc).__name__)
            await self.events.put(("error", UpstreamError("the stream failed inside the proxy", code="proxy_error")))

    # -- the consumer side: events -> server-sent events ----------------------------------------------------------

    async def start(self) -> tuple[str, Any]:
        """Run until the first event: "opened" (stream), "blocked" (a blocked prompt raises) or "error" (raises)."""
        self._task = asyncio.get_running_loop().create_task(self._drive())
        kind, value = await self.events.get()
        if kind == "blocked" and value.blocked_stage is Stage.INPUT:
            await self.aclose()
            raise input_blocked(value)  # observed by the error handler
        if kind == "error":
            await self.aclose()
            raise value
        return kind, value

    def _chunk(self, text: str | None = None, *, finish: str | None = None, **extra: Any) -> dict[str, Any]:
        if self.call.kind == "text":
            choice: dict[str, Any] = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            obj = "text_completion"
        else:
            delta = extra.pop("delta", None) or ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            obj = "chat.completion.chunk"
        ident = ("chatcmpl-" if self.call.kind == "chat" else "cmpl-") + self.call.request_id
        return {"id": ident, "object": obj, "created": self.created, "model": self.model, "choices": [choice], **extra}

    async def body(self, first: tuple[str, Any]) -> AsyncIterator[bytes]:
        splitter = _Splitter()
        try:
            if self.call.kind == "chat":
                yield _sse(self._chunk(delta={"role": "assistant", "content": ""}))
            event = first
            while True:
                kind, value = event
                if kind in ("text", "released"):
                    content = splitter.feed(value, self.nonce) if kind == "released" else value
                    if kind == "released" and self.mode == "async":
                        content = ""  # already sent raw; only the tool section is taken from released text
                    if content:
                        yield _sse(self._chunk(content))
                elif kind == "blocked":
                    yield _sse(self._chunk(value.text, finish="content_filter", guardrails=summary(value)))
                    yield _DONE
                    self._observe(value)
                    return
                elif kind == "end":
                    async for data in self._end(splitter, value):
                        yield data
                    return
                elif kind == "error":
                    yield _sse(error_body(value))
                    return
                event = await self.events.get()
        finally:
            await self.aclose()

    async def _end(self, splitter: _Splitter, result: Result) -> AsyncIterator[bytes]:
        content = splitter.finish(self.nonce)
        if content and self.mode == "buffered":
            yield _sse(self._chunk(content))
        finish = self.finish_reason or "stop"
        if self.tools:
            ordered = [self.tools[i] for i in sorted(self.tools)]
            split = unpack_output(splitter.tools or "", self.nonce, len(ordered))
            if split is None:  # the tool section no longer splits after redaction: fail closed
                yield _sse(
                    self._chunk(
                        self.pipeline.policy.refusal.output, finish="content_filter", guardrails=summary(result)
                    )
                )
                yield _DONE
                self._observe(result)
                return
            calls = [
                {
                    "index": i,
                    "id": call["id"],
                    "type": call["type"],
                    "function": {"name": call["function"]["name"], "arguments": args},
                }
                for i, (call, args) in enumerate(zip(ordered, split[1], strict=False))
            ]
            yield _sse(self._chunk(delta={"tool_calls": calls}))
        yield _sse(self._chunk(finish=finish, guardrails=summary(result)))
        if self.usage is not None and (self.call.body.get("stream_options") or {}).get("include_usage"):
            usage_chunk = self._chunk()
            usage_chunk["choices"], usage_chunk["usage"] = [], self.usage
            yield _sse(usage_chunk)
        yield _DONE
        self._observe(result)

    def _observe(self, result: Result | None) -> None:
        self.result = result
        self.metrics.observe(result)
        self.metrics.stream_output.inc(self.output_chars)
        self.metrics.stream_chunks.inc(self.output_chunks)
        if self._stream is not None:
            self.metrics.stream_guard.inc(self._stream.scanned_chars)

    async def aclose(self) -> None:
        """Stop the pipeline stream (and with it the upstream request) if it is still running."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise


class SSEResponse(StreamingResponse):
    """Server-sent events that stop (and close their body iterator) as soon as the client disconnects."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.ensure_future(self.stream_response(send))

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            stream.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await stream
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
        except OSError:
            pass  # the client went away while we were writing
        finally:
            watcher.cancel()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
