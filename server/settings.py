"""The sidecar's settings: typed, loaded once (arguments over ``GUARDRAILS_*`` environment variables over defaults).

Every key can be set from the environment with the ``GUARDRAILS_`` prefix (``GUARDRAILS_UPSTREAM_URL``,
``GUARDRAILS_PORT``, ...); lists and mappings take JSON (``GUARDRAILS_API_KEYS='[{"hash": "sha256:...",
"tenant": "acme"}]'``). API keys are configured by their hash only (``python -m server hash-key`` prints one); a raw
key given in ``GUARDRAILS_API_KEY`` is hashed at start-up and never kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "KeyEntry", "StreamMode"]

StreamMode = Literal["buffered", "async"]


class KeyEntry(BaseModel):
    """One API key: its hash, the tenant it belongs to and what that tenant may do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hash: str = Field(
        description="`sha256:<hex>` or `scrypt:<n>:<r>:<p>:<salt hex>:<hash hex>` of the key (never the key itself)."
    )
    tenant: str = Field(default="default", pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="Label in logs and metrics.")
    route: str | None = Field(
        default=None, description="The policy route this tenant's requests run under; null: the default policy."
    )
    admin: bool = Field(default=False, description="May read the audit dashboard (/audit).")
    rate_limit: float | None = Field(default=None, gt=0, description="Requests per second; null: the server default.")
    burst: int | None = Field(default=None, gt=0, description="Requests allowed at once above the rate.")
    stream_mode: StreamMode | None = Field(default=None, description="Streaming moderation; null: the server default.")

    @field_validator("hash")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme = value.split(":", 1)[0]
        if scheme not in ("sha256", "scrypt"):
            raise ValueError(
                f"unknown key hash scheme {scheme!r}: use sha256:<hex> or scrypt:... (python -m server hash-key)"
            )
        return value


class Settings(BaseSettings):
    """Everything the sidecar reads at start-up. Nothing here can be changed by a request."""

    model_config = SettingsConfigDict(env_prefix="GUARDRAILS_", extra="forbid", frozen=True)

    # What guards and what generates.
    policy: str = Field(default="default", description="Policy file or built-in name (its routes are the tenants).")
    upstream_url: str | None = Field(
        default=None, description="Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1."
    )
    upstream_api_key: SecretStr | None = Field(default=None, description="Bearer key sent to the upstream.")
    model_path: str | None = Field(default=None, description="Checkpoint for the embedded engine (instead of a URL).")
    served_model: str | None = Field(
        default=None, description="Model name sent upstream (overrides the request's) and listed by /v1/models."
    )

    # Where to listen.
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)

    # Who may call.
    api_keys: list[KeyEntry] = Field(default_factory=list)
    keys_file: Path | None = Field(default=None, description="YAML or JSON file with a list of key entries.")
    api_key: SecretStr | None = Field(default=None, description="One raw key (hashed at start-up) for tenant default.")
    allow_unauthenticated: bool = Field(
        default=False, description="Serve without keys (local development only; every request is tenant default)."
    )
    rate_limit: float | None = Field(default=None, gt=0, description="Default requests per second per key.")
    burst: int = Field(default=20, gt=0)

    # How much one request may ask for.
    max_body_bytes: int = Field(default=1_000_000, gt=0)
    max_messages: int = Field(default=256, gt=0)
    max_tokens: int = Field(default=4096, gt=0, description="Cap on max_tokens; requests without one get this.")
    max_inputs: int = Field(default=32, gt=0, description="Inputs in one /v1/moderations request.")

    # The upstream connection.
    upstream_timeout: float = Field(default=60.0, gt=0, description="Seconds for a response, or between chunks.")
    connect_timeout: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=256, gt=0)

    # Streaming moderation.
    stream_mode: StreamMode = Field(default="buffered", description="buffered: scan before release; async: cut late.")

    # Operations.
    shutdown_timeout: float = Field(default=30.0, ge=0, description="Seconds in-flight requests get to finish.")
    audit_db: Path | None = Field(default=None, description="Audit database for /audit; default: the policy's.")
    ready_cache_seconds: float = Field(default=5.0, ge=0)
    log_level: str = "info"
    freeze_gc: bool = Field(
        default=True,
        description="After start-up, keep what it built (modules, models, policy) out of Python's cyclic garbage "
        "collections (gc.freeze): each full collection then walks only what requests made (p99 at 64 clients, "
        "bench/proxy.py: 47 -> 14 ms).",
    )

    @model_validator(mode="after")
    def _one_upstream(self) -> Settings:
        if self.upstream_url and self.model_path:
            raise ValueError("give either upstream_url (--upstream) or model_path (--model), not both")
        return self

    def key_entries(self) -> list[KeyEntry]:
        """Keys from ``api_keys``, ``keys_file`` and ``api_key`` together."""
        entries = list(self.api_keys)
        if self.keys_file is not None:
            entries += _read_keys_file(self.keys_file)
        if self.api_key is not None:
            from server.auth import hash_key

            entries.append(KeyEntry(hash=hash_key(self.api_key.get_secret_value()), tenant="default", admin=True))
        return entries


def _read_keys_file(path: Path) -> list[KeyEntry]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the keys file: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    if isinstance(data, dict) and "keys" in data:
        data = data["keys"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of key entries (or a mapping with `keys:`)")
    out = []
    for i, item in enumerate(data):
        try:
            out.append(KeyEntry.model_validate(item))
        except ValueError as exc:
            raise ValueError(f"{path}: key entry {i}: {exc}") from None
    return out
