"""The guarded pipeline: input scanners, generate, output scanners.

One async core (:meth:`Pipeline.arun`, :meth:`Pipeline.stream`) applies the policy; the sync API runs the same
coroutines through :mod:`guardrails._sync`, so it also works inside a running event loop. Scanners of a stage run
concurrently, each under its own timeout; one that raises or times out yields a result with status error/timeout
and its ``on_error`` decision, within its timeout, never a traceback to the caller.

What ``generate`` receives: a plain string prompt arrives as a string (after any input redaction); messages arrive
as a list of OpenAI-style dicts. It may be sync or async and may return text, an awaitable, or a (sync or async)
iterator of text chunks.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardrails._exceptions import Blocked, PolicyError, ScannerError
from guardrails._sync import iterate_sync, run_sync
from guardrails.aggregate import decide, merge_results
from guardrails.audit import AuditSettings, AuditWriter, Entry, should_record
from guardrails.policy import Policy, load_policy, load_routes
from guardrails.redaction import Span, redact
from guardrails.scanners.base import ScanInput, Scanner
from guardrails.scanners.registry import scanner_class
from guardrails.streaming import OutputHook, WindowedModeration
from guardrails.types import (
    Decision,
    Message,
    MessagesLike,
    Result,
    Role,
    ScanResult,
    Stage,
    Status,
    Verdict,
    to_messages,
)

__all__ = ["Pipeline", "GuardedStream", "Generate"]

log = logging.getLogger("guardrails")

Generate = Callable[..., Any]
_NO_RESULTS: tuple[ScanResult, ...] = ()
# A stage without scanners allows; its verdicts are immutable, so one of each serves every request.
_ALLOWED = {
    (stage, enforced): Verdict(stage, Decision.ALLOW, _NO_RESULTS, enforced)
    for stage in Stage
    for enforced in (True, False)
}


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One policy with its scanners and audit writer built."""

    policy: Policy
    input: tuple[Scanner, ...]
    output: tuple[Scanner, ...]
    audit: AuditWriter | None

    def scanners(self, stage: Stage) -> tuple[Scanner, ...]:
        return self.input if stage is Stage.INPUT else self.output

    def enforced(self, stage: Stage) -> bool:
        settings = self.policy.input if stage is Stage.INPUT else self.policy.output
        return settings.mode == "enforce"


@dataclass(frozen=True, slots=True)
class _State:
    """Everything a request needs, swapped as one reference by ``reload``."""

    default: _Compiled
    routes: Mapping[str, _Compiled]

    def select(self, route: str | None) -> _Compiled:
        if route is None:
            return self.default
        try:
            return self.routes[route]
        except KeyError:
            known = ", ".join(sorted(self.routes)) or "none"
            raise PolicyError(
                f"unknown route {route!r}; routes of policy {self.default.policy.name!r}: {known}"
            ) from None


def _build_state(
    policy: Policy, routes: Mapping[str, Policy], cache: dict[str, Scanner], writers: dict[str, AuditWriter]
) -> _State:
    """Build every scanner and audit writer once. Identical configs share one instance, across routes and reloads."""

    def writer(settings: AuditSettings) -> AuditWriter | None:
        if settings.record == "none":
            return None
        key = settings.model_dump_json(exclude={"record", "privacy", "metadata"})
        if key not in writers:
            writers[key] = AuditWriter(settings)
        return writers[key]

    def build(config: Any) -> Scanner:
        key = config.model_dump_json()
        scanner = cache.get(key)
        if scanner is None:
            cls = scanner_class(config.type)
            try:
                scanner = cls(config)
            except (PolicyError, ScannerError):
                raise
            except Exception as exc:
                raise ScannerError(f"scanner {config.scanner_id!r} ({config.type}) could not be built: {exc}") from exc
            cache[key] = scanner
        return scanner

    def compile_one(p: Policy) -> _Compiled:
        scanners_in = tuple(build(c) for c in p.input.scanners)
        return _Compiled(p, scanners_in, tuple(build(c) for c in p.output.scanners), writer(p.audit))

    return _State(compile_one(policy), {name: compile_one(p) for name, p in routes.items()})


