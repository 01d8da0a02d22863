"""Where completions come from, behind one small protocol.

:class:`Upstream` speaks OpenAI's wire format as dicts: ``complete(kind, body)`` returns a ``chat.completion`` (kind
``"chat"``) or ``text_completion`` (kind ``"text"``) object; ``stream(kind, body)`` is an async context manager that
opens the stream (raising before anything is sent when the upstream is down, slow or refuses) and yields its chunk
objects. Failures are :mod:`server.errors` exceptions: :class:`~server.errors.UpstreamError` (502),
:class:`~server.errors.UpstreamTimeout` (504), :class:`~server.errors.UpstreamRejected` (the upstream's own 4xx).

- :class:`HTTPUpstream`: any OpenAI-compatible server (vLLM, llama.cpp server, Ollama, a hosted API) through one
  pooled keep-alive HTTP/1.1 client with timeouts (:mod:`server.http1`). Its URL comes from configuration only.
- :class:`TextGeneratorUpstream`: anything that generates text (the embedded engine, ``guardrails.testing
  .FakeGenerator``): it is given ``generate`` and ``stream`` callables and wraps their text in OpenAI's objects.
"""

from __future__ import annotations

import inspect
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal, Protocol

from server import codec, http1
from server.deadlines import Deadlines
from server.errors import RateLimited, ServerError, UpstreamError, UpstreamRejected, UpstreamTimeout

__all__ = ["Upstream", "Kind", "HTTPUpstream", "TextGeneratorUpstream", "engine_upstream"]

Kind = Literal["chat", "text"]
_PATHS = {"chat": "chat/completions", "text": "completions"}
_MESSAGE_MAX = 300


class Upstream(Protocol):
    name: str

    async def models(self) -> list[dict[str, Any]]: ...

    async def complete(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]: ...

    def stream(
        self, kind: Kind, body: dict[str, Any]
    ) -> AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]: ...

    async def ready(self) -> str | None:
        """None when it can serve; otherwise why not."""
        ...

    async def aclose(self) -> None: ...


def _upstream_message(status: int, reason: str, body: bytes) -> str:
    try:
        error = json.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    text = str(message or reason or "")[:_MESSAGE_MAX]
    return f"upstream answered {status}" + (f": {text}" if text else "")


def _status_error(status: int, reason: str, headers: dict[str, str], body: bytes) -> ServerError:
    message = _upstream_message(status, reason, body)
    if status == 429:
        retry = headers.get("retry-after", "1")
        return RateLimited(float(retry) if retry.replace(".", "", 1).isdigit() else 1.0)
    if status in (401, 403):
        return UpstreamError(f"{message} (the proxy's upstream credentials were refused)", code="upstream_error")
    if 400 <= status < 500:
        return UpstreamRejected(status, message)
    return UpstreamError(message, code="upstream_error")


def _transport_error(exc: BaseException, timeout: float) -> ServerError:
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"the upstream did not answer within {timeout:g}s")
    if isinstance(exc, http1.ConnectError):
        return UpstreamError("the upstream is unreachable (connection failed)")
    return UpstreamError(f"the upstream connection failed: {exc}", code="upstream_error")


