"""The `control-plane` command: serve the control plane, and the ops tools around flags.

Each subcommand is a small function taking parsed arguments; errors an operator can fix are
printed as one clear message with exit status 1 or 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from control_plane.cli_init import add_init
from control_plane.cli_tester import add_tester_token
from control_plane.experiments.cli_commands import add_canary, add_experiments

__all__ = ["main"]

Command = Callable[[argparse.Namespace], int]
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _settings_from(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Settings from explicit options over environment over defaults."""
    from control_plane.settings import Settings

    explicit = {
        name: getattr(args, name)
        for name in ("flags_dir", "host", "port", "database_url", "sync_port", "log_format",
                     # the sync port's own address and TLS files (trust boundary settings)
                     "sync_host", "sync_tls_cert_file", "sync_tls_key_file")
        if getattr(args, name, None) is not None
    }
    return Settings(**explicit)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from control_plane.http.app import create_app
    from control_plane.http.server import head_limits, uvicorn_config
    from control_plane.observability.logging import configure_logging
    from control_plane.observability.tracing import TracingConfigError

    settings = _settings_from(args)
    if not settings.flags_dir.is_dir():
        print(f"control-plane serve: flag directory {settings.flags_dir} does not exist "
              "(`control-plane init` writes the shipped examples there; --flags or "
              "CP_FLAGS_DIR names another)", file=sys.stderr)
        return 2
    for label, host, port in (("port", settings.host, settings.port),
                              ("sync port", settings.sync_host, settings.sync_port)):
        problem = _port_problem(host, port)
        if problem:
            print(f"control-plane serve: {label} {host}:{port} {problem}", file=sys.stderr)
            return 2
    if args.log_level not in _LOG_LEVELS:  # CP_LOG_LEVEL is the default, unchecked by argparse
        print(f"control-plane serve: log level {args.log_level!r} is not one of "
              f"{', '.join(_LOG_LEVELS)}", file=sys.stderr)
        return 2
    # Before the app exists, so that its startup lines are in the chosen format too.
    log_config = configure_logging(settings.log_format, args.log_level)
    try:
        app = create_app(settings)
    except TracingConfigError as exc:
        print(f"control-plane serve: tracing: {exc}", file=sys.stderr)
        return 2
    config = uvicorn_config(app, host=settings.host, port=settings.port,
                            limits=head_limits(settings), log_level=args.log_level,
                            access_log=args.access_log, log_config=log_config)
    uvicorn.Server(config).run()
    return 0


def _port_problem(host: str, port: int) -> str | None:
    """Why `port` cannot be bound (said before starting, instead of a startup traceback)."""
    if port == 0:
        return None
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return f"cannot be used: {exc.strerror} (choose another with the option or 0)"
    return None


