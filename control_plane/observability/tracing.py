"""OpenTelemetry tracing of one app: an SDK tracer provider exporting OTLP/HTTP when configured.

Tracing is on when `CP_TRACING=true`, or (`CP_TRACING` unset) when an OTLP endpoint is
configured (`CP_OTLP_ENDPOINT`, or the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
`OTEL_EXPORTER_OTLP_ENDPOINT`), or when the process already runs a global SDK tracer provider
(`opentelemetry-instrument`), which is then used as is. Otherwise nothing is created: the
decider and dispatcher get no tracer and skip spans entirely, so the hot path pays one
attribute check. `OTEL_SDK_DISABLED=true` or `CP_TRACING=false` turn it off whatever else says.

Each app owns its provider (several apps can run in one process, as in the tests) and hands it
to FastAPI's native telemetry, which then opens the HTTP server span of each request (joining
an incoming W3C `traceparent`) that the decision and dispatch spans hang under. Built unstarted
by `build_components`; `start()` (app startup) attaches the batching OTLP exporter and
`shutdown()` (app shutdown) flushes it. Sampling follows the SDK's `OTEL_TRACES_SAMPLER`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fastapi.telemetry import TelemetryConfig
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter

__all__ = [
    "TRACER_NAME",
    "Tracing",
    "TracingConfigError",
    "remote_parent",
    "traces_endpoint",
    "tracing_from_settings",
]

log = logging.getLogger(__name__)

TRACER_NAME = "control_plane"
_DEFAULT_SERVICE_NAME = "control-plane"
_TRACES_PATH = "/v1/traces"


class TracingConfigError(ValueError):
    """The trace export configuration cannot work (names the variable and what is wrong)."""


def traces_endpoint(setting: str | None, environ: Mapping[str, str]) -> str | None:
    """The OTLP/HTTP traces URL: the setting (a base URL), else the standard variables."""
    if setting:
        url, source = setting.rstrip("/") + _TRACES_PATH, "CP_OTLP_ENDPOINT"
    elif environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        # The signal-specific variable is a full URL, used as given (OTLP exporter spec).
        url, source = (
            environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"],
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        )
    elif environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        url, source = (
            environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + _TRACES_PATH,
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        )
    else:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TracingConfigError(f"{source}: {url!r} is not an http(s) URL")
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol != "http/protobuf":
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: the control plane exports traces over "
            "OTLP/HTTP (http/protobuf) only; point the endpoint at the collector's HTTP port "
            "(4318 by default)"
        )
    return url


@dataclass
class Tracing:
    """The tracer of one app (None when tracing is off) and the provider behind it."""

    tracer: trace.Tracer | None = None
    provider: Any = None  # an SDK TracerProvider; Any: the SDK is imported only when used
    endpoint: str | None = None
    #: True when this app made the provider (and so attaches exporters and shuts it down).
    owned: bool = False
    _started: bool = field(default=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def fastapi_telemetry(self) -> TelemetryConfig:
        """FastAPI's native telemetry config: our provider for its server spans, nothing else.

        FastAPI's operation spans (dependencies, serialization) are left out to keep a routing
        trace to server span, decision, dispatch; its OTLP auto-configuration is off because
        this module owns the export pipeline (on, it would add a second exporter); its metrics
        and logs stay off: Prometheus and our JSON logs carry those.
        """
        config: TelemetryConfig = {
            "auto_configure": False,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
        }
        if self.provider is None:
            config["tracing"] = False
        else:
            config["tracer_provider"] = self.provider
        return config

    def openfeature_hooks(self) -> list[Any]:
        """Hooks for the app's OpenFeature client: the official OpenTelemetry hook, which adds
        a `feature_flag.evaluation` event to the current (decision) span. None when off: the
        hook runs on every evaluation and would cost even with no span to record on."""
        if not self.enabled:
            return []
        from control_plane.observability._flag_hook import SampledTracingHook

        return [SampledTracingHook()]

    def start(self) -> None:
        """Attach the batching OTLP exporter (a background thread); once, on app startup."""
        if self._started or not self.owned or self.endpoint is None:
            return
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=self.endpoint))
        )
        self._started = True
        log.info(
            "exporting traces to %s (OTLP/HTTP)",
            self.endpoint,
            extra={"otlp_endpoint": self.endpoint},
        )

    def shutdown(self) -> None:
        """Flush and stop the exporters of a provider this app owns."""
        if self.owned and self.provider is not None:
            self.provider.shutdown()
            self.owned = False


def tracing_from_settings(settings: Any, environ: Mapping[str, str] | None = None) -> Tracing:
    """The app's tracing as `settings` (`tracing`, `otlp_endpoint`) and the environment say.

    Raises TracingConfigError for an endpoint or protocol that cannot work.
    """
    environ = os.environ if environ is None else environ
    wanted: bool | None = getattr(settings, "tracing", None)
    if wanted is False or environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return Tracing()
    endpoint = traces_endpoint(getattr(settings, "otlp_endpoint", None), environ)
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        endpoint = None
    global_provider = trace.get_tracer_provider()
    if _is_sdk_provider(global_provider) and endpoint is None:
        # Someone set up tracing for the whole process (opentelemetry-instrument): join it.
        return Tracing(tracer=global_provider.get_tracer(TRACER_NAME), provider=global_provider)
    if not wanted and endpoint is None:
        return Tracing()
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        # Neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES named the service.
        resource = resource.merge(Resource({SERVICE_NAME: _DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    return Tracing(
        tracer=provider.get_tracer(TRACER_NAME), provider=provider, endpoint=endpoint, owned=True
    )


def _is_sdk_provider(provider: object) -> bool:
    # The API's default is a proxy (or no-op) provider; anything else was installed on purpose.
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


class _RawHeadersGetter(Getter[Iterable[tuple[bytes, bytes]]]):
    """Reads ASGI raw headers (lower-case byte pairs) for the W3C propagators."""

    def get(self, carrier: Iterable[tuple[bytes, bytes]], key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        values = [value.decode("latin-1") for header, value in carrier if header == name]
        return values or None

    def keys(self, carrier: Iterable[tuple[bytes, bytes]]) -> list[str]:
        return [header.decode("latin-1") for header, _ in carrier]


_RAW_GETTER = _RawHeadersGetter()


@contextmanager
def remote_parent(raw_headers: Iterable[tuple[bytes, bytes]]) -> Iterator[None]:
    """Make the caller's trace (its `traceparent`, `baggage`) current for the block.

    For requests answered without FastAPI's server span (the decide fast path).
    """
    token = otel_context.attach(propagate.extract(list(raw_headers), getter=_RAW_GETTER))
    try:
        yield
    finally:
        otel_context.detach(token)
