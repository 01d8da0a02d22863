"""The ``guardrails`` command.

Exit codes, for shell pipelines and CI: 0 allowed (or warned, or redacted), 1 blocked, 2 error (bad policy,
unreadable input, bad usage).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from guardrails import __version__
from guardrails._exceptions import GuardrailError
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from guardrails.demo import run_demo

    return run_demo(args.policy)


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

    demo = commands.add_parser("demo", help="run allowed and blocked exchanges through a policy")
    demo.add_argument("--policy", default="default", help="policy file or built-in name (default: default)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except GuardrailError as exc:
        print(f"guardrails: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_OK
