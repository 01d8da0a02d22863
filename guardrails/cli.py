"""The ``guardrails`` command.

Exit codes, for shell pipelines and CI: 0 allowed (or warned, or redacted), 1 blocked (``audit verify``: the chain
is broken), 2 error (bad policy, unreadable input, missing database, bad usage).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from guardrails import __version__
from guardrails._exceptions import GuardrailError
from guardrails.audit.settings import DEFAULT_DB
from guardrails.policy import builtin_policies, load_policy, load_routes, policy_reference

__all__ = ["main"]

EXIT_OK, EXIT_BLOCKED, EXIT_ERROR = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's default exit code 2 is ours too; keep its message
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def _read_text(value: str | None) -> str:
    if value is not None and value != "-":
        return value
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GuardrailError(f"input is not UTF-8 text (invalid byte at offset {exc.start}); decode it first") from None


def _cmd_scan(args: argparse.Namespace) -> int:
    from guardrails.pipeline import Pipeline

    text = _read_text(args.text)
    with Pipeline.from_policy(args.policy) as pipe:
        if args.stage == "input":
            result = pipe.scan_input(text, route=args.route)
        else:
            context = [{"role": "user", "content": args.prompt}] if args.prompt else []
            result = pipe.scan_output(context, text, route=args.route)
    json.dump(result.to_dict(), sys.stdout, ensure_ascii=False, indent=2 if args.pretty else None)
    sys.stdout.write("\n")
    return EXIT_BLOCKED if result.blocked else EXIT_OK


def _cmd_policy_check(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for ref in args.files:
        try:
            policy = load_policy(ref)
            routes = load_routes(policy)
        except GuardrailError as exc:
            print(exc, file=sys.stderr)
            status = EXIT_ERROR
            continue
        stages = ", ".join(
            f"{name}: {len(getattr(policy, name).scanners)} scanners ({getattr(policy, name).mode})"
            for name in ("input", "output")
        )
        route_text = f", routes: {', '.join(routes)}" if routes else ""
        print(f"ok {policy.source}: policy {policy.name!r} {policy.hash[:12]}; {stages}{route_text}")
    return status


def _cmd_policy_reference(args: argparse.Namespace) -> int:
    sys.stdout.write(policy_reference())
    return EXIT_OK


def _cmd_policy_list(args: argparse.Namespace) -> int:
    for name, path in builtin_policies().items():
        print(f"{name}\t{path}")
    return EXIT_OK


def _store(args: argparse.Namespace) -> Any:
    from guardrails.audit import AuditStore

    try:
        return AuditStore(args.db)
    except FileNotFoundError:
        raise GuardrailError(f"no audit database at {args.db}; run some requests first, or pass --db PATH") from None


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    from guardrails.audit import parse_duration

    try:
        since = parse_duration(args.since) if args.since else None
    except ValueError as exc:
        raise GuardrailError(str(exc)) from None
    return {
        "since": since,
        "decision": args.decision,
        "scanner": args.scanner,
        "tenant": args.tenant,
        "category": args.category,
    }


def _cmd_audit_list(args: argparse.Namespace) -> int:
    from guardrails.audit.store import format_table

    with _store(args) as store:
        records = store.records(limit=args.limit, **_filters(args))
    if args.format == "json":
        json.dump(records, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_table(records))
    return EXIT_OK


def _cmd_audit_show(args: argparse.Namespace) -> int:
    with _store(args) as store:
        record = store.get(args.id)
    if record is None:
        raise GuardrailError(f"no audit record with request id or seq {args.id!r} in {args.db}")
    json.dump(record, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def _cmd_audit_stats(args: argparse.Namespace) -> int:
    with _store(args) as store:
        stats = store.stats(**_filters(args))
    if args.format == "json":
        json.dump(stats, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    print(f"records: {stats['records']}")
    for title, key in (("by decision", "by_decision"), ("by scanner", "by_scanner"), ("by category", "by_category")):
        print(f"{title}:")
        for name, count in stats[key].items():
            print(f"  {name:<28} {count}")
    if stats["latency_ms"]:
        print("latency ms: " + ", ".join(f"{k} {v:.3f}" for k, v in stats["latency_ms"].items()))
    return EXIT_OK


def _cmd_audit_export(args: argparse.Namespace) -> int:
    with _store(args) as store:
        count = store.export(sys.stdout, format=args.format, **_filters(args))
    print(f"exported {count} records", file=sys.stderr)
    return EXIT_OK


def _cmd_audit_prune(args: argparse.Namespace) -> int:
    from guardrails.audit import parse_duration

    try:
        older_than = parse_duration(args.older_than)
    except ValueError as exc:
        raise GuardrailError(str(exc)) from None
    with _store(args) as store:
        deleted = store.prune(older_than)
    print(f"pruned {deleted} records older than {args.older_than}; the chain stays verifiable from its anchor")
    return EXIT_OK


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    import os

    key = None
    if args.key_env:
        value = os.environ.get(args.key_env)
        if not value:
            raise GuardrailError(f"--key-env {args.key_env}: that environment variable is not set")
        key = value.encode()
    with _store(args) as store:
        report = store.verify(key)
    print(report)
    return EXIT_OK if report.ok else EXIT_BLOCKED


def _cmd_eval(args: argparse.Namespace) -> int:
    import asyncio
    import time
    from pathlib import Path

    from guardrails.audit import AuditSettings
    from guardrails.evaluate import markdown, read_rows, report, score_rows, write_outputs
    from guardrails.pipeline import Pipeline

    policy = load_policy(args.policy)
    if args.scanner:
        stages = {}
        for stage in ("input", "output"):
            settings = getattr(policy, stage)
            kept = [s for s in settings.scanners if s.scanner_id == args.scanner]
            stages[stage] = settings.model_copy(update={"scanners": kept})
        if not stages["input"].scanners and not stages["output"].scanners:
            ids = sorted({s.scanner_id for st in ("input", "output") for s in getattr(policy, st).scanners})
            raise GuardrailError(f"policy {policy.name!r} has no scanner {args.scanner!r}; its scanners: {ids}")
        policy = policy.model_copy(update=stages)
    policy = policy.model_copy(update={"audit": AuditSettings(record="none")})  # evaluation writes no audit records
    rows = list(read_rows(args.files, limit_per_set=args.limit_per_set))
    if not rows:
        raise GuardrailError("no rows in the given files")
    with Pipeline(policy) as pipe:
        start = time.perf_counter()
        outcomes = asyncio.run(score_rows(pipe, rows, concurrency=args.concurrency, progress=not args.quiet))
        data = report(outcomes, seconds=time.perf_counter() - start)
    sys.stdout.write(markdown(data))
    written = write_outputs(data, Path(args.out))
    print(f"\nwrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from guardrails.demo import run_demo

    return run_demo(args.policy, model=not args.no_model)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="guardrails", description="Guard LLM inputs and outputs with YAML policies.")
    parser.add_argument("--version", action="version", version=f"guardrails {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    scan = commands.add_parser(
        "scan",
        help="scan one text; print the verdict as JSON",
        description="Scan TEXT (or standard input with '-' or nothing) and print the result as JSON. "
        "Exit 0 allowed/warned/redacted, 1 blocked, 2 error.",
    )
    scan.add_argument("text", nargs="?", metavar="TEXT | -", help="text to scan; '-' or nothing reads stdin")
    scan.add_argument("--policy", default="default", help="policy file or built-in name (default: default)")
    scan.add_argument("--stage", choices=("input", "output"), default="input", help="scan as a prompt or a response")
    scan.add_argument("--route", help="named route (tenant) of the policy")
    scan.add_argument("--prompt", help="with --stage output: the user turn the response answers")
    scan.add_argument("--pretty", action="store_true", help="indent the JSON")
    scan.set_defaults(func=_cmd_scan)

    policy = commands.add_parser("policy", help="check, list and document policies")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, parser_class=_Parser)
    check = policy_commands.add_parser(
        "check", help="validate policy files", description="Validate policy files; exit 2 naming file, line and key."
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=_cmd_policy_check)
    reference = policy_commands.add_parser("reference", help="print every policy key with its default (markdown)")
    reference.set_defaults(func=_cmd_policy_reference)
    listing = policy_commands.add_parser("list", help="list the built-in policies")
    listing.set_defaults(func=_cmd_policy_list)

    audit = commands.add_parser("audit", help="query, export, prune and verify the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, parser_class=_Parser)

    def audit_parser(name: str, help: str, *, filters: bool = False) -> argparse.ArgumentParser:
        sub = audit_commands.add_parser(name, help=help, description=help)
        sub.add_argument("--db", default=DEFAULT_DB, help=f"audit database (default: {DEFAULT_DB})")
        if filters:
            sub.add_argument("--since", help="only records newer than this: 30s, 15m, 1h, 7d, 2w")
            sub.add_argument("--decision", choices=("block", "redact", "warn", "allow"))
            sub.add_argument("--scanner", help="only records where this scanner id fired or failed")
            sub.add_argument("--tenant", help="only records of this route/tenant")
            sub.add_argument("--category", help="only records with this category (e.g. S9, prompt_injection)")
        return sub

    listing = audit_parser("list", "list records, newest first", filters=True)
    listing.add_argument("--limit", type=int, default=50, help="at most this many records (default: 50)")
    listing.add_argument("--format", choices=("table", "json"), default="table")
    listing.set_defaults(func=_cmd_audit_list)
    show = audit_parser("show", "print one record as JSON")
    show.add_argument("id", help="request id or sequence number")
    show.set_defaults(func=_cmd_audit_show)
    stats = audit_parser("stats", "counts by decision, scanner and category, with latency percentiles", filters=True)
    stats.add_argument("--format", choices=("table", "json"), default="table")
    stats.set_defaults(func=_cmd_audit_stats)
    export = audit_parser("export", "write records to stdout, oldest first", filters=True)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.set_defaults(func=_cmd_audit_export)
    prune = audit_parser("prune", "delete old records; the chain stays verifiable")
    prune.add_argument("--older-than", required=True, help="age of records to delete: 30d, 12h, 2w")
    prune.set_defaults(func=_cmd_audit_prune)
    verify = audit_parser("verify", "walk the hash chain; exit 1 naming the first edited, deleted or moved record")
    verify.add_argument("--key-env", help="environment variable with the HMAC key, when the policy sets one")
    verify.set_defaults(func=_cmd_audit_verify)

    evaluate = commands.add_parser(
        "eval",
        help="measure a policy (or one of its scanners) on labelled JSON-lines data",
        description="Run labelled rows (the shared/data schema) through a policy and report ROC AUC, TPR at 1% FPR, "
        "recall, FPR, per-category figures and latency per set: a markdown table, report.json and PNG plots.",
    )
    evaluate.add_argument("files", nargs="+", metavar="FILE", help="JSON-lines files")
    evaluate.add_argument("--policy", default="default", help="policy file or built-in name (default: default)")
    evaluate.add_argument("--scanner", help="evaluate only the scanner with this id")
    evaluate.add_argument("--out", default="eval-out", help="directory for report.md, report.json and plots")
    evaluate.add_argument("--limit-per-set", type=int, help="at most this many rows of each set")
    evaluate.add_argument("--concurrency", type=int, default=8, help="rows in flight at once (default: 8)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(func=_cmd_eval)

    demo = commands.add_parser("demo", help="run allowed and blocked exchanges through a policy")
    demo.add_argument("--policy", default="default", help="policy file or built-in name (default: default)")
    demo.add_argument("--no-model", action="store_true", help="skip the exchange with the default model")
    demo.set_defaults(func=_cmd_demo)

    generate = commands.add_parser("generate", help="answer one prompt with the generation engine (no guards)")
    generate.add_argument("prompt", help="the user turn")
    generate.add_argument("--model", help="checkpoint directory or .gguf file (default: SmolLM2-135M-Instruct)")
    generate.add_argument("--max-tokens", type=int, default=256)
    generate.set_defaults(func=_cmd_generate)
    chat = commands.add_parser("chat", help="chat with the generation engine, guarded by a policy")
    chat.add_argument("--model", help="checkpoint directory or .gguf file (default: SmolLM2-135M-Instruct)")
    chat.add_argument("--policy", default="default", help="policy file or built-in name (default: default)")
    chat.add_argument("--max-tokens", type=int, default=512)
    chat.set_defaults(func=_cmd_chat)

    serve = commands.add_parser(
        "serve", help="run the OpenAI-compatible sidecar proxy (guardrails serve --help)", add_help=False
    )
    serve.add_argument("args", nargs=argparse.REMAINDER)  # listed here for the help; main() hands it over whole
    return parser


def _engine(model: str | None) -> Any:
    from guardrails.engine import Engine

    return Engine.from_pretrained(model, chat=True)  # all cores: the native decode kernels split rows across them


def _cmd_generate(args: argparse.Namespace) -> int:
    engine = _engine(args.model)
    try:
        for text in engine.stream_sync(args.prompt, max_tokens=args.max_tokens):
            print(text, end="", flush=True)
        print()
    finally:
        engine.close()
    return EXIT_OK


def _cmd_chat(args: argparse.Namespace) -> int:
    from guardrails.pipeline import Pipeline

    engine = _engine(args.model)
    messages: list[dict[str, str]] = []
    try:
        with Pipeline.from_policy(args.policy) as pipe:
            print(f"chat with policy {pipe.policy.name!r}; an empty line or end of input quits")
            while True:
                try:
                    line = input("> ").strip()
                except EOFError:
                    break
                if not line:
                    break
                messages.append({"role": "user", "content": line})
                stream = pipe.stream(messages, generate=lambda m: engine.stream(m, max_tokens=args.max_tokens))
                pieces = []
                for chunk in stream:
                    print(chunk, end="", flush=True)
                    pieces.append(chunk)
                print()
                reply = "".join(pieces)
                if stream.result is not None and stream.result.blocked:
                    messages.pop()  # a refused turn stays out of the history
                else:
                    messages.append({"role": "assistant", "content": reply})
    finally:
        engine.close()
    return EXIT_OK


def _serve(argv: list[str]) -> int:
    from server.cli import serve  # the server's dependencies load only for this command

    return serve(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # the sidecar has its own parser (and its own --help)
        return _serve(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except GuardrailError as exc:
        print(f"guardrails: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_OK
