"""The dispatch proxy: send a request to the backend a decision chose, with one fallback.

The only module that imports httpx. One pooled AsyncClient serves all backends. Response bodies
are streamed through. Request bodies up to `buffer_limit` are buffered so that a failed canary
call can be retried on the flag's default variant; a larger body is streamed and not retried.
With a tracer, each backend attempt is a client span whose context goes to the backend as a W3C
`traceparent` (replacing the caller's, which is this span's ancestor); without one, trace
headers pass through untouched.

What may leave for a backend (headers, path) is `forwarding.ForwardPolicy` and
`forwarding.resolve_path`: credentials and client-set forwarding headers are stripped, and a
path that climbs above the backend URL's prefix is refused before any backend is called.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode, Tracer

from control_plane.errors import UpstreamError
from control_plane.observability import attributes as attr
from control_plane.routing.backends import Backend
from control_plane.routing.decisions import Decision
from control_plane.routing.forwarding import ForwardPolicy, backend_url, resolve_path

__all__ = ["HOP_BY_HOP", "DispatchOutcome", "DispatchResult", "Dispatcher"]

#: RFC 9110 section 7.6.1 connection-specific headers, never forwarded in either direction.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length"}


@dataclass(slots=True)
class DispatchOutcome:
    """What one backend call did; reported to listeners (metrics, experiment outcomes)."""

    decision: Decision
    variant: str
    backend: str
    status: int | None  # None when the backend gave no answer at all
    seconds: float
    error: str | None = None


OutcomeListener = Callable[[DispatchOutcome], None]
#: (decision, method, resolved path, query, forwarded headers, body) -> a watch or None.
MirrorHook = Callable[[Decision, str, str, str, list[tuple[str, str]], bytes], Any]


@dataclass
class DispatchResult:
    status: int
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    variant: str
    backend: Backend
    fallback_from: str | None = None
    fallback_cause: str | None = None
    close: Callable[[], Any] | None = None


def _forward_headers(
    headers: Iterable[tuple[str, str]], drop: frozenset[str] = _NOT_FORWARDED
) -> list[tuple[str, str]]:
    """Headers minus hop-by-hop ones, including those the Connection header lists."""
    pairs = list(headers)
    listed = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [
        (name, value)
        for name, value in pairs
        if name.lower() not in drop and name.lower() not in listed
    ]


class Dispatcher:
    def __init__(
        self,
        *,
        timeout: float = 10.0,
        max_connections: int = 200,
        buffer_limit: int = 8 * 1024 * 1024,
        transport: httpx.AsyncBaseTransport | None = None,
        tracer: Tracer | None = None,
        policy: ForwardPolicy | None = None,
    ) -> None:
        self.buffer_limit = buffer_limit
        self.policy = policy or ForwardPolicy()
        self.tracer = tracer
        self.listeners: list[OutcomeListener] = []
        #: Shadow traffic hook (`ShadowMirror.on_dispatch`): None, or a watch of the primary.
        self.mirror: MirrorHook | None = None
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def dispatch(
        self,
        decision: Decision,
        fallback: Backend | None,
        *,
        method: str,
        path: str,
        query: str,
        headers: Iterable[tuple[str, str]],
        body: AsyncIterator[bytes],
        client_host: str | None = None,
        original_host: str | None = None,
        scheme: str | None = None,
    ) -> DispatchResult:
        """Send the request to the decision's backend; on failure retry once on `fallback`.

        Raises BadRequestInput for a path that leaves the backend's prefix (nothing is sent),
        and UpstreamError when no backend gave an answer.
        """
        path = resolve_path(path)
        forward = self._forward_headers(headers, client_host, original_host, scheme)
        forward.append(("x-route-decision-id", decision.decision_id))
        forward.append(("x-route-variant", decision.variant))

        content, replayable = await _buffer(body, self.buffer_limit)
        # Shadow copies (control_plane.shadow): queued here, compared with what the client gets.
        watch = (
            self.mirror(decision, method, path, query, forward, content)
            if self.mirror is not None and isinstance(content, bytes)
            else None
        )
        try:
            result = await self._choose(
                decision, fallback, method, path, query, forward, content, replayable
            )
        except BaseException:
            if watch is not None:
                watch.failed()
            raise
        if watch is not None:
            watch.watch(result)
        return result

    async def _choose(
        self,
        decision: Decision,
        fallback: Backend | None,
        method: str,
        path: str,
        query: str,
        forward: list[tuple[str, str]],
        content: bytes | AsyncIterator[bytes],
        replayable: bool,
    ) -> DispatchResult:
        target = Backend(decision.backend, decision.url)
        if fallback is None or not replayable or decision.variant == decision.default_variant:
            try:
                return await self._send(
                    decision,
                    decision.variant,
                    target,
                    method,
                    path,
                    query,
                    forward,
                    content,
                    retry_on_5xx=False,
                )
            except _Retryable as failure:
                raise UpstreamError(failure.detail, backend=target.name) from failure
        try:
            return await self._send(
                decision,
                decision.variant,
                target,
                method,
                path,
                query,
                forward,
                content,
                retry_on_5xx=True,
            )
        except _Retryable as failure:
            first = failure
        try:
            result = await self._send(
                decision,
                decision.default_variant,
                fallback,
                method,
                path,
                query,
                forward,
                content,
                retry_on_5xx=False,
            )
        except _Retryable as second:
            # Both refused (or timed out): one 502 naming both, not an unhandled error.
            raise UpstreamError(
                f"{first.detail}; fallback to the default variant failed too: {second.detail}",
                backend=target.name,
                fallback=fallback.name,
            ) from second
        result.fallback_from = decision.variant
        result.fallback_cause = first.cause
        return result

    def _forward_headers(
        self,
        headers: Iterable[tuple[str, str]],
        client_host: str | None,
        original_host: str | None,
        scheme: str | None,
    ) -> list[tuple[str, str]]:
        """End-to-end headers the policy lets through, plus this hop's X-Forwarded-* values.

        X-Forwarded-For gets the peer address appended to whatever chain survived the policy
        (none by default: a client's own chain is not trusted). X-Forwarded-Host and -Proto
        are set from this hop unless the policy kept a value (an operator who trusts the
        gateway in front removed them from `dispatch_strip_headers`).
        """
        forward = self.policy.filter(_forward_headers(headers))
        present = {name.lower() for name, _ in forward}
        if client_host:
            prior = [v for k, v in forward if k.lower() == "x-forwarded-for"]
            forward = [(k, v) for k, v in forward if k.lower() != "x-forwarded-for"]
            forward.append(("x-forwarded-for", ", ".join([*prior, client_host])))
        if original_host and "x-forwarded-host" not in present:
            forward.append(("x-forwarded-host", original_host))
        if scheme and "x-forwarded-proto" not in present:
            forward.append(("x-forwarded-proto", scheme))
        return forward

    async def _send(
        self,
        decision: Decision,
        variant: str,
        backend: Backend,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[str, str]],
        content: bytes | AsyncIterator[bytes],
        *,
        retry_on_5xx: bool,
    ) -> DispatchResult:
        url = backend_url(backend.url, path, query)
        if self.tracer is None:
            return await self._attempt(
                decision, variant, backend, method, url, headers, content, retry_on_5xx=retry_on_5xx
            )
        span_attributes: dict[str, str | bool] = {
            attr.FLAG_KEY: decision.flag_key,
            attr.FLAG_VARIANT: variant,
            attr.BACKEND: backend.name,
            attr.DECISION_ID: decision.decision_id,
            attr.FALLBACK: variant != decision.variant,
            attr.HTTP_METHOD: method,
            attr.URL_FULL: url.partition("?")[0],  # the query may carry user data
            attr.SERVER_ADDRESS: urlsplit(backend.url).hostname or "",
        }
        if variant != decision.variant:
            span_attributes[attr.FALLBACK_FROM] = decision.variant
        with self.tracer.start_as_current_span(
            attr.DISPATCH_SPAN, kind=SpanKind.CLIENT, attributes=span_attributes
        ):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            fields = {name.lower() for name in propagate.get_global_textmap().fields}
            traced = [(k, v) for k, v in headers if k.lower() not in fields]
            return await self._attempt(
                decision,
                variant,
                backend,
                method,
                url,
                traced + list(carrier.items()),
                content,
                retry_on_5xx=retry_on_5xx,
            )

    async def _attempt(
        self,
        decision: Decision,
        variant: str,
        backend: Backend,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        content: bytes | AsyncIterator[bytes],
        *,
        retry_on_5xx: bool,
    ) -> DispatchResult:
        started = time.perf_counter()
        request = self._client.build_request(method, url, headers=headers, content=content)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            self._report(decision, variant, backend, None, started, "timeout")
            raise _Retryable(
                "timeout", f"backend {backend.name} ({backend.url}) timed out"
            ) from exc
        except httpx.TransportError as exc:
            self._report(decision, variant, backend, None, started, "refused")
            raise _Retryable(
                "refused", f"backend {backend.name} ({backend.url}) is unreachable: {exc}"
            ) from exc
        self._report(decision, variant, backend, response.status_code, started, None)
        if retry_on_5xx and response.status_code >= 500:
            await response.aclose()
            raise _Retryable(
                f"status-{response.status_code}",
                f"backend {backend.name} answered {response.status_code}",
            )
        return DispatchResult(
            status=response.status_code,
            # Raw (still encoded) bytes are streamed, so Content-Length stays true.
            headers=_forward_headers(response.headers.multi_items(), HOP_BY_HOP),
            body=_stream(response),
            variant=variant,
            backend=backend,
            close=response.aclose,
        )

    def _report(
        self,
        decision: Decision,
        variant: str,
        backend: Backend,
        status: int | None,
        started: float,
        error: str | None,
    ) -> None:
        outcome = DispatchOutcome(
            decision=decision,
            variant=variant,
            backend=backend.name,
            status=status,
            seconds=time.perf_counter() - started,
            error=error,
        )
        if self.tracer is not None:
            _annotate(trace.get_current_span(), status, error)
        for listener in self.listeners:
            listener(outcome)


def _annotate(span: trace.Span, status: int | None, error: str | None) -> None:
    """The attempt's outcome on its span: status, and error type for no answer or a 5xx."""
    if status is not None:
        span.set_attribute(attr.HTTP_STATUS, status)
    if error is not None or (status is not None and status >= 500):
        span.set_attribute(attr.ERROR_TYPE, error or str(status))
        span.set_status(StatusCode.ERROR)


class _Retryable(Exception):
    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail


async def _buffer(
    body: AsyncIterator[bytes], limit: int
) -> tuple[bytes | AsyncIterator[bytes], bool]:
    """The whole body if it fits in `limit` (replayable), else a stream of all of it."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in body:
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return _chain(chunks, body), False
    return b"".join(chunks), True


async def _chain(head: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in head:
        yield chunk
    async for chunk in rest:
        yield chunk


async def _stream(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    finally:
        await response.aclose()
