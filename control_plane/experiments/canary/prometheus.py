"""Instant PromQL queries against a Prometheus server, as one number or a specific error.

`instant_query(address, promql)` POSTs to `/api/v1/query` and returns the value of a scalar or
of a one-series vector. Every way of not getting a number is its own error, so the canary's
events say what went wrong; the httpx exceptions are translated here and nowhere else:

    MetricError
    ├── MetricNoData            an answer with nothing to judge: an empty vector, or NaN
    └── MetricQueryFailed       no usable answer
        ├── PrometheusUnreachable   no HTTP answer: connection refused, reset, bad name
        ├── PrometheusTimeout       no answer within the timeout
        ├── PrometheusRejected      HTTP 4xx/5xx or "status": "error" (errorType, error)
        └── MetricBadResult         an answer that is not one number: a range vector, a
                                    string, several series, a body that is not the API's JSON

Each class has a `kind` (no_data, unreachable, timeout, rejected, bad_result) used in events.
"""

from __future__ import annotations

import json
import math
from typing import Any, Protocol

import httpx

from control_plane.errors import ControlPlaneError

__all__ = [
    "InstantQuery",
    "MetricBadResult",
    "MetricError",
    "MetricNoData",
    "MetricQueryFailed",
    "PrometheusRejected",
    "PrometheusTimeout",
    "PrometheusUnreachable",
    "instant_query",
]

_MAX_DETAIL = 300


class MetricError(ControlPlaneError):
    title = "Metric query error"
    kind = "error"


class MetricNoData(MetricError):
    kind = "no_data"


class MetricQueryFailed(MetricError):
    kind = "error"


class PrometheusUnreachable(MetricQueryFailed):
    kind = "unreachable"


class PrometheusTimeout(MetricQueryFailed):
    kind = "timeout"


class PrometheusRejected(MetricQueryFailed):
    kind = "rejected"

    def __init__(self, detail: str, *, status: int, error_type: str = "") -> None:
        super().__init__(detail, status=status, error_type=error_type)
        self.status = status
        self.error_type = error_type


class MetricBadResult(MetricQueryFailed):
    kind = "bad_result"


class InstantQuery(Protocol):
    """Evaluates one PromQL expression now on the server at `address`; a number or a
    MetricError."""

    def __call__(self, address: str, promql: str) -> float: ...


def instant_query(
    address: str, promql: str, *, timeout: float = 3.0, transport: httpx.BaseTransport | None = None
) -> float:
    url = f"{address.rstrip('/')}/api/v1/query"
    try:
        with httpx.Client(timeout=timeout, transport=transport) as client:
            response = client.post(url, data={"query": promql})
    except httpx.TimeoutException as exc:
        raise PrometheusTimeout(
            f"Prometheus at {address} did not answer within {timeout:g}s"
        ) from exc
    except httpx.HTTPError as exc:  # connect, read, protocol errors, unusable URL
        raise PrometheusUnreachable(
            f"cannot query Prometheus at {address}: {type(exc).__name__}: {exc}"
        ) from exc
    body = _json(response)
    if response.status_code >= 400 or (body is not None and body.get("status") == "error"):
        raise _rejected(address, response, body)
    if body is None or body.get("status") != "success":
        raise MetricBadResult(
            f"Prometheus at {address} answered {response.status_code} with "
            f"something that is not its API's JSON: {_snippet(response)}"
        )
    return _value(body.get("data"))


def _json(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _snippet(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return repr(text[:_MAX_DETAIL] + ("..." if len(text) > _MAX_DETAIL else ""))


def _rejected(
    address: str, response: httpx.Response, body: dict[str, Any] | None
) -> PrometheusRejected:
    if body is not None and isinstance(body.get("error"), str):
        error_type = str(body.get("errorType") or "")
        message = str(body["error"])[:_MAX_DETAIL]
        return PrometheusRejected(
            f"Prometheus at {address} refused the query ({response.status_code} "
            f"{error_type or 'error'}): {message}",
            status=response.status_code,
            error_type=error_type,
        )
    return PrometheusRejected(
        f"Prometheus at {address} answered {response.status_code}: {_snippet(response)}",
        status=response.status_code,
    )


def _number(sample: Any) -> float:
    """The value of a `[timestamp, "value"]` pair."""
    if not (isinstance(sample, list) and len(sample) == 2 and isinstance(sample[1], str)):
        raise MetricBadResult(f'a sample is not [time, "value"]: {sample!r:.{_MAX_DETAIL}}')
    try:
        value = float(sample[1])
    except ValueError:
        raise MetricBadResult(f"the value {sample[1]!r:.{_MAX_DETAIL}} is not a number") from None
    if math.isnan(value):
        raise MetricNoData("the query's value is NaN (e.g. 0/0: no requests in the window)")
    return value


def _value(data: Any) -> float:
    if not isinstance(data, dict):
        raise MetricBadResult("the answer has no data object")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return _number(result)
    if kind == "vector" and isinstance(result, list):
        if not result:
            raise MetricNoData("the query returned no series (an empty vector)")
        if len(result) > 1:
            raise MetricBadResult(
                f"the query returned {len(result)} series; aggregate them "
                "to one, e.g. with sum(...) or max(...)"
            )
        series = result[0]
        return _number(series.get("value") if isinstance(series, dict) else None)
    raise MetricBadResult(
        f"the query returned a {kind}, not a scalar or an instant vector"
        + ("; drop the range selector around the whole expression" if kind == "matrix" else "")
    )
