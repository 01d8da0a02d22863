"""The FastAPI app: ``create_app(settings)`` builds the whole stack once.

Layers, outermost first: :class:`_Edge` (request id on every response, body-size limit, metrics and one log line
per request, never content) -> FastAPI routing -> auth and rate limit (:func:`caller`) -> body validation -> the
endpoint, which hands the request to :mod:`server.proxy` / :mod:`server.streaming` and the pipeline. The two
generation endpoints take a shorter way: for a JSON-object body, :class:`_Edge` authorizes, validates and calls
:func:`generation` itself, skipping FastAPI's middleware, routing, dependency and body machinery (some 40% of the
proxy's own CPU per request in a profile under ``bench/proxy.py``); their FastAPI routes stay for the OpenAPI schema
and answer every other body (empty, not JSON, not an object) as before.

The pipeline and the upstream are built at start-up (lifespan) unless given, and then (``freeze_gc``) everything
alive is frozen out of the cyclic garbage collector's walks; shutdown closes the upstream and the pipeline, which
flushes the audit log (uvicorn first lets in-flight requests finish, up to ``shutdown_timeout``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guardrails import Pipeline, Stage
from guardrails.audit.settings import SQLiteSinkSettings
from server import codec
from server.auth import KeyRing, Principal, RateLimiter
from server.errors import (
    JSON,
    BadRequest,
    ContentFiltered,
    RateLimited,
    ServerError,
    TooLarge,
    Unauthorized,
    error_body,
    error_response,
)
from server.metrics import Metrics
from server.moderations import moderation_result
from server.proxy import Call, complete, guard_messages, summary
from server.schemas import ChatCompletionRequest, CompletionRequest, ModerationRequest, ScanRequest
from server.settings import Settings
from server.streaming import GuardedStream, SSEResponse
from server.upstream import HTTPUpstream, Upstream, engine_upstream

__all__ = ["create_app", "Services"]

log = logging.getLogger("guardrails.server")
# Metric labels name these paths; any other path is "other", so no request can invent label values.
_KNOWN_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/moderations",
        "/v1/guard/scan",
        "/healthz",
        "/readyz",
        "/metrics",
        "/audit",
    }
)


class Services:
    """Everything a request needs, built once: settings, keys, limiter, metrics, pipeline and upstream."""

    def __init__(self, settings: Settings, *, pipeline: Pipeline | None = None, upstream: Upstream | None = None):
        self.settings = settings
        entries = settings.key_entries()
        if not entries and not settings.allow_unauthenticated:
            raise ValueError(
                "no API keys configured: add key entries (GUARDRAILS_API_KEYS, GUARDRAILS_KEYS_FILE / --keys-file, "
                "or GUARDRAILS_API_KEY), or set allow_unauthenticated for local development"
            )
        self.keys = KeyRing(entries, settings)
        self.limiter = RateLimiter()
        self.metrics = Metrics()
        self.pipeline = pipeline  # type: ignore[assignment]
        self.upstream = upstream  # type: ignore[assignment]
        self._owned: list[str] = []
        self._ready: tuple[float, dict[str, Any]] | None = None
        self._frozen = False

    async def start(self) -> None:
        s = self.settings
        if self.pipeline is None:
            self.pipeline = await asyncio.to_thread(Pipeline.from_policy, s.policy)  # models load here, once
            self._owned.append("pipeline")
        unknown = self.keys.routes() - set(self.pipeline.routes)
        if unknown:
            raise ValueError(
                f"API keys name routes {sorted(unknown)} that policy {self.pipeline.policy.name!r} does not declare "
                f"(its routes: {sorted(self.pipeline.routes) or 'none'}); add them under `routes:` or fix the keys"
            )
        if self.upstream is None:
            if s.upstream_url:
                key = s.upstream_api_key.get_secret_value() if s.upstream_api_key else None
                self.upstream = HTTPUpstream(
                    s.upstream_url,
                    api_key=key,
                    timeout=s.upstream_timeout,
                    connect_timeout=s.connect_timeout,
                    max_connections=s.max_connections,
                )
            elif s.model_path:
                self.upstream = await asyncio.to_thread(engine_upstream, s.model_path, model=s.served_model)
            else:
                raise ValueError("no upstream: give --upstream URL (an OpenAI-compatible server) or --model PATH")
            self._owned.append("upstream")
        self.metrics.watch(self.pipeline)
        if s.freeze_gc:
            gc.collect()
            gc.freeze()
            self._frozen = True

    async def stop(self) -> None:
        if self._frozen:  # give a process that goes on (tests, an embedding app) its objects back
            gc.unfreeze()
            self._frozen = False
        if "upstream" in self._owned:
            await self.upstream.aclose()
        if "pipeline" in self._owned:
            await self.pipeline.aclose()  # flushes the audit log
        elif self.pipeline is not None and self.pipeline.audit is not None:
            await asyncio.to_thread(self.pipeline.audit.flush, self.settings.shutdown_timeout or 10.0)

    def audit_db(self) -> Path | None:
        if self.settings.audit_db is not None:
            return self.settings.audit_db
        for sink in self.pipeline.policy.audit.sinks if self.pipeline.policy.audit.record != "none" else ():
            if isinstance(sink, SQLiteSinkSettings):
                return Path(sink.path)
        return None

    def prepare(self, body: ChatCompletionRequest | CompletionRequest, kind: str) -> dict[str, Any]:
        """The body for the upstream, after the server's limits (a request can lower them, never raise them)."""
        s = self.settings
        payload = body.model_dump(exclude_unset=True, exclude_none=False)
        if kind == "chat" and len(payload["messages"]) > s.max_messages:
            raise BadRequest(
                f"{len(payload['messages'])} messages; this server takes at most {s.max_messages}",
                code="too_many_messages",
                param="messages",
            )
        if kind == "text" and isinstance(payload["prompt"], list) and len(payload["prompt"]) != 1:
            raise BadRequest("send one prompt per request (a list holds exactly one string)", param="prompt")
        asked = [payload[k] for k in ("max_tokens", "max_completion_tokens") if payload.get(k) is not None]
        if any(n > s.max_tokens for n in asked):
            raise BadRequest(
                f"max_tokens is at most {s.max_tokens} on this server", code="max_tokens_exceeded", param="max_tokens"
            )
        if not asked:
            payload["max_tokens"] = s.max_tokens
        if s.served_model:
            payload["model"] = s.served_model
        return payload

    async def readiness(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._ready is not None and now - self._ready[0] < self.settings.ready_cache_seconds:
            return self._ready[1]
        problem = await self.upstream.ready()
        sinks = self.pipeline.audit.status() if self.pipeline.audit is not None else []
        checks = {
            "models": "ok",  # the pipeline built every scanner (and loaded its models) before the app started
            "upstream": problem or "ok",
            "audit": "ok"
            if all(s.healthy for s in sinks)
            else "; ".join(f"{s.name}: {s.last_error}" for s in sinks if not s.healthy),
        }
        report = {"status": "ready" if all(v == "ok" for v in checks.values()) else "not ready", "checks": checks}
        self._ready = (now, report)
        return report


def services(request: Request) -> Services:
    return request.app.state.services


def authorize(s: Services, authorization: str | None) -> Principal:
    """The tenant behind ``Authorization: Bearer <key>`` (401 without a valid key), after its rate limit (429)."""
    scheme, _, key = (authorization or "").partition(" ")
    principal = s.keys.resolve(key.strip() if scheme.lower() == "bearer" else None)
    if principal is None:
        raise Unauthorized()
    wait = s.limiter.acquire(principal)
    if wait > 0:
        raise RateLimited(wait)
    return principal


async def caller(request: Request) -> Principal:
    """:func:`authorize` as a FastAPI dependency."""
    principal = authorize(services(request), request.headers.get("authorization"))
    request.state.tenant = principal.tenant
    return principal


async def generation(s: Services, state: dict[str, Any], kind: str, body: Any, principal: Principal) -> Response:
    """One chat or text completion, streamed or not; ``state`` is the request's (its id, updated to the result's)."""
    payload = s.prepare(body, kind)
    call = Call(kind, payload, principal, state["request_id"], "chat" if kind == "chat" else "completions")
    if payload.get("stream"):
        stream = GuardedStream(s.pipeline, s.upstream, call, mode=principal.stream_mode, metrics=s.metrics)
        first = await stream.start()
        return SSEResponse(stream.body(first), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    result, response = await complete(s.pipeline, s.upstream, call)
    s.metrics.observe(result)
    state["request_id"] = result.request_id
    return JSON(response)


_GENERATION = {"/v1/chat/completions": ("chat", ChatCompletionRequest), "/v1/completions": ("text", CompletionRequest)}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _json_object(scope: Scope, body: bytes) -> dict[str, Any] | None:
    """The body as FastAPI would parse it for a model, when that gives a JSON object; else None."""
    content_type = _header(scope, b"content-type")
    if content_type is not None:
        mime = content_type.partition(";")[0].strip().lower()
        if mime != "application/json" and not (mime.startswith("application/") and mime.endswith("+json")):
            return None
    if not body:
        return None
    try:
        parsed = codec.loads(body)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


# ---------------------------------------------------------------------------------------------------------------
# The outer layer


class _Edge:
    """Request id, body-size limit, request metrics and one content-free log line per request (pure ASGI)."""

    def __init__(self, app: ASGIApp, *, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["request_id"] = os.urandom(16).hex()  # as random as uuid4().hex, without building a UUID
        start = time.perf_counter()
        status = 500
        metrics = self.services.metrics

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), (b"x-request-id", state["request_id"].encode())]
                message = {**message, "headers": headers}
            await send(message)

        path = scope["path"]
        endpoint = path if path in _KNOWN_PATHS else "other"
        fast = _GENERATION.get(path) if scope["method"] == "POST" else None
        gauge = metrics.in_flight_for(endpoint)
        gauge.inc()
        try:
            body = await self._read_body(scope, receive)
            if body is None:
                limit = self.services.settings.max_body_bytes
                await error_response(TooLarge(f"the request body is over {limit} bytes"))(scope, receive, send_with_id)
                return
            handler = await self._generation(fast, scope, body) if fast is not None else None
            if handler is None:
                await self.app(scope, _replay(body, receive), send_with_id)
            else:  # the answer is known: its headers take the id now, and it goes to uvicorn without a wrapper
                handler.raw_headers.append((b"x-request-id", state["request_id"].encode()))
                status = handler.status_code  # its start goes first (a stream's too)
                await handler(scope, _replay(body, receive), send)
        except Exception as exc:  # noqa: BLE001 - log the type, never a traceback (it could quote content)
            log.error("request %s failed: %s", state["request_id"], type(exc).__name__)
        finally:
            gauge.dec()
            route_path = getattr(scope.get("route"), "path", None)
            endpoint = route_path if route_path in _KNOWN_PATHS or route_path == "/audit/{request_id}" else endpoint
            elapsed = time.perf_counter() - start
            tenant = state.get("tenant", "-")
            metrics.request(endpoint, status, tenant, elapsed)
            log.info(
                "%s %s %d %.1fms tenant=%s request_id=%s",
                scope["method"],
                endpoint,
                status,
                elapsed * 1000,
                tenant,
                state["request_id"],
            )

    async def _generation(self, route: tuple[str, Any], scope: Scope, body: bytes) -> Response | None:
        """The generation endpoints without FastAPI, for a JSON-object body (None: FastAPI's route answers)."""
        parsed = _json_object(scope, body)
        if parsed is None:
            return None
        kind, model = route
        state = scope["state"]
        try:
            principal = authorize(self.services, _header(scope, b"authorization"))
            state["tenant"] = principal.tenant
            try:
                request = model.model_validate(parsed)
            except ValidationError as exc:
                return _invalid(exc.errors())
            return await generation(self.services, state, kind, request, principal)
        except ServerError as exc:
            return _server_error_response(self.services, state, exc)
        except Exception as exc:  # noqa: BLE001 - as FastAPI's handler for Exception: a JSON 500, the type logged
            return _unexpected_response(state, exc)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body (None when it is over the limit); bodiless methods read nothing."""
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return b""
        limit = self.services.settings.max_body_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then whatever comes next: the disconnect

    return replay


# ---------------------------------------------------------------------------------------------------------------
# Errors


def _server_error_response(s: Services, state: dict[str, Any], exc: ServerError) -> JSON:
    info = exc.extra.get("guardrails")
    if isinstance(exc, ContentFiltered) and info:
        state["request_id"] = info["request_id"]  # the id that finds the audit record
        s.metrics.observe(getattr(exc, "result", None))
    return error_response(exc)


async def _server_error(request: Request, exc: ServerError) -> JSON:
    return _server_error_response(services(request), request.scope["state"], exc)


def _invalid(errors: Sequence[Any]) -> JSON:
    problems = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        problems.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")  # never the offending value: it is content
    first = errors[0].get("loc", ()) if errors else ()
    param = ".".join(str(p) for p in first if p != "body") or None
    return error_response(BadRequest("invalid request: " + "; ".join(problems), param=param))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSON:
    return _invalid(exc.errors())


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSON:
    kinds = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}
    kind, code = kinds.get(exc.status_code, ("invalid_request_error", "http_error"))
    body = {"error": {"message": str(exc.detail), "type": kind, "param": None, "code": code}}
    return JSON(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _unexpected_response(state: dict[str, Any], exc: Exception) -> JSON:
    log.error("request %s failed: %s", state.get("request_id", "-"), type(exc).__name__)
    error = ServerError("internal error in the proxy; the request id finds it in the log")
    return JSON(error_body(error), status_code=500)


async def _unexpected(request: Request, exc: Exception) -> JSON:
    return _unexpected_response(request.scope.get("state", {}), exc)


# ---------------------------------------------------------------------------------------------------------------
# The app


def create_app(
    settings: Settings | None = None, *, pipeline: Pipeline | None = None, upstream: Upstream | None = None
) -> FastAPI:
    """The sidecar. ``pipeline`` and ``upstream`` are built from ``settings`` at start-up unless given (tests)."""
    settings = settings or Settings()
    svc = Services(settings, pipeline=pipeline, upstream=upstream)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await svc.start()
        try:
            yield
        finally:
            await svc.stop()

    app = _Sidecar(
        title="guardrails sidecar",
        version="0.1.0",
        summary="An OpenAI-compatible proxy that guards, moderates streams and audits every request.",
        lifespan=lifespan,
        default_response_class=JSON,
    )
    app.state.services = svc
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_exception_handler(ServerError, _server_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
    _routes(app)
    from server.dashboard import router as dashboard

    app.include_router(dashboard)
    return app


class _Sidecar(FastAPI):
    """FastAPI with :class:`_Edge` outermost, outside Starlette's error middleware too (which answers a 500 for an
    unexpected exception on the FastAPI routes, then re-raises it to :class:`_Edge`, which logs its type)."""

    def build_middleware_stack(self) -> ASGIApp:
        return _Edge(super().build_middleware_stack(), services=self.state.services)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The schema, with the bearer key declared on every /v1 operation (auth is one plain dependency, for speed)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["apiKey"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key configured for a tenant (stored hashed).",
        }
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                if path.startswith("/v1/"):
                    operation["security"] = [{"apiKey": []}]
                elif path.startswith("/audit"):
                    operation["security"] = [{"apiKey": []}, {"basic": []}]
        schemes["basic"] = {"type": "http", "scheme": "basic", "description": "The admin key as password."}
        app.openapi_schema = schema
    return app.openapi_schema


_BLOCKED = {400: {"description": "Invalid request, or a prompt blocked by the content policy (code content_filter)"}}
_AUTH = {401: {"description": "Missing or invalid API key"}, 429: {"description": "Rate limit reached"}}
_UPSTREAM = {502: {"description": "Upstream unreachable"}, 504: {"description": "Upstream timed out"}}


def _routes(app: FastAPI) -> None:
    @app.post("/v1/chat/completions", tags=["openai"], responses={**_BLOCKED, **_AUTH, **_UPSTREAM})
    async def chat_completions(
        body: ChatCompletionRequest, request: Request, principal: Principal = Depends(caller)
    ) -> Response:
        """OpenAI chat completions, guarded; ``stream: true`` for server-sent events."""
        return await generation(services(request), request.scope["state"], "chat", body, principal)

    @app.post("/v1/completions", tags=["openai"], responses={**_BLOCKED, **_AUTH, **_UPSTREAM})
    async def completions(
        body: CompletionRequest, request: Request, principal: Principal = Depends(caller)
    ) -> Response:
        """OpenAI (legacy) text completions, guarded."""
        return await generation(services(request), request.scope["state"], "text", body, principal)

    @app.get("/v1/models", tags=["openai"], responses={**_AUTH, **_UPSTREAM})
    async def models(request: Request, principal: Principal = Depends(caller)) -> dict[str, Any]:
        s = services(request)
        if s.settings.served_model:
            data = [{"id": s.settings.served_model, "object": "model", "created": 0, "owned_by": "guardrails"}]
        else:
            data = await s.upstream.models()
        return {"object": "list", "data": data}

    @app.post("/v1/moderations", tags=["openai"], responses={**_BLOCKED, **_AUTH})
    async def moderations(
        body: ModerationRequest, request: Request, principal: Principal = Depends(caller)
    ) -> dict[str, Any]:
        """OpenAI's moderation shape from the tenant's input policy; raw S-codes and scores under ``guardrails``."""
        s = services(request)
        raw = body.input
        texts = [raw] if isinstance(raw, str) else [t if isinstance(t, str) else (t.text or "") for t in raw]
        if not texts or len(texts) > s.settings.max_inputs:
            raise BadRequest(f"send 1 to {s.settings.max_inputs} inputs", param="input")
        meta = {"tenant": principal.tenant, "key_id": principal.key_id, "endpoint": "moderations"}
        results = await asyncio.gather(
            *(s.pipeline.ascan_input(text, route=principal.route, metadata=meta) for text in texts)
        )
        for result in results:
            s.metrics.observe(result)
        request.state.request_id = results[0].request_id
        return {
            "id": "modr-" + results[0].request_id,
            "model": body.model or f"guardrails/{s.pipeline.policy.name}",
            "results": [moderation_result(r) for r in results],
        }

    @app.post("/v1/guard/scan", tags=["guardrails"], responses={**_AUTH})
    async def guard_scan(body: ScanRequest, request: Request, principal: Principal = Depends(caller)) -> dict[str, Any]:
        """Check without generating: ``stage`` input (messages) or output (``response`` to the messages)."""
        s = services(request)
        if len(body.messages) > s.settings.max_messages:
            raise BadRequest(f"at most {s.settings.max_messages} messages", code="too_many_messages", param="messages")
        messages = guard_messages("chat", {"messages": [m.model_dump() for m in body.messages]})
        meta = {"tenant": principal.tenant, "key_id": principal.key_id, "endpoint": "guard.scan"}
        if body.stage == "input":
            if not messages:
                raise BadRequest("stage input needs at least one message", param="messages")
            result = await s.pipeline.ascan_input(messages, route=principal.route, metadata=meta)
        else:
            if body.response is None:
                raise BadRequest("stage output needs `response`: the text to check", param="response")
            result = await s.pipeline.ascan_output(messages, body.response, route=principal.route, metadata=meta)
        s.metrics.observe(result)
        request.state.request_id = result.request_id
        out = {"id": "scan-" + result.request_id, "object": "guard.scan", "stage": body.stage, **result.to_dict()}
        out["guardrails"] = summary(result, scores=True)
        if body.stage == "input":
            out["messages"] = [{"role": m.role.value, "content": m.content} for m in result.messages]
            out["text"] = result.text if result.blocked_stage is Stage.INPUT else None
        return out

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "Not ready"}})
    async def readyz(request: Request) -> JSON:
        report = await services(request).readiness()
        return JSON(report, status_code=200 if report["status"] == "ready" else 503)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics(request: Request) -> Response:
        return Response(services(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
