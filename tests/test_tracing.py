"""OpenTelemetry traces of decisions and dispatches, through a real uvicorn server.

With an in-memory exporter on the app's provider, a decision and a dispatch (with a fallback)
produce spans carrying the flag key, variant and decision id, under the caller's trace, and the
backend receives a `traceparent` naming its dispatch span. With nothing configured there is no
tracer, no hook, nothing exported, and trace headers pass through untouched. With
OTEL_EXPORTER_OTLP_ENDPOINT set, a real OTLP/HTTP receiver gets the spans.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import write_flags
from openfeature.contrib.hook.opentelemetry import TracingHook
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from servers import BackendApp, ServerThread

from control_plane.http.app import create_app
from control_plane.observability.tracing import (
    TracingConfigError,
    traces_endpoint,
    tracing_from_settings,
)
from control_plane.settings import Settings

FLAG = "traced-router"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
_OTEL_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "CP_TRACING",
    "CP_OTLP_ENDPOINT",
)


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no OpenTelemetry configuration in the environment."""
    for name in _OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def backends(flags_dir: Path) -> Iterator[tuple[BackendApp, BackendApp]]:
    """A failing canary backend and a healthy stable one behind FLAG (x-region picks canary)."""
    stable, canary = BackendApp("stable"), BackendApp("canary", behaviour="error")
    with ServerThread(stable) as stable_server, ServerThread(canary) as canary_server:
        write_flags(
            flags_dir,
            "traced.flagd.json",
            {
                FLAG: {
                    "state": "ENABLED",
                    "variants": {
                        "stable": {"backend": "model-stable", "url": stable_server.url},
                        "canary": {"backend": "model-canary", "url": canary_server.url},
                    },
                    "defaultVariant": "stable",
                    "targeting": {
                        "if": [{"==": [{"var": "user-region"}, "canary-land"]}, "canary", "stable"]
                    },
                }
            },
        )
        yield stable, canary


def _settings(flags_dir: Path, tmp_path: Path, **extra: Any) -> Settings:
    return Settings(
        flags_dir=flags_dir,
        database_url=f"sqlite:///{tmp_path / 'cp.db'}",
        sync_port=0,
        reload_interval=0.05,
        **extra,
    )


