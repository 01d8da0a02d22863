"""Code Shield's semgrep tier: a warm ``semgrep lsp`` process that scans many snippets per round trip.

Why the language server. Measured back to back on the 2-core development machine while another job kept it busy
(load ~2.6; semgrep 1.185.0; one rule per language; wall time of one scan, median):

================================================================  ===========  ============
approach                                                          1 snippet    200 snippets
================================================================  ===========  ============
``semgrep scan`` per call (Python wrapper; spec/environment.md)   ~1.6 s       ~2.1 s
``semgrep-core -rules R -targets T -json -j 1`` per call          137 ms       202 ms
``semgrep-core`` pre-spawned, its targets file a FIFO             42 ms        113 ms
``semgrep lsp`` kept running (this module)                        2.0 ms       133 ms
================================================================  ===========  ============

The pre-spawned ``semgrep-core`` has parsed its rules before the request (it reads the FIFO twice: once to filter
rules by language, which can be fed at spawn time, then to scan), but every scan still runs a fresh process whose
first parse of each language costs 20-80 ms of lazy initialisation. ``semgrep-core -rpc`` keeps a process, but
scanning over RPC is a semgrep Pro feature. The language server keeps parsers and rules loaded: one snippet takes
~2 ms (p90 2.4 ms; 3-3.5 ms under heavier load), or ~5.5 ms right after a 200-snippet batch, whose diagnostics the
server re-publishes on every later scan (see below). Start-up (rule check, server, parser warm-up) takes ~250 ms.

How a scan runs. Each snippet is written to ``<tmp>/ws/<n><ext>`` (the extension picks semgrep's parser), then:
when the set of file names differs from the previous scan, a ``didSave`` of a file that does not exist makes the
server list the workspace again (it scans only files it has listed, and it must not keep deleted ones: it asserts
on them); ``semgrep/scanWorkspace`` then scans every listed file in one go and publishes diagnostics. The server
re-publishes diagnostics for every file it ever reported, so the tier counts them: a scan is complete when each
file in :attr:`_Server.reported` (plus this batch) has been published once after the scan's progress ended. That
makes the exchange deterministic without relying on message order; a file the server silently skipped shows up
as a scan that never completes, i.e. a ``TimeoutError``, not as "no findings". Because re-publishing grows with
the number of names, a server that has reported on more than ``_RECYCLE_AFTER`` files is replaced in the
background. Snippet files are deleted after each scan.

What the language server does differently from ``semgrep scan``, and how the tier neutralises it:

- It skips "minified" files (average line length over 300 bytes in the first 8 KiB), which a one-line snippet
  can be: each snippet is written after ``_PAD_LINES`` blank lines, and positions are shifted back.
- Its default settings send metrics, fetch rules from semgrep.dev and skip files over 1 MB: the
  ``initializationOptions`` turn metrics and CI rules off and lift the size limit. Every process runs with
  ``SEMGREP_ENABLE_VERSION_CHECK=0`` and ``SEMGREP_SEND_METRICS=off``, a private ``HOME`` (no user settings or
  tokens), an empty ``.semgrepignore`` (no default ignores), and a ``PATH`` that holds only ``uname`` (which it
  runs at start-up): the ``git`` it tries on every scan is not found, which is faster than running it (8 -> 2 ms)
  and means semgrep never treats the temporary directory as part of a git repository. Under strace a whole
  session (start, 300 scans) opens no socket.
- ``# nosemgrep`` comments do not silence findings here (a test pins this: generated code must not opt out).
- Positions come as 0-based lines and byte columns; hits carry character offsets into the snippet.

The rules are checked once by ``semgrep-core`` at start-up, because the language server drops invalid rules
silently. Generated code is only ever written to files and parsed, never executed.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import tempfile
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from guardrails._exceptions import PolicyError, ScannerError
from guardrails.scanners.code_shield.languages import EXTENSIONS, SEMGREP_LANGUAGE
from guardrails.scanners.code_shield.rules import Rule

__all__ = ["SemgrepJob", "SemgrepHit", "SemgrepTier", "SharedSemgrep"]

_PAD_LINES = 32  # 8 KiB over 32 + 3 lines averages 234 bytes a line, under the 300 of the "minified" check
_RECYCLE_AFTER = 512  # files a server may have reported on before it is replaced (each scan re-publishes them)
_START_TIMEOUT = 60.0  # seconds for a server to load its rules and warm up its parsers
_RESERVED_KEYS = frozenset({"id", "languages", "message", "severity", "paths"})  # set by the tier, or meaningless


@dataclass(frozen=True, slots=True)
class SemgrepJob:
    code: str  # the snippet
    language: str  # canonical language name (languages.LANGUAGES)
    rule_ids: tuple[str, ...]  # only hits of these rules are wanted (the caller prescanned)


@dataclass(frozen=True, slots=True)
class SemgrepHit:
    rule_id: str
    start: int  # character offsets in the job's code
    end: int
    line: int  # 1-based
    end_line: int


class SemgrepTier:
    """Runs the semgrep rules of Code Shield over batches of snippets with one warm semgrep process.

    ``scan`` calls are serialised (the server scans one batch at a time; batch snippets to go faster). A scan that
    runs past ``timeout`` seconds kills the process and raises ``TimeoutError``; a process that dies or reports an
    error raises :class:`ScannerError`. Either way a fresh process is started in the background for the next scan.
    """

    def __init__(self, rules: Sequence[Rule], *, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._rules = [rule for rule in rules if rule.semgrep is not None]
        for rule in self._rules:
            if rule.language not in SEMGREP_LANGUAGE:
                raise PolicyError(f"Code Shield rule {rule.id!r}: a semgrep pattern needs one language, not 'any'")
            if reserved := _RESERVED_KEYS & rule.semgrep.keys():
                raise PolicyError(f"Code Shield rule {rule.id!r}: the semgrep body may not set {sorted(reserved)}")
        self._rule_ids = frozenset(rule.id for rule in self._rules)
        self._languages = frozenset(rule.language for rule in self._rules)
        self._dir: Path | None = None
        self._cleanup: weakref.finalize | None = None
        self._server: _Server | None = None
        self._starting: asyncio.Task[_Server] | None = None
        self._closing: set[asyncio.Task[Any]] = set()  # closing servers, a cancelled start
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Check the rules and start the semgrep process. Raises ScannerError if semgrep is missing or fails."""
        async with self._lock:
            if self._dir is not None:
                return
            core = _semgrep_core()
            self._dir = Path(tempfile.mkdtemp(prefix="guardrails-semgrep-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
            try:
                _prepare(self._dir, self._rules)
                await _check_rules(core, self._dir)
                self._server = await self._spawn()
            except BaseException:
                await self._close()
                raise

    async def scan(self, jobs: Sequence[SemgrepJob]) -> list[list[SemgrepHit]]:
        """The hits for each job, in order. Snippets that semgrep cannot parse get no hits."""
        for job in jobs:
            if job.language not in SEMGREP_LANGUAGE:
                raise ValueError(f"unknown language {job.language!r}")
        files = {  # file name -> job index; jobs no rule applies to are not sent
            f"{i}{EXTENSIONS[job.language]}": i
            for i, job in enumerate(jobs)
            if job.language in self._languages and self._rule_ids.intersection(job.rule_ids)
        }
        out: list[list[SemgrepHit]] = [[] for _ in jobs]
        if not files:
            return out
        if self._dir is None:
            raise ScannerError("the semgrep tier was not started: await SemgrepTier.start() first")
        padding = b"\n" * _PAD_LINES
        contents = {name: padding + jobs[i].code.encode("utf-8", "surrogatepass") for name, i in files.items()}
        async with self._lock:
            server = await self._ready_server()
            try:
                async with asyncio.timeout(self.timeout):
                    reports = await server.scan(contents)
            except BaseException as exc:
                self._replace(server)  # it may be mid-conversation: never reuse it
                if isinstance(exc, TimeoutError):
                    raise TimeoutError(f"semgrep took over {self.timeout:g}s on {len(files)} snippets") from None
                raise
            if len(server.reported) > _RECYCLE_AFTER:
                self._replace(server)
        for name, i in files.items():
            out[i] = _hits(jobs[i], reports[name], self._rule_ids)
        return out

    async def aclose(self) -> None:
        """Stop the semgrep processes (after a scan in flight) and remove the temporary directory."""
        async with self._lock:
            await self._close()

    async def _close(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            self._closing.add(self._starting)
            self._starting = None
        if self._server is not None:
            self._closing.add(asyncio.create_task(self._server.close()))
            self._server = None
        await asyncio.gather(*self._closing, return_exceptions=True)
        self._closing.clear()
        if self._cleanup is not None:
            self._cleanup()
        self._dir = None

    async def _spawn(self) -> _Server:
        assert self._dir is not None
        async with asyncio.timeout(_START_TIMEOUT):
            return await _Server.start(_semgrep_core(), self._dir, self._languages, semgrep_timeout=self.timeout)

    async def _ready_server(self) -> _Server:
        if self._server is None:
            starting, self._starting = self._starting, None
            self._server = await (starting or asyncio.create_task(self._spawn()))
        return self._server

    def _replace(self, server: _Server) -> None:
        """Retire ``server`` and start its successor in the background."""
        task = asyncio.create_task(server.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        self._server = None
        self._starting = asyncio.create_task(self._spawn())


class _Server:
    """One ``semgrep lsp`` process and the JSON-RPC conversation with it."""

    def __init__(self, process: asyncio.subprocess.Process, workspace: Path) -> None:
        self.process = process
        self.workspace = workspace
        self.reported: set[str] = set()  # file names the server re-publishes on every workspace scan
        self._listed: frozenset[str] = frozenset()  # file names the server lists as targets
        self._inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()  # None: the process is gone
        self._stderr = b""  # the last few KiB, for error messages
        self._next_id = 0
        self._tasks = (asyncio.create_task(self._read()), asyncio.create_task(self._read_stderr()))

    @classmethod
    async def start(cls, core: Path, root: Path, languages: frozenset[str], *, semgrep_timeout: float) -> _Server:
        pipe = asyncio.subprocess.PIPE
        try:  # semgrep-core started as "osemgrep" is the semgrep CLI, without the Python wrapper
            process = await asyncio.create_subprocess_exec(
                "osemgrep",
                "lsp",
                executable=core,
                cwd=root,
                env=_environment(root),
                stdin=pipe,
                stdout=pipe,
                stderr=pipe,
            )
        except OSError as exc:
            raise ScannerError(f"cannot run {core}: {exc}") from None
        server = cls(process, root / "ws")
        try:
            await server._initialize(root, semgrep_timeout)
            await server.scan({f"warmup{EXTENSIONS[language]}": b"\n" for language in languages})  # load parsers
        except BaseException:
            await server.close()
            raise
        return server

    async def scan(self, contents: dict[str, bytes]) -> dict[str, list[dict[str, Any]]]:
        """Diagnostics per file name for the snippets in ``contents`` (file name -> bytes)."""
        try:
            for name, data in contents.items():
                (self.workspace / name).write_bytes(data)
            if self._listed != frozenset(contents):
                await self._relist()
                self._listed = frozenset(contents)
            await self._notify("semgrep/scanWorkspace", {"full": True})
            token = None
            while True:  # diagnostics follow the end of the scan's progress
                message = await self._receive()
                if message.get("method") != "$/progress":
                    continue
                value = message["params"]["value"]
                if value.get("kind") == "begin" and value.get("message") == "Scanning Workspace":
                    token = message["params"]["token"]
                elif value.get("kind") == "end" and token is not None and message["params"]["token"] == token:
                    break
            reports: dict[str, list[dict[str, Any]]] = {}
            waiting = self.reported | contents.keys()
            while waiting:
                name, diagnostics = await self._diagnostics()
                waiting.discard(name)
                if name in contents:
                    reports[name] = diagnostics
            return reports
        finally:
            for name in contents:
                (self.workspace / name).unlink(missing_ok=True)

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _initialize(self, root: Path, semgrep_timeout: float) -> None:
        scan_settings = {
            "configuration": [str(root / "rules.yaml")],
            "onlyGitDirty": False,
            "ci": False,  # no rules from semgrep.dev
            "jobs": 1,  # more jobs fork the server on every scan (2 -> 35 ms)
            "maxTargetBytes": 1 << 40,
            "timeout": max(1, math.ceil(semgrep_timeout)),  # per rule and file, whole seconds
        }
        request_id = await self._request("initialize", {
            "processId": None,
            "rootUri": self.workspace.as_uri(),
            "workspaceFolders": [{"uri": self.workspace.as_uri(), "name": "snippets"}],
            "capabilities": {},
            "initializationOptions": {"scan": scan_settings, "metrics": {"enabled": False}},
        })  # fmt: skip
        while (message := await self._receive()).get("id") != request_id:
            pass
        if "error" in message:
            raise ScannerError(f"semgrep lsp refused to start: {message['error']}")
        await self._notify("initialized", {})
        while (await self._receive()).get("method") != "semgrep/rulesRefreshed":
            pass

    async def _relist(self) -> None:
        """Make the server list the workspace's files again: it does so when asked to scan a file it does not list."""
        await self._notify("textDocument/didSave", {"textDocument": {"uri": (self.workspace / ".relist").as_uri()}})
        while (await self._diagnostics())[0] != ".relist":
            pass

    async def _diagnostics(self) -> tuple[str, list[dict[str, Any]]]:
        """The next published diagnostics: (file name, diagnostics)."""
        while (message := await self._receive()).get("method") != "textDocument/publishDiagnostics":
            pass
        name = unquote(message["params"]["uri"].rpartition("/")[2])
        self.reported.add(name)
        return name, message["params"]["diagnostics"]

    async def _receive(self) -> dict[str, Any]:
        message = await self._inbox.get()
        if message is None:
            await self.process.wait()
            tail = self._stderr.decode(errors="replace").strip()
            raise ScannerError(f"semgrep lsp exited with code {self.process.returncode}: {tail}")
        if message.get("method") == "window/showMessage" and message["params"].get("type") == 1:
            raise ScannerError(f"semgrep lsp: {message['params'].get('message')}")
        return message

    async def _request(self, method: str, params: dict[str, Any]) -> int:
        self._next_id += 1
        await self._send({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params})
        return self._next_id

    async def _notify(self, method: str, params: dict[str, Any]) -> None:
        await self._send({"jsonrpc": "2.0", "method": method, "params": params})

    async def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message).encode()
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await self.process.stdin.drain()
        except ConnectionError as exc:
            raise ScannerError(f"semgrep lsp stopped reading its input: {exc}") from None

    async def _read(self) -> None:
        """Move the server's messages to the inbox; answer its requests (progress tokens) at once."""
        assert self.process.stdout is not None
        try:
            while True:
                header = await self.process.stdout.readuntil(b"\r\n\r\n")
                length = _content_length(header)
                message = json.loads(await self.process.stdout.readexactly(length))
                if "id" in message and "method" in message:
                    await self._send({"jsonrpc": "2.0", "id": message["id"], "result": None})
                else:
                    self._inbox.put_nowait(message)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ScannerError):
            self._inbox.put_nowait(None)

    async def _read_stderr(self) -> None:
        """Keep reading the server's log (it blocks on a full pipe); keep its tail for error messages."""
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.read(1 << 16):
            self._stderr = (self._stderr + chunk)[-4096:]


def _content_length(header: bytes) -> int:
    for line in header.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise ValueError(f"no Content-Length in {header!r}")


def _hits(job: SemgrepJob, diagnostics: list[dict[str, Any]], known: frozenset[str]) -> list[SemgrepHit]:
    """Diagnostics as hits of the job's rules, with character offsets in the job's code."""
    lines = job.code.split("\n")
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)

    def position(at: dict[str, int]) -> tuple[int, int]:  # LSP position (padded, byte column) -> (line, offset)
        index = at["line"] - _PAD_LINES
        if not 0 <= index < len(lines):
            raise ScannerError(f"semgrep reported line {at['line']} outside the snippet")
        column = len(lines[index].encode("utf-8", "surrogatepass")[: at["character"]].decode("utf-8", "surrogatepass"))
        return index + 1, starts[index] + column

    wanted = set(job.rule_ids)
    hits = set()
    for diagnostic in diagnostics:
        rule_id = diagnostic.get("code")
        if rule_id not in known:
            raise ScannerError(f"semgrep reported an unknown rule {rule_id!r}")
        if rule_id in wanted:
            line, start = position(diagnostic["range"]["start"])
            end_line, end = position(diagnostic["range"]["end"])
            hits.add(SemgrepHit(rule_id, start, end, line, end_line))
    return sorted(hits, key=lambda hit: (hit.start, hit.end, hit.rule_id))


def _semgrep_core() -> Path:
    spec = find_spec("semgrep")
    locations = spec.submodule_search_locations if spec is not None else None
    core = Path(next(iter(locations)), "bin", "semgrep-core") if locations else None
    if core is None or not core.is_file():
        raise ScannerError("semgrep is not installed (pip install semgrep): Code Shield's semgrep tier needs it")
    return core


def _environment(root: Path) -> dict[str, str]:
    return {
        "PATH": str(root / "bin"),
        "HOME": str(root),
        "TMPDIR": str(root),
        "LANG": "C.UTF-8",
        "SEMGREP_ENABLE_VERSION_CHECK": "0",
        "SEMGREP_SEND_METRICS": "off",
    }


def _prepare(root: Path, rules: Sequence[Rule]) -> None:
    """Lay out the private directory: rules, an empty workspace, and a PATH with only ``uname``."""
    semgrep_rules = [
        {"id": r.id, "languages": [SEMGREP_LANGUAGE[r.language]], "severity": "ERROR", "message": r.message}
        | (r.semgrep or {})
        for r in rules
    ]
    (root / "rules.yaml").write_text(json.dumps({"rules": semgrep_rules}), encoding="utf-8")  # JSON is YAML
    (root / "no-targets.json").write_text('["Targets", []]', encoding="utf-8")
    (root / "ws").mkdir()
    (root / "ws" / ".semgrepignore").touch()
    (root / "bin").mkdir()
    if uname := shutil.which("uname"):
        (root / "bin" / "uname").symlink_to(uname)


async def _check_rules(core: Path, root: Path) -> None:
    """Raise ScannerError naming every rule semgrep cannot parse."""
    process = await asyncio.create_subprocess_exec(
        core, "-rules", "rules.yaml", "-targets", "no-targets.json", "-json", cwd=root, env=_environment(root),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    try:
        errors = json.loads(output[output.index(b"{") :])["errors"]
    except (ValueError, KeyError):
        raise ScannerError(f"semgrep-core could not check the rules (exit code {process.returncode})") from None
    if errors:
        problems = "; ".join(f"{e.get('rule_id', '?')}: {e.get('message', '').strip()}" for e in errors)
        raise ScannerError(f"invalid semgrep rules: {problems}")


class SharedSemgrep:
    """A :class:`SemgrepTier` on an event loop of its own, usable from any loop and thread.

    The pipeline's sync API runs each thread on its own loop, and a subprocess belongs to the loop that started it,
    so the tier lives on a daemon thread's loop and callers await it through ``run_coroutine_threadsafe``. The
    process starts in the background as soon as this object exists (not on a request); the first scan waits for it.
    """

    def __init__(self, rules: Sequence[Rule], *, timeout: float = 10.0) -> None:
        _semgrep_core()  # fail at start-up, with the reason, when semgrep is not installed
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="guardrails-semgrep", daemon=True)
        self._thread.start()
        self._tier = SemgrepTier(rules, timeout=timeout)
        self._started = asyncio.run_coroutine_threadsafe(self._tier.start(), self._loop)

    async def scan(self, jobs: Sequence[SemgrepJob]) -> list[list[SemgrepHit]]:
        """The tier's answer for ``jobs``; cancelling the caller cancels the scan (and retires that process)."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._scan(jobs), self._loop))

    async def _scan(self, jobs: Sequence[SemgrepJob]) -> list[list[SemgrepHit]]:
        await asyncio.wrap_future(self._started)
        return await self._tier.scan(jobs)

    async def aclose(self) -> None:
        if self._loop.is_closed():
            return
        try:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._tier.aclose(), self._loop))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 10)
            self._loop.close()