class _Suspended:
    """Awaitable that finishes a coroutine which already ran to its first suspension, where it yielded ``pending``.

    It forwards what the driving task sends or throws (results, cancellation), as ``yield from`` would.
    """

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Any, pending: Any) -> None:
        self.coro = coro
        self.pending = pending

    def __await__(self) -> Any:
        coro, pending = self.coro, self.pending
        while True:
            try:
                value = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - forwarded into the coroutine, which decides
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                pending = coro.send(value)
            except StopIteration as stop:
                return stop.value


async def _finish(coro: Any, pending: Any) -> Any:
    return await _Suspended(coro, pending)


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # a timed-out scanner's late error is not "never retrieved"


async def _timed(scanner: Scanner, batch: list[ScanInput]) -> tuple[Sequence[ScanResult], float]:
    start = time.perf_counter()
    results = await scanner.scan(batch)
    return results, (time.perf_counter() - start) * 1000


def _failure(scanner: Scanner, status: Status, reason: str, duration_ms: float) -> ScanResult:
    return ScanResult(
        scanner_id=scanner.id,
        decision=Decision(scanner.config.on_error),
        status=status,
        reason=reason,
        duration_ms=duration_ms,
    )


def _error_result(scanner: Scanner, exc: BaseException, duration_ms: float) -> ScanResult:
    if isinstance(exc, TimeoutError):
        return _failure(scanner, Status.TIMEOUT, f"timed out: {exc}", duration_ms)
    if not isinstance(exc, Exception):
        raise exc  # KeyboardInterrupt, SystemExit, cancellation of the request itself
    log.warning("scanner %s failed: %s: %s", scanner.id, type(exc).__name__, exc)
    return _failure(scanner, Status.ERROR, f"{type(exc).__name__}: {exc}", duration_ms)


def _checked(scanner: Scanner, batch: list[ScanInput], results: Any, duration_ms: float) -> ScanResult:
    """Merge a scanner's per-item results, or an error result if they break the contract."""
    if not isinstance(results, Sequence) or len(results) != len(batch):
        got = len(results) if isinstance(results, Sequence) else type(results).__name__
        return _failure(scanner, Status.ERROR, f"contract: expected {len(batch)} results, got {got}", duration_ms)
    for r in results:
        if not isinstance(r, ScanResult) or r.scanner_id != scanner.id:
            return _failure(scanner, Status.ERROR, f"contract: scan returned {r!r}", duration_ms)
    return merge_results(results, duration_ms=duration_ms)


async def run_stage(stage: Stage, compiled: _Compiled, items: list[ScanInput]) -> Verdict:
    """Run a stage's scanners concurrently, each under its timeout, and aggregate their results."""
    scanners = compiled.scanners(stage)
    enforced = compiled.enforced(stage)
    if not scanners:
        return _ALLOWED[stage, enforced]
    loop = asyncio.get_running_loop()
    start = loop.time()
    slots: list[ScanResult | None] = [None] * len(scanners)
    pending: dict[asyncio.Task, tuple[int, Scanner, list[ScanInput], float]] = {}
    for i, scanner in enumerate(scanners):
        batch = [item for item in items if scanner.applies_to(item)]
        if not batch:
            slots[i] = ScanResult(scanner.id, Decision.ALLOW, status=Status.SKIPPED, reason="no text in its roles")
            continue
        # Run eagerly up to the first suspension: a scanner that never waits (patterns, cached answers) finishes
        # here without a task, which is most of the cost of a fast stage. One that waits becomes a task.
        coro = _timed(scanner, batch)
        try:
            suspended_at = coro.send(None)
        except StopIteration as stop:
            results, duration_ms = stop.value
            slots[i] = _checked(scanner, batch, results, duration_ms)
            continue
        except BaseException as exc:  # noqa: BLE001 - a scanner's failure becomes its on_error result
            slots[i] = _error_result(scanner, exc, (loop.time() - start) * 1000)
            continue
        task = loop.create_task(_finish(coro, suspended_at))
        pending[task] = (i, scanner, batch, start + scanner.config.timeout)
    try:
        while pending:
            deadline = min(entry[3] for entry in pending.values())
            timeout = max(deadline - loop.time(), 0)
            done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            now = loop.time()
            elapsed = (now - start) * 1000
            for task in list(pending):
                i, scanner, batch, task_deadline = pending[task]
                if task in done:
                    del pending[task]
                    if task.cancelled():
                        slots[i] = _failure(scanner, Status.ERROR, "cancelled", elapsed)
                    elif task.exception() is not None:
                        slots[i] = _error_result(scanner, task.exception(), elapsed)
                    else:
                        results, duration_ms = task.result()
                        slots[i] = _checked(scanner, batch, results, duration_ms)
                elif task_deadline <= now:
                    del pending[task]
                    task.cancel()
                    task.add_done_callback(_retrieve)
                    slots[i] = _failure(
                        scanner, Status.TIMEOUT, f"timed out after {scanner.config.timeout:g}s", elapsed
                    )
    finally:
        for task in pending:  # the request itself was cancelled: stop its scanners too
            task.cancel()
            task.add_done_callback(_retrieve)
    results = tuple(slots)  # type: ignore[arg-type]
    return Verdict(stage, decide(results), results, enforced)


