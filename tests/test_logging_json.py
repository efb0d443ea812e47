"""Structured logs: `control-plane serve` writes one JSON object per line (uvicorn's lines too),
with the decision id, flag, variant, backend, status and trace ids of each dispatch; plain text
when asked; bad log settings are one clear message."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import write_flags
from opentelemetry.sdk.trace import TracerProvider
from servers import BackendApp, ServerThread, free_port

from control_plane.observability.logging import JsonFormatter, logging_config, resolve_format

CLI = [str(Path(sys.executable).with_name("control-plane"))]
FLAG = "logged-router"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.LogRecord(
        "control_plane.dispatch",
        logging.INFO,
        __file__,
        1,
        "dispatch %s -> %s",
        ("d1", "model-b"),
        None,
    )
    record.__dict__.update(extra)
    return record


def test_json_formatter_puts_extra_fields_and_trace_ids_on_one_line() -> None:
    """A record becomes one JSON line with time, level, logger, message, its extra fields, and
    the active span's trace and span ids."""
    provider = TracerProvider()
    with provider.get_tracer("test").start_as_current_span("work") as span:
        line = JsonFormatter().format(_record(decision_id="d1", flag="f", status=200))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry.pop("time").endswith("Z")
    assert entry == {
        "level": "INFO",
        "logger": "control_plane.dispatch",
        "message": "dispatch d1 -> model-b",
        "decision_id": "d1",
        "flag": "f",
        "status": 200,
        "trace_id": f"{span.get_span_context().trace_id:032x}",
        "span_id": f"{span.get_span_context().span_id:016x}",
    }
    provider.shutdown()


def test_json_formatter_keeps_tracebacks_on_the_line() -> None:
    """An exception is one `exception` field (newlines escaped), never extra lines."""
    try:
        raise ValueError("broken backend table")
    except ValueError:
        record = _record(exc_info=sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert "trace_id" not in entry  # no span active
    assert entry["exception"].startswith("Traceback")
    assert "ValueError: broken backend table" in entry["exception"]


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_auto_format_is_text_on_a_terminal_and_json_otherwise() -> None:
    """`auto` picks text for a terminal (a person reads it) and JSON for files and pipes."""
    assert resolve_format("auto", _Stream(tty=True)) == "text"  # type: ignore[arg-type]
    assert resolve_format("auto", _Stream(tty=False)) == "json"  # type: ignore[arg-type]
    assert resolve_format("json", _Stream(tty=True)) == "json"  # type: ignore[arg-type]
    config = logging_config("json", "debug")
    assert config["root"]["level"] == "DEBUG"
    assert config["loggers"]["uvicorn.access"]["propagate"] is False


@pytest.fixture
def backend(flags_dir: Path) -> Iterator[BackendApp]:
    """One model backend behind FLAG."""
    app = BackendApp("model-b")
    with ServerThread(app) as server:
        write_flags(
            flags_dir,
            "logged.flagd.json",
            {
                FLAG: {
                    "state": "ENABLED",
                    "variants": {"b": {"backend": "model-b", "url": server.url}},
                    "defaultVariant": "b",
                }
            },
        )
        yield app


def _serve(
    flags_dir: Path, tmp_path: Path, *options: str, env: dict[str, str] | None = None
) -> tuple[httpx.Response, list[str]]:
    """Run `control-plane serve`, dispatch one request through it, stop it; its stderr lines."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "CP_"))
    }
    environment.update(env or {})
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                *CLI,
                "serve",
                "--flags",
                str(flags_dir),
                "--port",
                str(port),
                "--sync-port",
                "0",
                "--database-url",
                f"sqlite:///{tmp_path / 'cp.db'}",
                *options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            env=environment,
            cwd=tmp_path,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).is_success:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server never became ready"
                time.sleep(0.1)
            response = httpx.get(
                f"http://127.0.0.1:{port}/v1/dispatch/{FLAG}/v1/chat",
                headers={"x-user-id": "jane", "traceparent": TRACEPARENT},
            )
        finally:
            process.terminate()
            process.wait(timeout=15)
    return response, log_path.read_text().splitlines()


def test_serve_logs_json_lines_with_the_decision_and_dispatch(
    backend: BackendApp, flags_dir: Path, tmp_path: Path
) -> None:
    """Every line is JSON: uvicorn's startup and access lines, the DEBUG decision line and the
    INFO dispatch line, the latter two with the decision id, flag, variant, and (tracing on)
    the caller's trace id."""
    response, lines = _serve(
        flags_dir,
        tmp_path,
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "--access-log",
        env={"CP_TRACING": "true"},
    )
    assert response.status_code == 200
    entries = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    decision_id = response.headers["x-route-decision-id"]
    assert any(
        e["logger"] == "uvicorn.error" and "Uvicorn running on" in e["message"] for e in entries
    )
    (access,) = [
        e
        for e in entries
        if e["logger"] == "uvicorn.access" and e["path"].startswith("/v1/dispatch/")
    ]
    assert (access["method"], access["status"]) == ("GET", 200)
    (decision,) = [e for e in entries if e["logger"] == "control_plane.decisions"]
    assert decision["level"] == "DEBUG"
    assert (
        decision["decision_id"],
        decision["flag"],
        decision["variant"],
        decision["backend"],
    ) == (decision_id, FLAG, "b", "model-b")
    (dispatch,) = [e for e in entries if e["logger"] == "control_plane.dispatch"]
    assert dispatch["level"] == "INFO"
    assert {
        key: dispatch[key]
        for key in (
            "decision_id",
            "flag",
            "variant",
            "backend",
            "status",
            "fallback",
            "error",
            "trace_id",
        )
    } == {
        "decision_id": decision_id,
        "flag": FLAG,
        "variant": "b",
        "backend": "model-b",
        "status": 200,
        "fallback": False,
        "error": None,
        "trace_id": TRACE_ID,
    }
    assert isinstance(dispatch["latency_ms"], float)
    assert decision["trace_id"] == TRACE_ID


def test_serve_logs_text_when_asked(backend: BackendApp, flags_dir: Path, tmp_path: Path) -> None:
    """CP_LOG_FORMAT=text gives readable lines (no JSON), the dispatch line still naming the
    decision, variant, backend and status; decisions stay quiet at the default level."""
    response, lines = _serve(flags_dir, tmp_path, env={"CP_LOG_FORMAT": "text"})
    assert response.status_code == 200
    assert lines
    assert not any(line.startswith("{") for line in lines)
    decision_id = response.headers["x-route-decision-id"]
    (dispatch,) = [line for line in lines if "control_plane.dispatch" in line]
    assert f"dispatch {decision_id}: flag {FLAG} b -> model-b answered 200" in dispatch
    assert not any("control_plane.decisions" in line for line in lines)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CP_LOG_FORMAT": "yaml"}, "invalid setting log_format"),
        ({"CP_LOG_LEVEL": "loud"}, "log level 'loud' is not one of"),
        ({"CP_OTLP_ENDPOINT": "collector:4318"}, "invalid setting otlp_endpoint"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            },
            "tracing: OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
        ),
    ],
)
def test_bad_observability_settings_are_one_message(
    flags_dir: Path, tmp_path: Path, env: dict[str, str], message: str
) -> None:
    """A bad log format, log level, OTLP endpoint or protocol stops serve with exit status 2
    and a message naming it, not a traceback."""
    result = subprocess.run(
        [*CLI, "serve", "--flags", str(flags_dir), "--port", "0", "--sync-port", "0"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={**os.environ, **env},
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