def _add_serve(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = commands.add_parser(
        "serve", help="run the control plane (routing API, admin API, flag distribution)",
        description="Run the control plane. Every option can also be set by environment "
                    "variable: CP_FLAGS_DIR, CP_HOST, CP_PORT, DATABASE_URL, CP_SYNC_PORT, "
                    "CP_SYNC_HOST, CP_SYNC_TLS_CERT_FILE, CP_SYNC_TLS_KEY_FILE, CP_LOG_LEVEL, "
                    "CP_LOG_FORMAT (sync tokens: CP_SYNC_TOKENS). Traces are exported over "
                    "OTLP/HTTP when "
                    "CP_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is set.")
    serve.add_argument("--flags", dest="flags_dir", type=Path,
                       help="flag directory (default: CP_FLAGS_DIR or ./flags)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080)")
    serve.add_argument("--sync-port", dest="sync_port", type=int,
                       help="port of the flagd sync service (flagd.sync.v1) replicas sync "
                            "flags from (default 8015; 0 disables it)")
    serve.add_argument("--sync-host", dest="sync_host",
                       help="listen address of the sync service (default 127.0.0.1, whatever "
                            "--host is; another address needs CP_SYNC_TOKENS or "
                            "CP_GATEWAY_TOKENS)")
    serve.add_argument("--sync-tls-cert", dest="sync_tls_cert_file", type=Path,
                       help="PEM certificate chain: serve the sync service over TLS only")
    serve.add_argument("--sync-tls-key", dest="sync_tls_key_file", type=Path,
                       help="PEM private key of --sync-tls-cert")
    serve.add_argument("--database-url", dest="database_url",
                       help="SQLAlchemy URL (default: sqlite:///./control-plane.db)")
    serve.add_argument("--log-level", default=os.environ.get("CP_LOG_LEVEL", "info"),
                       choices=_LOG_LEVELS)
    serve.add_argument("--log-format", dest="log_format", choices=["auto", "json", "text"],
                       help="log lines as JSON objects (one per line), plain text, or auto: "
                            "text on a terminal, JSON otherwise (the default)")
    serve.add_argument("--access-log", action="store_true",
                       help="log every request (off by default: the hot path is per request)")
    serve.set_defaults(command=_serve)


def _validate(args: argparse.Namespace) -> int:
    from control_plane.flagstore.validate_command import run_validate

    path = args.path if args.path is not None else _settings_from(args).flags_dir
    return run_validate(path)


def _add_validate(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    validate = commands.add_parser(
        "validate", help="check flag files (syntax, schema, meaning) without serving them",
        description="Validate a flag directory (every *.flagd.json/.yaml/.yml, merged) or one "
                    "flag file. Prints each issue as file:line:col: path: message; exit status "
                    "1 on any error, 2 if PATH does not exist, 0 when valid.")
    validate.add_argument("path", nargs="?", type=Path, metavar="PATH",
                          help="flag directory or file (default: CP_FLAGS_DIR or ./flags)")
    validate.set_defaults(command=_validate)


def _history(args: argparse.Namespace) -> int:
    from control_plane.db.history_command import run_history

    return run_history(_settings_from(args).database_url, limit=args.limit,
                       diffs=not args.no_diff, as_json=args.json)


def _add_history(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    history = commands.add_parser(
        "history", help="list stored flag set versions with who changed what",
        description="Print the flag set versions stored in the database, newest first: version, "
                    "time, source (file/api/rollback), actor, flag count, content hash, "
                    "message, and the changed JSON paths. Exit status 1 when there is no "
                    "history to read.")
    history.add_argument("--limit", type=_positive_int, default=20,
                         help="how many versions to show (default 20)")
    history.add_argument("--database-url", dest="database_url",
                         help="SQLAlchemy URL (default: DATABASE_URL or "
                              "sqlite:///./control-plane.db)")
    history.add_argument("--no-diff", action="store_true", help="leave out the changed paths")
    history.add_argument("--json", action="store_true", help="print JSON instead of a table")
    history.set_defaults(command=_history)


def _simulate(args: argparse.Namespace) -> int:
    from control_plane.simulate import run_simulate

    settings = _settings_from(args)
    compare = tuple(args.compare_bucketing) if args.compare_bucketing else None
    return run_simulate(settings.flags_dir, args.flag, args.users, args.header or [],
                        settings.header_rules, key_prefix=args.key_prefix,
                        compare_bucketing=compare)


def _add_simulate(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    simulate = commands.add_parser(
        "simulate", help="evaluate a flag for N synthetic users and compare the split",
        description="Evaluate FLAG for N synthetic users (targeting keys user-0, user-1, ...) "
                    "with the given request headers, through the flagd provider, and print "
                    "the variant split beside the configured weights with a chi-square "
                    "goodness-of-fit p-value.")
    simulate.add_argument("flag", metavar="FLAG", help="flag key, e.g. ab-test-router")
    simulate.add_argument("--users", type=_positive_int, required=True,
                          help="number of synthetic users")
    simulate.add_argument("--header", action="append", metavar="NAME=VALUE",
                          help="a request header every user sends (repeatable), e.g. "
                               "--header x-region=cn")
    simulate.add_argument("--flags", dest="flags_dir", type=Path,
                          help="flag directory (default: CP_FLAGS_DIR or ./flags)")
    simulate.add_argument("--key-prefix", default="user-",
                          help="prefix of the synthetic targeting keys (default user-)")
    simulate.add_argument("--compare-bucketing", nargs=2, metavar=("FROM", "TO"),
                          choices=["v2", "v3"],
                          help="instead, list who would move from one fractional bucketing "
                               "generation to the other (counts per from->to variant, sample "
                               "targeting keys), e.g. --compare-bucketing v2 v3")
    simulate.set_defaults(command=_simulate)


def _gateway_nginx(args: argparse.Namespace) -> int:
    from control_plane.gateway.command import run_gateway_nginx

    return run_gateway_nginx(_settings_from(args), flag=args.flag, listen=args.listen,
                             control_plane=args.control_plane, prefix=args.prefix,
                             log_port=args.log_port, log_host=args.log_host,
                             decision_timeout_ms=args.decision_timeout_ms)


def _add_gateway(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    gateway = commands.add_parser(
        "gateway", help="print a gateway configuration that routes by a flag",
        description="Print a complete gateway configuration for one routing flag.")
    kinds = gateway.add_subparsers(dest="gateway", required=True)
    nginx = kinds.add_parser(
        "nginx", help="nginx config: auth_request decisions, stable fallback, outcome log",
        description="Print a complete nginx config (nginx -p PREFIX -c FILE) that asks the "
                    "control plane for each request's backend, sets routing headers only from "
                    "trusted sources, falls back to the flag's default variant when no "
                    "decision can be had (X-Route-Fallback), and sends one outcome line per "
                    "request to the control plane's syslog listener. Re-run after changing "
                    "the flag's default variant. The gateway token is the first of "
                    "CP_GATEWAY_TOKENS. Exit status 2 (one line on stderr) for an unknown or "
                    "non-routing flag or an unusable value.")
    nginx.add_argument("--flag", required=True, help="the routing flag to route by")
    nginx.add_argument("--listen", required=True, metavar="ADDR",
                       help="address nginx listens on, e.g. 0.0.0.0:8000")
    nginx.add_argument("--control-plane", dest="control_plane", required=True, metavar="ADDR",
                       help="HOST:PORT of the control plane, e.g. 127.0.0.1:8080")
    nginx.add_argument("--prefix", type=Path, metavar="DIR",
                       help="nginx prefix for pid, logs and temp files (default ./nginx)")
    nginx.add_argument("--flags", dest="flags_dir", type=Path,
                       help="flag directory (default: CP_FLAGS_DIR or ./flags)")
    nginx.add_argument("--log-port", dest="log_port", type=int, metavar="N",
                       help="UDP port of the control plane's outcome listener "
                            "(default CP_GATEWAY_LOG_PORT; 0: no outcome log)")
    nginx.add_argument("--log-host", dest="log_host", metavar="HOST",
                       help="host of the outcome listener (default CP_GATEWAY_LOG_HOST)")
    nginx.add_argument("--decision-timeout-ms", dest="decision_timeout_ms", type=int,
                       default=250, metavar="N",
                       help="how long a decision may take before the fallback serves "
                            "(default 250)")
    nginx.set_defaults(command=_gateway_nginx)


def _add_shadow(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`control-plane shadow report|promote` (handlers: control_plane.shadow.command)."""
    from control_plane.shadow.command import promote_command, report_command

    shadow = commands.add_parser("shadow", help="shadow traffic: report, promote to a canary",
                                 description="Read a flag's shadow traffic report, or promote "
                                             "a shadow backend to a canary, through a running "
                                             "control plane's API.")
    kinds = shadow.add_subparsers(dest="shadow", required=True)
    for name, handler, text in (("report", report_command, "diff rates, status, latency"),
                                ("promote", promote_command,
                                 "the shadow becomes a variant and a canary starts")):
        sub = kinds.add_parser(name, help=text, description=text)
        sub.add_argument("flag", help="the routing flag")
        sub.add_argument("--url", default=os.environ.get("CP_URL", "http://127.0.0.1:8080"),
                         help="control plane base URL (default: CP_URL or "
                              "http://127.0.0.1:8080)")
        sub.add_argument("--token", default=os.environ.get("CP_TOKEN"),
                         help="admin API bearer token (default: CP_TOKEN); viewer for report, "
                              "operator for promote")
        if name == "report":
            sub.add_argument("--json", action="store_true", help="print the report as JSON")
        else:
            sub.add_argument("--backend", required=True, help="the shadow backend to promote")
            sub.add_argument("--variant", help="name of the new variant (default: the backend)")
            sub.add_argument("--canary", metavar="JSON",
                             help="canary spec fields, e.g. '{\"steps\": [5, 25, 100]}'")
        sub.set_defaults(command=handler)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="control-plane",
        description="Feature-flag control plane for model microservices.")
    commands = parser.add_subparsers(dest="subcommand", required=True)
    _add_serve(commands)
    _add_validate(commands)
    _add_history(commands)
    _add_simulate(commands)
    _add_gateway(commands)
    _add_shadow(commands)  # control_plane.shadow.command
    add_experiments(commands)
    add_canary(commands)
    add_tester_token(commands)
    add_init(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command = args.command
    try:
        return command(args)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            print(f"control-plane: invalid setting {where}: {error['msg']}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