def _wait(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + 15
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value


def _named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def test_decision_and_dispatch_spans_carry_flag_variant_and_decision_id(
    backends: tuple[BackendApp, BackendApp], flags_dir: Path, tmp_path: Path
) -> None:
    """Spans of a fast-path decision and of a dispatch with a fallback join the caller's trace,
    carry flag key, variant, backend, decision id and status, and each backend attempt sends
    its own span as `traceparent`."""
    stable, canary = backends
    app = create_app(_settings(flags_dir, tmp_path, tracing=True))
    exporter = InMemorySpanExporter()
    app.state.components.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    (hook,) = app.state.components.openfeature_client.hooks
    assert isinstance(hook, TracingHook)  # the official hook (skipped when sampled out)
    with ServerThread(app) as server:
        decided = httpx.get(
            f"{server.url}/v1/decide/{FLAG}",
            headers={"x-user-id": "jane", "traceparent": TRACEPARENT},
        )
        assert decided.status_code == 200
        spans = _wait(
            lambda: _named(list(exporter.get_finished_spans()), "decide"), "the decision span"
        )
        (decide,) = spans
        assert decide.attributes is not None
        assert dict(decide.attributes) == {
            "feature_flag.key": FLAG,
            "feature_flag.result.variant": "stable",
            "feature_flag.result.reason": "targeting_match",
            "feature_flag.version": decided.json()["flagSetVersion"],
            "control_plane.decision.id": decided.json()["decisionId"],
            "control_plane.backend": "model-stable",
        }
        assert f"{decide.context.trace_id:032x}" == TRACE_ID  # the gateway's trace
        assert decide.parent is not None
        assert f"{decide.parent.span_id:016x}" == CALLER_SPAN
        # The official OpenFeature hook recorded the evaluation on the decision span.
        (event,) = [e for e in decide.events if e.name == "feature_flag.evaluation"]
        assert event.attributes is not None
        assert event.attributes["feature_flag.key"] == FLAG
        assert event.attributes["feature_flag.result.variant"] == "stable"
        exporter.clear()

        response = httpx.post(
            f"{server.url}/v1/dispatch/{FLAG}/v1/chat",
            content=b"{}",
            headers={"x-user-id": "jane", "x-region": "canary-land", "traceparent": TRACEPARENT},
        )
        assert response.status_code == 200
        assert response.headers["x-route-fallback"] == "canary; cause=status-503"
        decision_id = response.headers["x-route-decision-id"]
        spans = _wait(
            lambda: (
                (found := list(exporter.get_finished_spans()))
                and any(s.kind is SpanKind.SERVER for s in found)
                and found
            ),
            "the request's spans",
        )
    (server_span,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert f"{server_span.context.trace_id:032x}" == TRACE_ID
    (decide,) = _named(spans, "decide")
    assert decide.attributes is not None
    assert decide.attributes["control_plane.decision.id"] == decision_id
    assert decide.attributes["feature_flag.result.variant"] == "canary"
    assert decide.parent is not None
    assert decide.parent.span_id == server_span.context.span_id
    first, retry = sorted(_named(spans, "dispatch"), key=lambda s: s.start_time or 0)
    for span in (first, retry):
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None
        assert span.parent.span_id == server_span.context.span_id
        assert span.attributes is not None
        assert span.attributes["control_plane.decision.id"] == decision_id
        assert span.attributes["feature_flag.key"] == FLAG
    assert first.attributes is not None
    assert retry.attributes is not None
    assert (
        first.attributes["feature_flag.result.variant"],
        first.attributes["control_plane.backend"],
        first.attributes["http.response.status_code"],
        first.attributes["control_plane.dispatch.fallback"],
        first.attributes["error.type"],
    ) == ("canary", "model-canary", 503, False, "503")
    assert first.status.status_code is StatusCode.ERROR
    assert (
        retry.attributes["feature_flag.result.variant"],
        retry.attributes["control_plane.backend"],
        retry.attributes["http.response.status_code"],
        retry.attributes["control_plane.dispatch.fallback"],
        retry.attributes["control_plane.dispatch.fallback_from"],
    ) == ("stable", "model-stable", 200, True, "canary")
    # Each backend saw the trace, with its own attempt's span as the parent.
    assert (
        canary.requests[-1]["headers"]["traceparent"]
        == f"00-{TRACE_ID}-{first.context.span_id:016x}-01"
    )
    assert (
        stable.requests[-1]["headers"]["traceparent"]
        == f"00-{TRACE_ID}-{retry.context.span_id:016x}-01"
    )


class OtlpReceiver:
    """A minimal OTLP/HTTP collector on loopback: POST /v1/traces, protobuf bodies kept."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.paths.append(self.path)
                if self.path == "/v1/traces":
                    receiver.requests.append(ExportTraceServiceRequest.FromString(body))
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every span received."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    found += [(resource, span) for span in scope_spans.spans]
        return found


def test_spans_reach_a_real_otlp_receiver(
    backends: tuple[BackendApp, BackendApp],
    flags_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set (and nothing else), the app exports its decision,
    dispatch and server spans to /v1/traces of that collector, as service control-plane."""
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        app = create_app(_settings(flags_dir, tmp_path))
        assert app.state.components.tracing.endpoint == receiver.url + "/v1/traces"
        with ServerThread(app) as server:
            response = httpx.get(
                f"{server.url}/v1/dispatch/{FLAG}/ping",
                headers={"x-user-id": "jane", "traceparent": TRACEPARENT},
            )
            assert response.status_code == 200
        # Shutdown flushed the batch exporter.
        received = receiver.spans()
    assert set(receiver.paths) == {"/v1/traces"}
    names = {span.name for _, span in received}
    assert {"decide", "dispatch"} <= names
    (server_span,) = [span for _, span in received if span.kind == span.SPAN_KIND_SERVER]
    assert server_span.name.startswith("GET /v1/dispatch/{flag_key}/")  # FastAPI's span
    assert {resource["service.name"] for resource, _ in received} == {"control-plane"}
    (decide,) = [span for _, span in received if span.name == "decide"]
    attributes = {a.key: a.value for a in decide.attributes}
    assert (
        attributes["control_plane.decision.id"].string_value
        == response.headers["x-route-decision-id"]
    )
    assert decide.trace_id.hex() == TRACE_ID


def test_nothing_configured_means_no_tracer_and_nothing_exported(
    backends: tuple[BackendApp, BackendApp], flags_dir: Path, tmp_path: Path
) -> None:
    """Without CP_TRACING or an OTLP endpoint: no tracer, hook or provider, requests work, a
    collector on loopback receives nothing, and the caller's traceparent reaches the backend
    unchanged."""
    stable, _ = backends
    with OtlpReceiver() as receiver:
        app = create_app(_settings(flags_dir, tmp_path))
        components = app.state.components
        assert not components.tracing.enabled
        assert components.tracing.provider is None
        assert components.decider.tracer is None
        assert components.openfeature_client.hooks == []
        with ServerThread(app) as server:
            assert components.dispatcher.tracer is None
            decided = httpx.get(f"{server.url}/v1/decide/{FLAG}", headers={"x-user-id": "j"})
            assert decided.status_code == 200
            response = httpx.get(
                f"{server.url}/v1/dispatch/{FLAG}/ping",
                headers={"x-user-id": "jane", "traceparent": TRACEPARENT},
            )
            assert response.status_code == 200
        assert receiver.requests == []
    assert stable.requests[-1]["headers"]["traceparent"] == TRACEPARENT


def test_sampled_out_decisions_export_nothing(
    backends: tuple[BackendApp, BackendApp],
    flags_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the SDK's sampler set to always_off, tracing is on but decisions and dispatches
    are answered as usual and no span reaches the exporter."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    app = create_app(_settings(flags_dir, tmp_path, tracing=True))
    exporter = InMemorySpanExporter()
    app.state.components.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    with ServerThread(app) as server:
        assert (
            httpx.get(f"{server.url}/v1/decide/{FLAG}", headers={"x-user-id": "jane"}).status_code
            == 200
        )
        assert (
            httpx.get(
                f"{server.url}/v1/dispatch/{FLAG}/ping", headers={"x-user-id": "jane"}
            ).status_code
            == 200
        )
    assert exporter.get_finished_spans() == ()


_JOIN_GLOBAL = """
import sys
import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
sys.path.insert(0, sys.argv[2])
from servers import ServerThread
from control_plane.http.app import create_app
from control_plane.settings import Settings

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)  # what opentelemetry-instrument does for a process
app = create_app(Settings(flags_dir=sys.argv[1], database_url="sqlite://", sync_port=0))
assert app.state.components.tracing.provider is provider
assert not app.state.components.tracing.owned
with ServerThread(app) as server:
    assert httpx.get(server.url + "/v1/decide/ab-test-router").status_code == 200
app.state.components.tracing.shutdown()  # not ours: must leave the process's provider running
print(sorted(span.name for span in exporter.get_finished_spans()))
"""


def test_a_process_wide_sdk_provider_is_joined(flags_dir: Path, tmp_path: Path) -> None:
    """When the process already runs an SDK tracer provider (opentelemetry-instrument) and
    nothing else is configured, the app traces into it and does not shut it down."""
    script = tmp_path / "script" / "join.py"  # not beside flags/, which would shadow `flags`
    script.parent.mkdir()
    script.write_text(_JOIN_GLOBAL)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CP_"))}
    result = subprocess.run(
        [sys.executable, str(script), str(flags_dir), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=False,
        env=environment,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['decide']"


def test_tracing_false_wins_over_a_configured_endpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """CP_TRACING=false and OTEL_SDK_DISABLED=true each turn tracing off despite an endpoint."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert (
        tracing_from_settings(Settings(tracing=True)).endpoint == "http://127.0.0.1:4318/v1/traces"
    )
    assert not tracing_from_settings(Settings(tracing=False)).enabled
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing_from_settings(Settings()).enabled


@pytest.mark.parametrize(
    ("setting", "environ", "expected"),
    [
        ("http://collector:4318/", {}, "http://collector:4318/v1/traces"),
        (
            None,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example:4318"},
            "https://otel.example:4318/v1/traces",
        ),
        (
            None,
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:9999/custom",
            },
            "http://b:9999/custom",
        ),
        (
            "http://setting:4318",
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318"},
            "http://setting:4318/v1/traces",
        ),
        (None, {}, None),
    ],
)
def test_endpoint_resolution(
    setting: str | None, environ: dict[str, str], expected: str | None
) -> None:
    """The setting is a base URL; the traces variable is used as given; the generic one gets
    /v1/traces; the setting wins."""
    assert traces_endpoint(setting, environ) == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTLP/HTTP",
        ),
    ],
)
def test_unusable_export_configuration_is_named(environ: dict[str, str], message: str) -> None:
    """An endpoint that is not a URL, or the gRPC protocol, is refused naming the variable."""
    with pytest.raises(TracingConfigError, match=message):
        traces_endpoint(None, environ)
