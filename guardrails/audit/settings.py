"""The ``audit:`` section of a policy."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AuditSettings", "SQLiteSinkSettings", "JSONLSinkSettings", "StdoutSinkSettings", "DEFAULT_DB"]

DEFAULT_DB = ".guardrails/audit.sqlite"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SQLiteSinkSettings(_Strict):
    type: Literal["sqlite"] = "sqlite"
    path: str = Field(default=DEFAULT_DB, description="Database file; relative paths start at the working directory.")
    synchronous: Literal["full", "normal"] = Field(
        default="full",
        description="`full` survives power loss; `normal` survives process crashes only (faster on slow disks).",
    )
    busy_timeout: float = Field(default=2.0, gt=0, description="Seconds to wait for a lock held by another writer.")


class JSONLSinkSettings(_Strict):
    type: Literal["jsonl"]
    path: str = Field(default=".guardrails/audit.jsonl", description="Append-only JSON-lines file.")
    max_bytes: int = Field(default=50_000_000, gt=0, description="Rotate to `path.1` when the file would pass this.")
    backups: int = Field(default=5, ge=0, description="Rotated files kept (`path.1` newest).")
    fsync: bool = Field(default=True, description="fsync after every batch, so a written record survives a crash.")


class StdoutSinkSettings(_Strict):
    type: Literal["stdout"]


SinkSettings = Annotated[SQLiteSinkSettings | JSONLSinkSettings | StdoutSinkSettings, Field(discriminator="type")]


class AuditSettings(_Strict):
    """What is recorded, how private it is, and where it goes."""

    record: Literal["flagged", "all", "none"] = Field(
        default="flagged",
        description="`flagged`: every request not plainly allowed (block, redact, warn, scanner error or timeout, "
        "shadow would-block); `all`: every request; `none`: nothing.",
    )
    privacy: Literal["hash", "redacted", "full"] = Field(
        default="hash",
        description="Content in records: `hash` (SHA-256 and length, no text), `redacted` (credentials and matched "
        "spans masked), `full` (as received).",
    )
    metadata: list[str] = Field(
        default_factory=list,
        description="Caller metadata keys copied into records (e.g. user_id, app); others dropped.",
    )
    sinks: list[SinkSettings] = Field(
        default_factory=lambda: [SQLiteSinkSettings()], min_length=1, description="Where records go (all of them)."
    )
    queue_size: int = Field(default=10_000, gt=0, description="Records spooled per sink while it is failing.")
    on_full: Literal["block", "drop"] = Field(
        default="block",
        description="When a spool is full: `block` new requests (fail closed) or `drop` their records (counted, "
        "logged).",
    )
    hmac_key_env: str | None = Field(
        default=None,
        description="Environment variable holding a key: records are chained with HMAC-SHA256 instead of SHA-256, "
        "so nobody without the key can rewrite the chain.",
    )
