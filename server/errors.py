"""Every error the sidecar answers with, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Error tree (status, ``type``, ``code``)::

    ServerError                          base: status, type, code, message
    ├── BadRequest        400  invalid_request_error  invalid_request / unsupported_parameter / too_many_messages
    ├── ContentFiltered   400  invalid_request_error  content_filter     (a blocked prompt; carries "guardrails")
    ├── Unauthorized      401  authentication_error   invalid_api_key
    ├── Forbidden         403  permission_error       admin_required
    ├── TooLarge          413  invalid_request_error  request_too_large
    ├── RateLimited       429  rate_limit_error       rate_limit_exceeded (with Retry-After)
    ├── UpstreamRejected  4xx  invalid_request_error  upstream_rejected  (the upstream's own 4xx, passed on)
    ├── UpstreamError     502  upstream_error         upstream_unavailable / upstream_error
    └── UpstreamTimeout   504  upstream_error         upstream_timeout

A blocked completion is not an error: it is HTTP 200 with the refusal and ``finish_reason: "content_filter"``.
Every response carries ``X-Request-ID``; for content filtering it is also in ``error.guardrails.request_id`` and
finds the audit record.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi.responses import JSONResponse

from server import codec

__all__ = [
    "ServerError",
    "BadRequest",
    "ContentFiltered",
    "Unauthorized",
    "Forbidden",
    "TooLarge",
    "RateLimited",
    "UpstreamRejected",
    "UpstreamError",
    "UpstreamTimeout",
    "error_body",
    "error_response",
    "JSON",
]


class ServerError(Exception):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.extra = extra or {}
        self.headers = headers or {}


class BadRequest(ServerError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class ContentFiltered(ServerError):
    status, type, code = 400, "invalid_request_error", "content_filter"


class Unauthorized(ServerError):
    status, type, code = 401, "authentication_error", "invalid_api_key"

    def __init__(self, message: str = "missing or invalid API key: send Authorization: Bearer <key>", **kw: Any):
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="guardrails"'}, **kw)


class Forbidden(ServerError):
    status, type, code = 403, "permission_error", "admin_required"


class TooLarge(ServerError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class RateLimited(ServerError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"

    def __init__(self, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(f"rate limit reached for this key; retry in {seconds}s", headers={"Retry-After": str(seconds)})


class UpstreamRejected(ServerError):
    type, code = "invalid_request_error", "upstream_rejected"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class UpstreamError(ServerError):
    status, type, code = 502, "upstream_error", "upstream_unavailable"


class UpstreamTimeout(ServerError):
    status, type, code = 504, "upstream_error", "upstream_timeout"


def error_body(exc: ServerError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code, **exc.extra}}


class JSON(JSONResponse):
    """Compact JSON by :func:`server.codec.dumps` (a lone surrogate that arrived as an escape goes back out as one)."""

    def render(self, content: Any) -> bytes:
        return codec.dumps(content)


def error_response(exc: ServerError) -> JSONResponse:
    return JSON(error_body(exc), status_code=exc.status, headers=exc.headers)
