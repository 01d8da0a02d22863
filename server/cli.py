"""``guardrails serve`` and ``python -m server serve|hash-key``.

``serve`` reads settings from its arguments over ``GUARDRAILS_*`` environment variables over defaults, builds the
app once and runs it under uvicorn; SIGTERM/SIGINT stop accepting connections, let in-flight requests finish (up to
``--shutdown-timeout``) and flush the audit log; then the process ends by that signal, as uvicorn does. Exit
codes: 2 for bad settings, 3 for a failed start (the log says what to fix).

``hash-key`` prints the entry for a key (a new random one unless given on standard input), for a keys file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["serve", "hash_key", "main", "serve_parser"]

EXIT_OK, EXIT_ERROR = 0, 2


def serve_parser(prog: str = "guardrails serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the OpenAI-compatible sidecar: every request guarded by the policy and audited. "
        "Settings also come from GUARDRAILS_* environment variables (arguments win).",
    )
    parser.add_argument("--policy", help="policy file or built-in name (default: default)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--upstream", dest="upstream_url", metavar="URL", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1"
    )
    where.add_argument("--model", dest="model_path", metavar="PATH", help="checkpoint for the embedded engine")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8080)")
    parser.add_argument("--keys-file", metavar="FILE", help="YAML/JSON list of API key entries (hashes)")
    parser.add_argument("--served-model", metavar="NAME", help="model name sent upstream and listed by /v1/models")
    parser.add_argument("--stream-mode", choices=["buffered", "async"], help="default streaming moderation")
    parser.add_argument("--upstream-timeout", type=float, metavar="SECONDS")
    parser.add_argument("--shutdown-timeout", type=float, metavar="SECONDS")
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        default=None,
        help="serve without API keys (local development only)",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return parser


def serve(argv: Sequence[str] | None = None) -> int:
    args = serve_parser().parse_args(argv)
    from pydantic import ValidationError

    from server.settings import Settings

    given = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**given)
    except (ValidationError, ValueError) as exc:
        print(f"guardrails serve: invalid settings: {exc}", file=sys.stderr)
        return EXIT_ERROR
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    from guardrails import GuardrailError
    from guardrails.policy import load_policy, load_routes
    from server.app import create_app

    try:
        load_routes(load_policy(settings.policy))  # a bad policy fails here, with its file and line, not in uvicorn
        app = create_app(settings)
    except (ValueError, GuardrailError) as exc:
        print(f"guardrails serve: {exc}", file=sys.stderr)
        return EXIT_ERROR
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # our own request log line carries no query strings or content
        proxy_headers=False,  # nothing reads the client's address: no X-Forwarded-* rewriting on every request
        timeout_graceful_shutdown=settings.shutdown_timeout,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.run()
    return EXIT_OK if server.started else EXIT_ERROR


def hash_key(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server hash-key", description="Print a key entry for a keys file (a new key unless piped in)."
    )
    parser.add_argument("--scheme", choices=["sha256", "scrypt"], default="sha256")
    parser.add_argument("--tenant", default="default")
    parser.add_argument("--route", default=None)
    parser.add_argument("--admin", action="store_true")
    parser.add_argument("--stdin", action="store_true", help="read the key from standard input instead")
    args = parser.parse_args(argv)
    from server.auth import hash_key as digest
    from server.auth import new_key

    key = sys.stdin.readline().strip() if args.stdin else new_key()
    if not key:
        print("hash-key: empty key", file=sys.stderr)
        return EXIT_ERROR
    if not args.stdin:
        print(f"# the key (give it to the tenant; it is not stored): {key}")
    entry = f'- {{hash: "{digest(key, scheme=args.scheme)}", tenant: {args.tenant}'
    entry += f", route: {args.route}" if args.route else ""
    entry += ", admin: true}" if args.admin else "}"
    print(entry)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"serve": serve, "hash-key": hash_key}
    if not argv or argv[0] not in commands:
        print("usage: python -m server {serve,hash-key} [options]   (--help on each)", file=sys.stderr)
        return EXIT_ERROR
    return commands[argv[0]](argv[1:])
