"""`control-plane serve`: run the control plane (checks what an operator can fix first)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from control_plane.cli.common import LOG_LEVELS, positive_int, settings_from
from control_plane.settings import Settings

__all__ = ["add_serve"]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from control_plane.http.app import create_app
    from control_plane.http.server import head_limits, uvicorn_config
    from control_plane.observability.logging import configure_logging
    from control_plane.observability.tracing import TracingConfigError

    settings = settings_from(args)
    if args.worker_of is not None:  # a worker process of `serve --workers N` (hidden)
        return _serve_worker(args, settings)
    if args.workers is not None:
        settings = settings.model_copy(update={"workers": args.workers})
    if settings.workers > 1 and settings.replica_of is not None:
        print(
            "control-plane serve: --workers runs with a control plane, not with "
            "--replica-of (run more replicas instead)",
            file=sys.stderr,
        )
        return 2
    if settings.workers > 1 and settings.events_url and settings.exposure_salt is None:
        print(
            "control-plane serve: --workers with CP_EVENTS_URL needs CP_EXPOSURE_SALT "
            "(workers publish records as replicas do)",
            file=sys.stderr,
        )
        return 2
    if settings.replica_of is None and not settings.flags_dir.is_dir():
        print(
            f"control-plane serve: flag directory {settings.flags_dir} does not exist "
            "(`control-plane init` writes the shipped examples there; --flags or "
            "CP_FLAGS_DIR names another)",
            file=sys.stderr,
        )
        return 2
    ports = [("port", settings.host, settings.port)]
    if settings.replica_of is None:  # a replica serves no sync port of its own
        ports.append(("sync port", settings.sync_host, settings.sync_port))
    for label, host, port in ports:
        problem = _port_problem(host, port)
        if problem:
            print(f"control-plane serve: {label} {host}:{port} {problem}", file=sys.stderr)
            return 2
    if args.log_level not in LOG_LEVELS:  # CP_LOG_LEVEL is the default, unchecked by argparse
        print(
            f"control-plane serve: log level {args.log_level!r} is not one of "
            f"{', '.join(LOG_LEVELS)}",
            file=sys.stderr,
        )
        return 2
    # Before the app exists, so that its startup lines are in the chosen format too.
    log_config = configure_logging(settings.log_format, args.log_level)
    try:
        app = create_app(settings)
    except TracingConfigError as exc:
        print(f"control-plane serve: tracing: {exc}", file=sys.stderr)
        return 2
    if settings.workers > 1:  # the primary and its workers, on SO_REUSEPORT sockets
        from control_plane.workers.serving import run_primary

        run_primary(
            app,
            host=settings.host,
            port=settings.port,
            limits=head_limits(settings),
            log_level=args.log_level,
            access_log=args.access_log,
            log_config=log_config,
        )
        return 0
    config = uvicorn_config(
        app,
        host=settings.host,
        port=settings.port,
        limits=head_limits(settings),
        fast_path=app.fast_path,
        log_level=args.log_level,
        access_log=args.access_log,
        log_config=log_config,
    )
    uvicorn.Server(config).run()
    return 0


def _serve_worker(args: argparse.Namespace, settings: Settings) -> int:
    from control_plane.observability.logging import configure_logging
    from control_plane.workers.worker import WorkerArgs, run_worker

    log_config = configure_logging(settings.log_format, args.log_level)
    return run_worker(
        settings,
        WorkerArgs(
            primary=args.worker_of,
            index=args.worker_index,
            fd=args.worker_fd,
            parent=args.worker_parent,
            log_level=args.log_level,
            access_log=args.access_log,
        ),
        log_config,
    )


def _workers(text: str) -> int:
    """--workers: a whole number from 1, or `auto` (one per core)."""
    if text.strip().lower() == "auto":
        return max(1, min(64, os.cpu_count() or 1))
    value = positive_int(text)
    if value > 64:
        raise argparse.ArgumentTypeError(f"{text} workers: at most 64")
    return value


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


def add_serve(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = commands.add_parser(
        "serve",
        help="run the control plane (routing API, admin API, flag distribution)",
        description="Run the control plane. Every option can also be set by environment "
        "variable: CP_FLAGS_DIR, CP_HOST, CP_PORT, DATABASE_URL, CP_SYNC_PORT, "
        "CP_SYNC_HOST, CP_SYNC_TLS_CERT_FILE, CP_SYNC_TLS_KEY_FILE, CP_LOG_LEVEL, "
        "CP_LOG_FORMAT, CP_WORKERS (sync tokens: CP_SYNC_TOKENS). Traces are "
        "exported over OTLP/HTTP when "
        "CP_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is set.",
    )
    serve.add_argument(
        "--flags",
        dest="flags_dir",
        type=Path,
        help="flag directory (default: CP_FLAGS_DIR or ./flags)",
    )
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080)")
    serve.add_argument(
        "--sync-port",
        dest="sync_port",
        type=int,
        help="port of the flagd sync service (flagd.sync.v1) replicas sync "
        "flags from (default 8015; 0 disables it)",
    )
    serve.add_argument(
        "--sync-host",
        dest="sync_host",
        help="listen address of the sync service (default 127.0.0.1, whatever "
        "--host is; another address needs CP_SYNC_TOKENS or "
        "CP_GATEWAY_TOKENS)",
    )
    serve.add_argument(
        "--sync-tls-cert",
        dest="sync_tls_cert_file",
        type=Path,
        help="PEM certificate chain: serve the sync service over TLS only",
    )
    serve.add_argument(
        "--sync-tls-key",
        dest="sync_tls_key_file",
        type=Path,
        help="PEM private key of --sync-tls-cert",
    )
    serve.add_argument(
        "--replica-of",
        dest="replica_of",
        metavar="HOST:PORT",
        help="run as a routing replica of the control plane (or flagd) whose "
        "flagd.sync.v1 port this is: routing API, OFREP, health and "
        "metrics from the synced flags; no database, no admin API "
        "(CP_REPLICA_OF; CP_REPLICA_TOKEN, CP_REPLICA_CA_FILE)",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        metavar="N|auto",
        help="processes serving the port (default 1, CP_WORKERS): the primary "
        "plus N-1 decide workers on SO_REUSEPORT, fed over flagd.sync.v1 "
        "from the primary; auto: one per core",
    )
    # -- a worker process of `serve --workers N`: started by the primary only (hidden) --
    serve.add_argument("--worker-of", dest="worker_of", help=argparse.SUPPRESS)
    serve.add_argument(
        "--worker-index", dest="worker_index", type=int, default=0, help=argparse.SUPPRESS
    )
    serve.add_argument(
        "--worker-fd", dest="worker_fd", type=int, default=-1, help=argparse.SUPPRESS
    )
    serve.add_argument(
        "--worker-parent", dest="worker_parent", type=int, default=0, help=argparse.SUPPRESS
    )
    serve.add_argument(
        "--database-url",
        dest="database_url",
        help="SQLAlchemy URL (default: sqlite:///./control-plane.db)",
    )
    serve.add_argument(
        "--log-level", default=os.environ.get("CP_LOG_LEVEL", "info"), choices=LOG_LEVELS
    )
    serve.add_argument(
        "--log-format",
        dest="log_format",
        choices=["auto", "json", "text"],
        help="log lines as JSON objects (one per line), plain text, or auto: "
        "text on a terminal, JSON otherwise (the default)",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (off by default: the hot path is per request)",
    )
    serve.set_defaults(command=_serve)
