"""Writing audit records off the request path, without ever dropping one silently.

The pipeline hands each entry to :meth:`AuditWriter.submit`, which only appends it to one bounded spool per sink;
a background thread builds the records and writes them in batches. Under ``on_full: block`` a request first takes a
place in the spools (:meth:`reserve`), so a request that is answered can always be recorded. A sink that fails (disk
full, locked or read-only file, missing directory) keeps its records spooled and is retried with backoff; the failure
shows in :meth:`status`, in counters and in one log line per change of state, and the records are written once the
sink recovers. When a spool is full the policy decides: ``block`` new requests (the pipeline refuses them) or ``drop``
their records (counted and logged). :meth:`flush` waits until everything submitted so far is durably written: that
is what "written" means to callers.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass

from guardrails._exceptions import PolicyError
from guardrails.audit.record import Entry
from guardrails.audit.settings import AuditSettings
from guardrails.audit.sinks import Sink, make_sink

__all__ = ["AuditWriter", "SinkStatus"]

log = logging.getLogger("guardrails.audit")

BATCH = 256
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0


@dataclass(frozen=True, slots=True)
class SinkStatus:
    name: str
    healthy: bool
    pending: int  # records spooled, not yet written
    written: int
    failures: int  # failed write attempts
    dropped: int  # records dropped because the spool was full (on_full: drop)
    last_error: str | None


class _SinkState:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.spool: deque[tuple[int, Entry]] = deque()
        self.written = 0
        self.failures = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.healthy = True
        self.retry_at = 0.0
        self.backoff = BACKOFF_FIRST


_OPEN: weakref.WeakSet[AuditWriter] = weakref.WeakSet()


@atexit.register
def _close_open_writers() -> None:
    """A process that exits without closing its pipeline still writes what it spooled (for up to 10 s)."""
    for writer in list(_OPEN):
        writer.close(timeout=10.0)


def hmac_key(settings: AuditSettings) -> bytes | None:
    if settings.hmac_key_env is None:
        return None
    value = os.environ.get(settings.hmac_key_env)
    if not value:
        raise PolicyError(
            f"audit.hmac_key_env names {settings.hmac_key_env!r}, but that environment variable is not set; "
            "set it to a secret key, or remove hmac_key_env to chain with plain SHA-256"
        )
    return value.encode()


class AuditWriter:
    """Spools, writes and retries records for one set of sinks. Thread-safe; one background thread."""

    def __init__(self, settings: AuditSettings) -> None:
        key = hmac_key(settings)
        self.settings = settings
        self._states = [_SinkState(make_sink(s, key)) for s in settings.sinks]
        self._cond = threading.Condition()
        self._submitted = 0
        self._reserved = 0  # places in every spool held by requests in flight (on_full: block)
        self._refused = 0
        self._closing = False
        self._thread: threading.Thread | None = None  # started with the first record
        _OPEN.add(self)

    # -- the request path --------------------------------------------------------------------------------------

    def reserve(self) -> bool:
        """Hold a place in every spool for a request about to run (``on_full: block`` only; always True for drop).

        False when the spools are full: the pipeline then blocks the request. A reservation is used by
        :meth:`submit` (``reserved=True``) or given back with :meth:`release`.
        """
        if self.settings.on_full == "drop":
            return True
        with self._cond:
            if all(len(s.spool) + self._reserved < self.settings.queue_size for s in self._states):
                self._reserved += 1
                return True
            self._refused += 1
            return False

    def release(self) -> None:
        """Give back a reservation that no record used."""
        with self._cond:
            self._reserved -= 1

    def submit(self, entry: Entry, *, reserved: bool = False) -> bool:
        """Spool ``entry`` for every sink. False when a full spool dropped it for some sink (counted and logged)."""
        with self._cond:
            if self._closing:
                raise RuntimeError("the audit writer is closed")
            if reserved:
                self._reserved -= 1
                full = []
            else:
                full = [s for s in self._states if len(s.spool) + self._reserved >= self.settings.queue_size]
            if full and self.settings.on_full == "block":
                return False  # only a request refused by reserve() comes here: it is counted there
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="guardrails-audit", daemon=True)
                self._thread.start()
            self._submitted += 1
            number = self._submitted
            for state in self._states:
                if state in full:
                    state.dropped += 1
                    log.error(
                        "audit spool of %s is full: dropped the record of %s", state.sink.name, entry.result.request_id
                    )
                else:
                    state.spool.append((number, entry))
            self._cond.notify_all()
            return not full

    # -- the writer thread -------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    ready = [s for s in self._states if s.spool and s.retry_at <= now]
                    if ready or self._closing:  # closing: one last attempt for what is ready, no more retries
                        break
                    waits = [s.retry_at - now for s in self._states if s.spool]
                    self._cond.wait(timeout=min(waits) if waits else None)
                if not ready:
                    return
                batches = [(s, list(s.spool)[:BATCH]) for s in ready]
            for state, batch in batches:
                self._write(state, batch)

    def _write(self, state: _SinkState, batch: list[tuple[int, Entry]]) -> None:
        try:
            records = [entry.record() for _, entry in batch]
            state.sink.write(records)
        except Exception as exc:  # noqa: BLE001 - any sink failure is retried, never lost
            with self._cond:
                state.failures += 1
                state.last_error = f"{type(exc).__name__}: {exc}"
                state.retry_at = time.monotonic() + state.backoff
                state.backoff = min(state.backoff * 2, BACKOFF_MAX)
                if state.healthy:
                    state.healthy = False
                    log.error(
                        "audit sink %s failing, %d records spooled: %s",
                        state.sink.name,
                        len(state.spool),
                        state.last_error,
                    )
                self._cond.notify_all()
            return
        with self._cond:
            for number, _ in batch:
                if state.spool and state.spool[0][0] == number:
                    state.spool.popleft()
            state.written += len(batch)
            state.backoff = BACKOFF_FIRST
            state.retry_at = 0.0
            if not state.healthy:
                state.healthy = True
                log.warning("audit sink %s recovered after %d failed attempts", state.sink.name, state.failures)
            self._cond.notify_all()

    # -- control -----------------------------------------------------------------------------------------------

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every record submitted before this call is written to every sink. False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            while not all(not s.spool or s.spool[0][0] > target for s in self._states):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(timeout=remaining)
        return True

    def status(self) -> list[SinkStatus]:
        with self._cond:
            return [
                SinkStatus(s.sink.name, s.healthy, len(s.spool), s.written, s.failures, s.dropped, s.last_error)
                for s in self._states
            ]

    @property
    def refused(self) -> int:
        """Requests refused because a spool was full (on_full: block)."""
        return self._refused

    def close(self, timeout: float = 10.0) -> bool:
        """Flush (up to ``timeout``), stop the thread and close the sinks. False if records were left unwritten."""
        flushed = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(timeout, 1.0))  # lets a write in flight finish
        with self._cond:
            for state in self._states:
                if state.spool:
                    log.error(
                        "audit sink %s closed with %d records unwritten: %s",
                        state.sink.name,
                        len(state.spool),
                        state.last_error,
                    )
                    state.spool.clear()
                    flushed = False
        for state in self._states:
            state.sink.close()
        _OPEN.discard(self)
        return flushed
