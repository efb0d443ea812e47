"""Observability of the control plane: OpenTelemetry traces, structured logs, alert rules.

    tracing.py       the tracer provider of one app: OTLP/HTTP export when configured, else off
    _flag_hook.py    the official OpenFeature OpenTelemetry hook, skipped for unsampled spans
    attributes.py    span attribute names and values of decisions and dispatches
    logging.py       JSON (or text) log lines for the service and uvicorn, with trace ids
    request_log.py   decision (DEBUG) and dispatch (INFO) log listeners
    alerts.yml       Prometheus alert rules over the metrics /metrics serves

The modules are imported directly (this package imports nothing), so the routing hot path pays
only for what it uses.
"""

__all__: list[str] = []
