"""Decisions: evaluate a routing flag for one request, through the OpenFeature client.

This is the OpenFeature path (hooks, tracing, any provider). `/v1/decide` without OpenFeature
hooks takes the compiled path instead (control_plane.routing.compiled_decisions), which makes
the same Decisions from the same routing lookups and decision ids defined here.

The decider is on the hot path of every gateway request, so it keeps per-flag-set lookups
(routing tables) computed once per flag set version and does no I/O. Evaluation never raises
for a flag that exists: an evaluation error serves the flag's default variant with reason ERROR.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import Reason
from opentelemetry.trace import Tracer

from control_plane.errors import FlagNotFound, NotARoutingFlag
from control_plane.flagstore import FlagSet, FlagStore
from control_plane.observability.attributes import DECIDE_SPAN, FLAG_KEY, decision_attributes
from control_plane.routing.backends import Backend, routing_table

__all__ = [
    "Decider",
    "Decision",
    "DecisionIds",
    "DecisionListener",
    "FlagRouting",
    "RoutingLookup",
    "shown_key",
]


@dataclass(slots=True)
class Decision:
    flag_key: str
    variant: str
    backend: str
    url: str
    reason: str
    flag_set_version: int
    decision_id: str
    targeting_key: str | None = None
    error_code: str | None = None
    #: Flag metadata as evaluated (flag set metadata merged with the flag's own).
    metadata: dict[str, Any] = field(default_factory=dict)
    default_variant: str = ""
    #: Request attributes that were dropped, with why (a pin without a valid tester token).
    ignored: list[str] | None = None
    #: Subject of the tester token that allowed a pin.
    tester: str | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "flagKey": self.flag_key,
            "variant": self.variant,
            "backend": self.backend,
            "url": self.url,
            "reason": self.reason,
            "flagSetVersion": self.flag_set_version,
            "decisionId": self.decision_id,
        }
        if self.error_code:
            body["errorCode"] = self.error_code
        if self.ignored:
            body["ignored"] = self.ignored
        if self.tester:
            body["tester"] = self.tester
        return body


#: Called with every decision, after it is made (exposure logging, metrics). Must not block.
DecisionListener = Callable[[Decision, float], None]


@dataclass(frozen=True, slots=True)
class FlagRouting:
    """What a routing flag serves: backend per variant, and the variant served on errors."""

    table: dict[str, Backend]
    default_variant: str


class DecisionIds:
    """Decision ids: a random per-process prefix and a counter, always 24 hex characters.

    Unique across replicas and restarts, and ~40x cheaper than os.urandom per request (a
    syscall on the hot path). The fixed length lets prebuilt responses keep their length.
    """

    LENGTH = 24

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFF:012x}"


class RoutingLookup:
    """Per-flag routing of the current flag set, computed once per flag-set version."""

    def __init__(self) -> None:
        self._version = -1
        self._routing: dict[str, FlagRouting | None] = {}

    def get(self, flag_set: FlagSet, flag_key: str) -> FlagRouting:
        """The routing of `flag_key`; raises FlagNotFound or NotARoutingFlag."""
        if flag_set.version != self._version:
            self._routing = {}
            self._version = flag_set.version
        try:
            routing = self._routing[flag_key]
        except KeyError:
            if flag_key not in flag_set.flags:
                # Not cached: the cache holds only keys of the flag set, so a client asking for
                # 20,000 made-up keys cannot grow it.
                raise FlagNotFound(f"no flag named {shown_key(flag_key)}") from None
            routing = self._routing[flag_key] = _compile(flag_set, flag_key)
        if routing is None:
            raise NotARoutingFlag(
                f"flag {flag_key!r} is not a routing flag: each variant must be an object "
                "with 'backend' and 'url'"
            )
        return routing


class Decider:
    """Makes routing decisions for a flag key and an evaluation context.

    With a `tracer`, each decision is a span (the flag evaluation's OpenTelemetry hook adds its
    event to it); without one (tracing off) no span is even attempted.
    """

    def __init__(
        self,
        client: OpenFeatureClient,
        store: FlagStore,
        tracer: Tracer | None = None,
        *,
        ids: DecisionIds | None = None,
    ) -> None:
        self._client = client
        self._store = store
        self.tracer = tracer
        self._lookup = RoutingLookup()
        self.listeners: list[DecisionListener] = []
        self.ids = ids or DecisionIds()

    def decide(
        self,
        flag_key: str,
        targeting_key: str | None,
        attributes: dict[str, Any],
        *,
        ignored: list[str] | None = None,
        tester: str | None = None,
    ) -> Decision:
        """Decide `flag_key`; `ignored` and `tester` (from the request context) are reported."""
        if self.tracer is None:
            return self._decide(flag_key, targeting_key, attributes, ignored, tester)
        with self.tracer.start_as_current_span(
            DECIDE_SPAN, attributes={FLAG_KEY: flag_key}
        ) as span:
            decision = self._decide(flag_key, targeting_key, attributes, ignored, tester)
            if span.is_recording():  # not when sampled out: then the span records nothing
                span.set_attributes(decision_attributes(decision))
            return decision

    def _decide(
        self,
        flag_key: str,
        targeting_key: str | None,
        attributes: dict[str, Any],
        ignored: list[str] | None,
        tester: str | None,
    ) -> Decision:
        started = time.perf_counter()
        flag_set = self._store.current
        routing = self._routing_for(flag_set, flag_key)
        details = self._client.get_object_details(
            flag_key, {}, EvaluationContext(targeting_key, attributes)
        )
        metadata = dict(details.flag_metadata)
        version = metadata.pop("$flagSetVersion", flag_set.version)  # flagset.VERSION_KEY
        variant = details.variant
        error_code = details.error_code.value if details.error_code else None
        if details.error_code is not None and error_code == "FLAG_NOT_FOUND":
            raise FlagNotFound(f"no flag named {shown_key(flag_key)}")
        reason = str(
            details.reason.value
            if isinstance(details.reason, Reason)
            else details.reason or "UNKNOWN"
        )
        # The backend comes from the evaluated value itself, so it always belongs to the same
        # flag set version as the variant, even while a reload swaps flag sets under us.
        value = details.value
        if variant is not None and isinstance(value, dict) and "url" in value:
            backend = Backend(name=str(value.get("backend")), url=str(value["url"]).rstrip("/"))
        else:
            # An evaluation error or a disabled flag: serve the default variant, say why.
            variant = routing.default_variant
            backend = routing.table[variant]
        decision = Decision(
            flag_key=flag_key,
            variant=variant,
            backend=backend.name,
            url=backend.url,
            reason=reason,
            flag_set_version=int(version),
            decision_id=self.ids.next(),
            targeting_key=targeting_key,
            error_code=error_code,
            metadata=metadata,
            default_variant=routing.default_variant,
            ignored=ignored,
            tester=tester,
        )
        elapsed = time.perf_counter() - started
        for listener in self.listeners:
            listener(decision, elapsed)
        return decision

    def routing_table(self, flag_key: str) -> dict[str, Backend]:
        return self._routing_for(self._store.current, flag_key).table

    def _routing_for(self, flag_set: FlagSet, flag_key: str) -> FlagRouting:
        return self._lookup.get(flag_set, flag_key)


def shown_key(flag_key: str) -> str:
    """A flag key for an error message: quoted, escaped and cut short (it is client input)."""
    return ascii(flag_key if len(flag_key) <= 80 else flag_key[:77] + "...")


def _compile(flag_set: FlagSet, flag_key: str) -> FlagRouting | None:
    flag = flag_set.flags.get(flag_key)
    if flag is None:
        return None
    table = routing_table(flag)
    if table is None:
        return None
    default = flag.get("defaultVariant")
    if not isinstance(default, str) or default not in table:
        default = next(iter(table))  # flagd allows no default; the first variant stands in
    return FlagRouting(table=table, default_variant=default)
