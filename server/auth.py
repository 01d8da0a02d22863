"""API keys, stored hashed, mapped to tenants; and per-key rate limits.

A key is looked up by its SHA-256 (``sha256:<hex>`` entries: a dictionary lookup, no per-request cost), or verified
against ``scrypt`` entries once and then remembered by its SHA-256, so a slow hash costs one verification per key per
process. Raw keys are never stored, logged or compared directly.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass

from server.settings import KeyEntry, Settings, StreamMode

__all__ = ["Principal", "KeyRing", "RateLimiter", "hash_key", "new_key"]

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def new_key() -> str:
    """A fresh random API key (what to hand a tenant)."""
    return "gr-" + secrets.token_urlsafe(32)


def hash_key(key: str, *, scheme: str = "sha256") -> str:
    """The value to put in a key entry's ``hash``."""
    if scheme == "sha256":
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    if scheme == "scrypt":
        salt = os.urandom(16)
        digest = hashlib.scrypt(key.encode(), salt=salt, **_SCRYPT, dklen=32)
        return f"scrypt:{_SCRYPT['n']}:{_SCRYPT['r']}:{_SCRYPT['p']}:{salt.hex()}:{digest.hex()}"
    raise ValueError(f"unknown scheme {scheme!r}; use sha256 or scrypt")


def _scrypt_matches(key: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split(":")
        computed = hashlib.scrypt(
            key.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=len(digest) // 2
        )
    except ValueError:
        return False
    return hmac.compare_digest(computed.hex(), digest)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant, its policy route and its limits (from configuration, never from the request)."""

    key_id: str  # first 12 hex of the key's SHA-256: safe to log
    tenant: str
    route: str | None
    admin: bool
    rate_limit: float | None
    burst: int
    stream_mode: StreamMode


class KeyRing:
    """Resolves a presented key to a :class:`Principal` (None when it is not a known key)."""

    def __init__(self, entries: list[KeyEntry], settings: Settings) -> None:
        self._settings = settings
        self._by_sha: dict[str, Principal] = {}
        self._scrypt: list[tuple[str, KeyEntry]] = []
        self._lock = threading.Lock()
        for entry in entries:
            if entry.hash.startswith("sha256:"):
                digest = entry.hash.removeprefix("sha256:").lower()
                if len(digest) != 64:
                    raise ValueError(f"key entry for tenant {entry.tenant!r}: a sha256 hash has 64 hex digits")
                self._by_sha[digest] = self._principal(digest, entry)
            else:
                self._scrypt.append((entry.hash, entry))
        self.open = settings.allow_unauthenticated and not entries
        self._anonymous = Principal(
            "anonymous", "default", None, True, settings.rate_limit, settings.burst, settings.stream_mode
        )

    def __len__(self) -> int:
        return len(self._by_sha) + len(self._scrypt)

    def _principal(self, digest: str, entry: KeyEntry) -> Principal:
        s = self._settings
        return Principal(
            key_id=digest[:12],
            tenant=entry.tenant,
            route=entry.route,
            admin=entry.admin,
            rate_limit=entry.rate_limit if entry.rate_limit is not None else s.rate_limit,
            burst=entry.burst if entry.burst is not None else s.burst,
            stream_mode=entry.stream_mode or s.stream_mode,
        )

    def routes(self) -> set[str]:
        return {p.route for p in self._by_sha.values() if p.route} | {e.route for _, e in self._scrypt if e.route}

    def resolve(self, key: str | None) -> Principal | None:
        if self.open:
            return self._anonymous
        if not key:
            return None
        digest = hashlib.sha256(key.encode()).hexdigest()
        found = self._by_sha.get(digest)
        if found is not None or not self._scrypt:
            return found
        for stored, entry in self._scrypt:
            if _scrypt_matches(key, stored):
                principal = self._principal(digest, entry)
                with self._lock:
                    self._by_sha[digest] = principal  # verified once; later lookups are a dictionary hit
                return principal
        return None


class RateLimiter:
    """A token bucket per key: ``rate`` requests per second, up to ``burst`` at once."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, last refill)
        self._lock = threading.Lock()

    def acquire(self, principal: Principal) -> float:
        """0 when the request may go ahead, else the seconds until it could."""
        if principal.rate_limit is None:
            return 0.0
        rate, burst = principal.rate_limit, principal.burst
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(principal.key_id, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[principal.key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[principal.key_id] = (tokens, now)
            return (1.0 - tokens) / rate