def _redaction_spans(verdict: Verdict, compiled: _Compiled) -> dict[int | None, list[Span]]:
    """Spans to replace, by message index, from the scanners whose decision is redact."""
    by_id = {s.id: s for s in compiled.scanners(verdict.stage)}
    spans: dict[int | None, list[Span]] = {}
    for result in verdict.results:
        if result.decision is not Decision.REDACT:
            continue
        scanner = by_id[result.scanner_id]
        for finding in result.findings:
            if finding.span is not None and finding.view != "partial":
                spans.setdefault(finding.message_index, []).append((*finding.span, scanner.replacement(finding)))
    return spans


def _input_items(messages: tuple[Message, ...]) -> list[ScanInput]:
    return [
        ScanInput(
            m.content, role=m.role, index=i, stage=Stage.INPUT, third_party=m.third_party, conversation=messages[:i]
        )
        for i, m in enumerate(messages)
    ]


def _output_item(
    messages: tuple[Message, ...], response: str, *, partial: bool = False, fresh_from: int = 0
) -> ScanInput:
    return ScanInput(
        response,
        role=Role.ASSISTANT,
        index=len(messages),
        stage=Stage.OUTPUT,
        conversation=messages,
        partial=partial,
        fresh_from=fresh_from,
    )


def _limit_verdict(stage: Stage, reason: str, *, check: str = "limits", status: Status = Status.OK) -> Verdict:
    """A block decided by the pipeline itself (request limits, an audit log that cannot take records)."""
    result = ScanResult(check, Decision.BLOCK, 1.0, (check,), reason=reason, status=status)
    return Verdict(stage, Decision.BLOCK, (result,), True)


def _audit_unavailable(stage: Stage, writer: AuditWriter) -> Verdict:
    failing = "; ".join(f"{s.name}: {s.last_error}" for s in writer.status() if not s.healthy)
    reason = f"audit log full and failing ({failing or 'spool full'}); the policy blocks requests it cannot record"
    return _limit_verdict(stage, reason, check="audit", status=Status.ERROR)


def _input_limits(compiled: _Compiled, messages: tuple[Message, ...]) -> Verdict | None:
    limits = compiled.policy.limits
    if len(messages) > limits.max_messages:
        return _limit_verdict(Stage.INPUT, f"{len(messages)} messages; the limit is {limits.max_messages}")
    total = sum(len(m.content) for m in messages)
    if total > limits.max_input_chars:
        return _limit_verdict(Stage.INPUT, f"{total} characters of input; the limit is {limits.max_input_chars}")
    return None


async def _call_generate(generate: Generate, prompt: Any, *, inline: bool) -> Any:
    """Call ``generate``; a sync callable runs on a worker thread unless ``inline`` (the sync API)."""
    if inline or inspect.iscoroutinefunction(generate) or inspect.isasyncgenfunction(generate):
        out = generate(prompt)
    else:
        out = await asyncio.to_thread(generate, prompt)
    if inspect.isawaitable(out):
        out = await out
    return out