class HTTPUpstream:
    """An OpenAI-compatible server at ``base_url`` (ending in ``/v1``), over one keep-alive connection pool.

    ``timeout`` bounds a whole non-streamed answer, the wait for a stream's first bytes, and each wait between
    streamed chunks, each to within ``min(timeout / 10, 0.05)`` seconds (:mod:`server.deadlines`);
    ``connect_timeout`` bounds opening a connection.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        max_connections: int = 256,
    ) -> None:
        self.name = base_url
        self.timeout = timeout
        self._deadlines = Deadlines(resolution=min(0.05, timeout / 10))  # one timer for all waits, not one each
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._pool = http1.Pool(
            base_url, max_connections=max_connections, connect_timeout=connect_timeout, headers=headers
        )

    async def models(self) -> list[dict[str, Any]]:
        data = await self._request("GET", "models", None)
        return list(data.get("data") or [])

    async def complete(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", _PATHS[kind], codec.dumps({**body, "stream": False}))

    async def _request(self, method: str, path: str, body: bytes | None) -> dict[str, Any]:
        try:
            async with self._deadlines.within(self.timeout):  # the whole answer, not only each read
                response = await self._pool.request(method, path, body)
        except (http1.HTTPError, TimeoutError) as exc:
            raise _transport_error(exc, self.timeout) from None
        if response.status != 200:
            raise _status_error(response.status, response.reason, response.headers, response.body)
        try:
            data = codec.loads(response.body)
        except ValueError:
            raise UpstreamError("the upstream answered something that is not JSON", code="upstream_error") from None
        if not isinstance(data, dict):
            raise UpstreamError("the upstream answered JSON that is not an object", code="upstream_error")
        return data

    @asynccontextmanager
    async def stream(self, kind: Kind, body: dict[str, Any]) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        try:
            async with self._deadlines.within(self.timeout):
                response = await self._pool.stream("POST", _PATHS[kind], codec.dumps({**body, "stream": True}))
        except (http1.HTTPError, TimeoutError) as exc:
            raise _transport_error(exc, self.timeout) from None
        try:
            if response.status != 200:
                try:
                    async with self._deadlines.within(self.timeout):
                        data = await response.read()
                except (http1.HTTPError, TimeoutError):
                    data = b""
                raise _status_error(response.status, response.reason, response.headers, data)
            yield self._events(response)
        finally:
            await response.aclose()  # also when the client went away: the upstream sees the connection close

    async def _events(self, response: http1.StreamedResponse) -> AsyncIterator[dict[str, Any]]:
        lines = response.lines()
        try:
            while True:
                try:
                    async with self._deadlines.within(self.timeout):  # between chunks
                        line = await anext(lines)
                except StopAsyncIteration:
                    return
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    event = codec.loads(data)
                except ValueError:
                    raise UpstreamError("the upstream sent an event that is not JSON", code="upstream_error") from None
                if isinstance(event, dict) and event.get("error"):
                    error = event["error"]
                    message = error.get("message") if isinstance(error, dict) else str(error)
                    raise UpstreamError(
                        f"the upstream failed mid-stream: {str(message)[:_MESSAGE_MAX]}", code="upstream_error"
                    )
                yield event
        except (http1.HTTPError, TimeoutError) as exc:
            raise _transport_error(exc, self.timeout) from None
        finally:
            await lines.aclose()

    async def ready(self) -> str | None:
        try:
            await self.models()
        except ServerError as exc:
            return exc.message
        return None

    async def aclose(self) -> None:
        await self._pool.aclose()


# ---------------------------------------------------------------------------------------------------------------
# Text generators (the embedded engine, test doubles)


def _completion_id(kind: Kind) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex


def _choice(kind: Kind, text: str, finish: str | None, *, delta: bool) -> dict[str, Any]:
    if kind == "text":
        return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    key = "delta" if delta else "message"
    body: dict[str, Any] = {"content": text} if delta else {"role": "assistant", "content": text}
    return {"index": 0, key: body, "finish_reason": finish, "logprobs": None}


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class TextGeneratorUpstream:
    """Wraps text generation in OpenAI's objects.

    ``generate(prompt, params)`` returns the text (or an awaitable of it); ``stream(prompt, params)`` returns an
    async iterator of text pieces. ``prompt`` is the list of chat messages (dicts) or, for kind ``"text"``, the
    prompt string; ``params`` holds the request's other parameters (max_tokens, temperature, stop, ...).
    """

    def __init__(
        self,
        *,
        generate: Callable[[Any, dict[str, Any]], Any],
        stream: Callable[[Any, dict[str, Any]], AsyncIterator[str]],
        model: str,
        close: Callable[[], Any] | None = None,
    ) -> None:
        self.name = f"embedded:{model}"
        self.model = model
        self._generate = generate
        self._stream = stream
        self._close = close

    @staticmethod
    def _split(kind: Kind, body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        key = "messages" if kind == "chat" else "prompt"
        params = {k: v for k, v in body.items() if k not in (key, "model", "stream", "stream_options")}
        return body[key], params

    async def models(self) -> list[dict[str, Any]]:
        return [{"id": self.model, "object": "model", "created": 0, "owned_by": "guardrails"}]

    async def complete(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        prompt, params = self._split(kind, body)
        text = await _maybe_await(self._generate(prompt, params))
        text = getattr(text, "text", text)
        return {
            "id": _completion_id(kind),
            "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [_choice(kind, str(text), "stop", delta=False)],
        }

    @asynccontextmanager
    async def stream(self, kind: Kind, body: dict[str, Any]) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        prompt, params = self._split(kind, body)
        pieces = self._stream(prompt, params)
        try:
            yield self._chunks(kind, pieces)
        finally:
            aclose = getattr(pieces, "aclose", None)
            if aclose is not None:
                await aclose()  # stops generation when the client goes away

    async def _chunks(self, kind: Kind, pieces: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
        ident, created = _completion_id(kind), int(time.time())
        kind_name = "chat.completion.chunk" if kind == "chat" else "text_completion"
        async for piece in pieces:
            piece = getattr(piece, "text", piece)
            yield {
                "id": ident,
                "object": kind_name,
                "created": created,
                "model": self.model,
                "choices": [_choice(kind, str(piece), None, delta=True)],
            }
        yield {
            "id": ident,
            "object": kind_name,
            "created": created,
            "model": self.model,
            "choices": [_choice(kind, "", "stop", delta=True)],
        }

    async def ready(self) -> str | None:
        return None

    async def aclose(self) -> None:
        if self._close is not None:
            await _maybe_await(self._close())


_ENGINE_PARAMS = ("max_tokens", "temperature", "top_p", "stop", "seed")


def _engine_params(params: dict[str, Any]) -> dict[str, Any]:
    """The sampling parameters the engine takes (OpenAI's others, tools and the like, are not its business)."""
    if params.get("max_tokens") is None and params.get("max_completion_tokens") is not None:
        params = {**params, "max_tokens": params["max_completion_tokens"]}
    return {k: params[k] for k in _ENGINE_PARAMS if params.get(k) is not None}


def engine_upstream(path: str, *, model: str | None = None) -> TextGeneratorUpstream:
    """The embedded generation engine (``guardrails.engine``) as an upstream: loads the checkpoint once, here."""
    try:
        from guardrails.engine import Engine  # type: ignore[import-not-found]
    except ImportError as exc:
        raise RuntimeError(
            f"the embedded engine is not available in this installation ({exc}); "
            "serve an OpenAI-compatible server instead with --upstream URL"
        ) from None
    engine = Engine.from_pretrained(path)
    return TextGeneratorUpstream(
        generate=lambda prompt, params: engine.generate(prompt, **_engine_params(params)),
        stream=lambda prompt, params: engine.stream(prompt, **_engine_params(params)),
        model=model or getattr(engine, "name", None) or path.rstrip("/").rsplit("/", 1)[-1],
        close=getattr(engine, "aclose", None) or getattr(engine, "close", None),
    )
