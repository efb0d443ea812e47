"""Gateway outcome lines become dispatch outcomes, fed to the dispatcher's own listeners.

So a canary, an experiment and the dispatch metrics see a call that nginx proxied exactly as
one the dispatch proxy made: per-variant count, status (5xx or no answer is an error) and
latency. The exposure was logged when nginx asked `/v1/decide`; here only the backend call is
added. Lines for flags or variants the serving flag set does not have are ignored and counted,
and lines whose upstream was the dispatch proxy itself are skipped (it counted the call).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from control_plane.flagstore import FlagStore
from control_plane.gateway.access_log import GatewayLine, LineRefused, parse_datagram
from control_plane.routing.backends import routing_table
from control_plane.routing.decisions import Decision
from control_plane.routing.dispatch import DispatchOutcome

__all__ = ["RESULTS", "GatewayOutcomes"]

log = logging.getLogger(__name__)

#: Every value of the `result` label: what became of one datagram.
RESULTS = (
    "accepted",
    "fallback",
    "dispatched",
    "no_decision",
    "no_upstream",
    "unknown_flag",
    "unknown_variant",
    "malformed",
    "oversized",
    "unsupported_version",
    "refused_source",
    "failed",
)
_SOURCE_CACHE = 1024


class GatewayOutcomes:
    """Turns outcome datagrams into DispatchOutcome calls on `listeners()` (read per line)."""

    def __init__(
        self,
        store: FlagStore,
        listeners: Callable[[], Iterable[Any]],
        registry: CollectorRegistry,
        *,
        sources: Sequence[str] = ("127.0.0.0/8", "::1/128"),
    ) -> None:
        self.store = store
        self._listeners = listeners
        self._networks = [ipaddress.ip_network(source, strict=False) for source in sources]
        self._allowed: dict[str, bool] = {}
        self.lines = Counter(
            "control_plane_gateway_log_lines",
            "Outcome lines received from the gateway's access log, by what became of them.",
            ["result"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "control_plane_gateway_fallbacks",
            "Requests the gateway served from the flag's stable variant without a decision.",
            ["flag"],
            registry=registry,
        )
        for result in RESULTS:
            self.lines.labels(result)  # exported at 0, so rates and alerts see the first one

    def feed(self, data: bytes, source: str | None = None) -> str:
        """Handle one datagram; returns its `result` label. Never raises."""
        try:
            if source is not None and not self._source_allowed(source):
                result = "refused_source"
            else:
                result = self._handle(parse_datagram(data))
        except LineRefused as refused:
            result = refused.reason
        except Exception:  # a listener's bug must not stop the next line
            log.exception("gateway outcome line could not be handled")
            result = "failed"
        self.lines.labels(result).inc()
        return result

    def _source_allowed(self, source: str) -> bool:
        allowed = self._allowed.get(source)
        if allowed is None:
            try:
                address = ipaddress.ip_address(source.partition("%")[0])
            except ValueError:
                allowed = False
            else:
                allowed = any(address in network for network in self._networks)
            if len(self._allowed) >= _SOURCE_CACHE:
                self._allowed.clear()
            self._allowed[source] = allowed
        return allowed

    def _handle(self, line: GatewayLine) -> str:
        if not self.store.loaded:
            raise LineRefused("unknown_flag")
        flag_set = self.store.current
        flag = flag_set.flags.get(line.flag)
        table = routing_table(flag) if flag is not None else None
        if flag is None or table is None:
            raise LineRefused("unknown_flag")
        if line.fallback:
            self.fallbacks.labels(line.flag).inc()
            return "fallback"
        if line.dispatched:
            return "dispatched"
        backend = table.get(line.variant)
        if backend is None:
            raise LineRefused("unknown_variant")
        default = flag.get("defaultVariant")
        # As an evaluation reports it: the file's metadata overlaid with the flag's own.
        metadata = dict(flag_set.flag_metadata(line.flag))
        decision = Decision(
            flag_key=line.flag,
            variant=line.variant,
            backend=backend.name,
            url=backend.url,
            reason=line.reason,
            flag_set_version=(
                line.flag_set_version if line.flag_set_version is not None else flag_set.version
            ),
            decision_id=line.decision_id,
            metadata=metadata,
            default_variant=default
            if isinstance(default, str) and default in table
            else next(iter(table)),
        )
        outcome = DispatchOutcome(
            decision=decision,
            variant=line.variant,
            backend=backend.name,
            status=line.status,
            seconds=line.seconds,
            error=line.error,
        )
        for listener in list(self._listeners()):
            listener(outcome)
        return "accepted"