async def _chunks(out: Any, *, inline: bool) -> AsyncIterator[str]:
    """Text chunks from what ``generate`` returned: a string, or a sync or async iterator of strings."""
    if isinstance(out, str):
        yield out
        return
    if hasattr(out, "__aiter__"):
        try:
            async for chunk in out:
                yield _text_chunk(chunk)
        finally:
            if hasattr(out, "aclose"):
                await out.aclose()  # stop the model when the guarded stream stops early
        return
    if not hasattr(out, "__iter__") or isinstance(out, (bytes, bytearray, Mapping)):
        raise TypeError(f"generate must return text or an iterator of text, got {type(out).__name__}")
    iterator = iter(out)
    done = object()
    try:
        while True:
            chunk = next(iterator, done) if inline else await asyncio.to_thread(next, iterator, done)
            if chunk is done:
                return
            yield _text_chunk(chunk)
    finally:
        if hasattr(iterator, "close"):
            iterator.close()


def _text_chunk(chunk: Any) -> str:
    if not isinstance(chunk, str):
        raise TypeError(f"generate yielded {type(chunk).__name__}; chunks must be text (str)")
    return chunk


class GuardedStream:
    """A guarded, streamed response: iterate it (``for`` or ``async for``), then read ``result``.

    Text is released only after the output scanners have seen it (see :mod:`guardrails.streaming`). When the input
    or the output is blocked the last chunk is the policy's refusal, and ``result.blocked`` is true.
    """

    def __init__(self, start: Callable[[bool], AsyncIterator[str]], request_id: str) -> None:
        self._start = start
        self._started = False
        self.request_id = request_id  # known before the first chunk: it names the audit record
        self.moderation: OutputHook | None = None  # set once the output starts
        self.result: Result | None = None

    @property
    def scanned_chars(self) -> int:
        """Characters the output scanners have scanned so far (windows overlap: a measure of guard work)."""
        return getattr(self.moderation, "scanned_chars", 0)

    def _begin(self, inline: bool) -> AsyncIterator[str]:
        if self._started:
            raise RuntimeError("a GuardedStream can be iterated once")
        self._started = True
        return self._start(inline)

    def __iter__(self) -> Iterator[str]:
        return iterate_sync(self._begin(inline=True))

    def __aiter__(self) -> AsyncIterator[str]:
        return self._begin(inline=False)

    def text(self) -> str:
        """Consume the stream (sync) and return the full guarded text."""
        return "".join(self)


class Pipeline:
    """Guards any generate call with the scanners, thresholds and actions of a policy.

    Build it once (scanners and models load here), then call it from any thread or event loop.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        routes: Mapping[str, Policy] | None = None,
        generate: Generate | None = None,
    ) -> None:
        self._cache: dict[str, Scanner] = {}
        self._writers: dict[str, AuditWriter] = {}
        self._state = _build_state(policy, routes or {}, self._cache, self._writers)
        self._generate = generate

    @classmethod
    def from_policy(cls, policy: str | Path, *, generate: Generate | None = None) -> Pipeline:
        """Load a policy file (or built-in name such as ``"default"``), its routes, and build every scanner."""
        loaded = load_policy(policy)
        return cls(loaded, routes=load_routes(loaded), generate=generate)

    @property
    def policy(self) -> Policy:
        return self._state.default.policy

    @property
    def routes(self) -> tuple[str, ...]:
        return tuple(self._state.routes)

    @property
    def audit(self) -> AuditWriter | None:
        """The default policy's audit writer: ``flush()`` waits for durable writes, ``status()`` shows failures."""
        return self._state.default.audit

    def reload(self) -> Policy:
        """Re-read the policy file and its routes and swap them in atomically.

        In-flight requests finish on the policy they started with. If anything fails (missing file, invalid YAML,
        a scanner that cannot be built) the current policy stays in force and :class:`PolicyError` says why.
        """
        source = self.policy.source
        if not Path(source).is_file():
            raise PolicyError(f"cannot reload: the policy was not loaded from a file ({source})")
        try:
            policy = load_policy(source)
            state = _build_state(policy, load_routes(policy), self._cache, self._writers)
        except (PolicyError, ScannerError) as exc:
            log.error("policy reload failed, keeping %s (%s): %s", self.policy.name, self.policy.hash[:12], exc)
            raise PolicyError(f"reload failed, still enforcing the previous policy: {exc}") from exc
        self._state = state
        log.info("policy reloaded: %s (%s)", policy.name, policy.hash[:12])
        return policy

    # -- the async core -------------------------------------------------------------------------------------------

    async def arun(
        self,
        messages: MessagesLike,
        *,
        generate: Generate | None = None,
        route: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        raise_on_block: bool = False,
        request_id: str | None = None,
    ) -> Result:
        """Scan the input, generate, scan the output. A sync ``generate`` runs on a worker thread.

        ``request_id`` names the request in the result and the audit record (default: a new random id); a caller
        that must announce the id before the answer (a server's response header) passes its own."""
        return await self._run(messages, generate, route, metadata, raise_on_block, request_id, inline=False)

    async def _run(
        self,
        messages: MessagesLike,
        generate: Generate | None,
        route: str | None,
        metadata: Mapping[str, Any] | None,
        raise_on_block: bool,
        request_id: str | None,
        *,
        inline: bool,
    ) -> Result:
        with _Request(self, messages, route, metadata, time.perf_counter(), request_id) as request:
            verdict = await request.scan_input()
            if verdict.effective is Decision.BLOCK:
                return request.finish(request.compiled.policy.refusal.input, (verdict,), raise_on_block)
            out = await _call_generate(self._require_generate(generate), request.prompt(), inline=inline)
            response = out if isinstance(out, str) else "".join([c async for c in _chunks(out, inline=inline)])
            output = await request.scan_output(response)
            refusal = request.compiled.policy.refusal.output
            text = refusal if output.effective is Decision.BLOCK else request.redact_output(response, output)
            return request.finish(text, (verdict, output), raise_on_block, response)

    def stream(
        self,
        messages: MessagesLike,
        *,
        generate: Generate | None = None,
        route: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> GuardedStream:
        """A guarded stream of the response; iterate it with ``for`` or ``async for``."""
        gen = self._require_generate(generate)
        request_id = request_id or uuid.uuid4().hex

        async def start(inline: bool) -> AsyncIterator[str]:
            with _Request(self, messages, route, metadata, time.perf_counter(), request_id) as request:
                verdict = await request.scan_input()
                policy = request.compiled.policy
                if verdict.effective is Decision.BLOCK:
                    stream.result = request.finish(policy.refusal.input, (verdict,), False)
                    yield policy.refusal.input
                    return
                hook = stream.moderation = request.output_hook()
                source = _chunks(await _call_generate(gen, request.prompt(), inline=inline), inline=inline)
                received: list[str] = []
                size = 0
                limit_verdict = None
                sent: list[str] = []
                try:
                    async for chunk in source:
                        received.append(chunk)
                        size += len(chunk)
                        if size > policy.limits.max_output_chars:
                            limit_verdict = _limit_verdict(
                                Stage.OUTPUT, f"response exceeds {policy.limits.max_output_chars} characters"
                            )
                            break
                        released = await hook.feed(chunk)
                        if released:
                            sent.append(released)
                            yield released
                        if hook.blocked:
                            break
                    else:
                        released = await hook.finish()
                        if released:
                            sent.append(released)
                            yield released
                finally:
                    aclose = getattr(source, "aclose", None)
                    if aclose is not None:
                        await aclose()
                output = limit_verdict or hook.verdict
                response = "".join(received)
                if output.effective is Decision.BLOCK:
                    stream.result = request.finish(policy.refusal.output, (verdict, output), False, response)
                    yield policy.refusal.output
                else:
                    stream.result = request.finish("".join(sent), (verdict, output), False, response)

        stream = GuardedStream(start, request_id)
        return stream

    async def ascan_input(
        self,
        messages: MessagesLike,
        *,
        route: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> Result:
        """Check messages without generating. ``result.messages`` holds them after any redaction."""
        with _Request(self, messages, route, metadata, time.perf_counter(), request_id) as request:
            verdict = await request.scan_input()
            text = request.compiled.policy.refusal.input if verdict.effective is Decision.BLOCK else ""
            return request.finish(text, (verdict,), False)

    async def ascan_output(
        self,
        messages: MessagesLike,
        response: str,
        *,
        route: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> Result:
        """Check a response to ``messages`` without generating; ``result.text`` is it after redaction or refusal."""
        with _Request(self, messages, route, metadata, time.perf_counter(), request_id) as request:
            output = await request.scan_output(response)
            refusal = request.compiled.policy.refusal.output
            text = refusal if output.effective is Decision.BLOCK else request.redact_output(response, output)
            return request.finish(text, (output,), False, response)

    # -- the sync API: the same coroutines ---------------------------------------------------------------------------

    def run(
        self,
        messages: MessagesLike,
        *,
        generate: Generate | None = None,
        route: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        raise_on_block: bool = False,
        request_id: str | None = None,
    ) -> Result:
        """Sync :meth:`arun`; works inside a running event loop too. A sync ``generate`` runs in this call."""
        return run_sync(self._run(messages, generate, route, metadata, raise_on_block, request_id, inline=True))

    def scan_input(
        self,
        messages: MessagesLike,
        *,
        route: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> Result:
        return run_sync(self.ascan_input(messages, route=route, metadata=metadata, request_id=request_id))

    def scan_output(
        self,
        messages: MessagesLike,
        response: str,
        *,
        route: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> Result:
        return run_sync(
            self.ascan_output(messages, response, route=route, metadata=metadata, request_id=request_id)
        )

    def guard(self, fn: Generate | None = None, *, route: str | None = None, raise_on_block: bool = False) -> Any:
        """Decorator: the guarded version of a generate function, in the same style.

        A plain function returns a :class:`~guardrails.Result`, an ``async def`` an awaitable of one, and a (sync
        or async) generator function a :class:`GuardedStream`.
        """

        def wrap(fn: Generate) -> Any:
            if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):

                def guarded_stream(messages: MessagesLike, **kw: Any) -> GuardedStream:
                    return self.stream(messages, generate=fn, route=route, **kw)

                return functools.wraps(fn)(guarded_stream)
            if inspect.iscoroutinefunction(fn):

                async def guarded_async(messages: MessagesLike, **kw: Any) -> Result:
                    return await self.arun(messages, generate=fn, route=route, raise_on_block=raise_on_block, **kw)

                return functools.wraps(fn)(guarded_async)

            def guarded(messages: MessagesLike, **kw: Any) -> Result:
                return self.run(messages, generate=fn, route=route, raise_on_block=raise_on_block, **kw)

            return functools.wraps(fn)(guarded)

        return wrap if fn is None else wrap(fn)

    async def aclose(self) -> None:
        """Flush and close the audit log, then release every scanner's resources."""
        writers = list(self._writers.values())
        self._writers.clear()
        for writer in writers:
            await asyncio.to_thread(writer.close)
        for scanner in list(self._cache.values()):
            await scanner.aclose()
        self._cache.clear()

    def close(self) -> None:
        run_sync(self.aclose())

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_generate(self, generate: Generate | None) -> Generate:
        gen = generate or self._generate
        if gen is None:
            raise TypeError("no generate callable: pass generate=... here or to Pipeline(...)")
        return gen


class _Request:
    """One request's state on its way through the stages."""

    __slots__ = (
        "pipeline",
        "compiled",
        "received",
        "messages",
        "as_string",
        "route",
        "metadata",
        "t0",
        "request_id",
        "reserved",
    )

    def __init__(
        self,
        pipeline: Pipeline,
        messages: MessagesLike,
        route: str | None,
        metadata: Any,
        t0: float,
        request_id: str | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.compiled = pipeline._state.select(route)  # one read: a concurrent reload cannot mix two policies
        self.received = self.messages = to_messages(messages)
        self.as_string = isinstance(messages, str)
        self.route = route
        self.metadata = dict(metadata or {})
        self.t0 = t0
        self.request_id = request_id or uuid.uuid4().hex
        self.reserved = False  # holds a place in the audit spools (on_full: block)

    def _audit_refusal(self, stage: Stage) -> Verdict | None:
        """Take a place in the audit spools for this request; a block verdict when there is none."""
        writer = self.compiled.audit
        if writer is None or self.reserved:
            return None
        if not writer.reserve():
            return _audit_unavailable(stage, writer)
        self.reserved = writer.settings.on_full == "block"
        return None

    def abandon(self) -> None:
        """Give back the audit reservation if no record used it (no-op after ``finish`` submitted one)."""
        if self.reserved:
            self.reserved = False
            self.compiled.audit.release()

    def __enter__(self) -> _Request:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abandon()  # an exception, or a stream closed early, leaves no record: free its place

    async def scan_input(self) -> Verdict:
        limited = self._audit_refusal(Stage.INPUT) or _input_limits(self.compiled, self.messages)
        if limited is not None:
            return limited
        if not self.compiled.input:  # nothing to build or run
            return _ALLOWED[Stage.INPUT, self.compiled.enforced(Stage.INPUT)]
        verdict = await run_stage(Stage.INPUT, self.compiled, _input_items(self.messages))
        if verdict.effective is Decision.REDACT:
            spans = _redaction_spans(verdict, self.compiled)
            self.messages = tuple(
                Message(m.role, redact(m.content, spans[i]), m.name, m.tool_call_id, m.third_party) if i in spans else m
                for i, m in enumerate(self.messages)
            )
        return verdict

    async def scan_output(self, response: str) -> Verdict:
        refused = self._audit_refusal(Stage.OUTPUT)
        if refused is not None:
            return refused
        limit = self.compiled.policy.limits.max_output_chars
        if len(response) > limit:
            return _limit_verdict(Stage.OUTPUT, f"response of {len(response)} characters; the limit is {limit}")
        if not self.compiled.output:
            return _ALLOWED[Stage.OUTPUT, self.compiled.enforced(Stage.OUTPUT)]
        return await run_stage(Stage.OUTPUT, self.compiled, [_output_item(self.messages, response)])

    def redact_output(self, response: str, verdict: Verdict) -> str:
        if verdict.effective is not Decision.REDACT:
            return response
        return redact(response, _redaction_spans(verdict, self.compiled).get(len(self.messages), []))

    def output_hook(self) -> OutputHook:
        settings = self.compiled.policy.output.stream

        async def scan_window(
            window: str, offset: int, partial: bool, fresh_from: int
        ) -> tuple[Verdict, list[Span], int | None]:
            item = _output_item(self.messages, window, partial=partial, fresh_from=fresh_from)
            verdict = await run_stage(Stage.OUTPUT, self.compiled, [item])
            spans = _redaction_spans(verdict, self.compiled).get(len(self.messages), []) if verdict.enforced else []
            cut_short = [f.span[0] for r in verdict.results for f in r.findings if f.view == "partial" and f.span]
            hold_from = min(cut_short) + offset if cut_short else None
            return verdict, [(s + offset, e + offset, r) for s, e, r in spans], hold_from

        return WindowedModeration(
            scan_window,
            check_every=settings.check_every,
            overlap=settings.overlap,
            holdback=settings.holdback,
            max_held=settings.max_held,
            enforced=self.compiled.enforced(Stage.OUTPUT),
        )

    def prompt(self) -> Any:
        if self.as_string and len(self.messages) == 1:
            return self.messages[0].content
        return [m.to_dict() for m in self.messages]

    def finish(
        self, text: str, verdicts: tuple[Verdict, ...], raise_on_block: bool, response: str | None = None
    ) -> Result:
        policy = self.compiled.policy
        result = Result(
            request_id=self.request_id,
            text=text,
            decision=Decision.worst(v.effective for v in verdicts),
            verdicts=verdicts,
            policy_name=policy.name,
            policy_hash=policy.hash,
            route=self.route,
            messages=self.messages,
            duration_ms=(time.perf_counter() - self.t0) * 1000,
            metadata=self.metadata,
        )
        writer = self.compiled.audit
        if writer is not None and should_record(result, policy.audit):
            writer.submit(Entry(result, self.received, response, policy.audit), reserved=self.reserved)
            self.reserved = False
        else:
            self.abandon()
        if raise_on_block and result.blocked:
            raise Blocked(result)
        return result
