"""The lean decide path: routing decisions from the compiled flagd evaluator, answered from
response parts prebuilt per (flag-set version, flag, variant).

The OpenFeature path (control_plane.routing.decisions.Decider) spends most of a decision in SDK
objects and flagd-core's interpreter. `CompiledDecider` evaluates with providers.compiled
directly (a CompiledFlagSet kept current with the flag store, compiled from the same stamped
documents the flagd provider is fed) and keeps, per flag-set version, each answer's JSON body
around the decision id and its response headers already encoded: a request splices in its
decision id, nothing else. It makes the same Decisions (listeners see no difference) and the
same bytes as the OpenFeature path (tests/test_lean_decide.py checks both over the golden users).
The OpenFeature path stays for `/v1/route`, OFREP and whenever OpenFeature hooks are configured.

Two forms of the same answer: `decide` gives ASGI's header pairs (the ASGI fast path), and
`decide_wire` the header lines as the HTTP server writes them (control_plane.http.inline_decide,
which answers in the server's parser callback), prebuilt too.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from control_plane.errors import FlagNotFound
from control_plane.flagstore import FlagSet, FlagStore
from control_plane.flagstore.flagset import VERSION_KEY
from control_plane.routing.backends import Backend
from control_plane.routing.decisions import (
    Decision,
    DecisionIds,
    DecisionListener,
    FlagRouting,
    RoutingLookup,
    shown_key,
)
from control_plane.routing.wire import decision_headers
from providers.compiled import CompiledFlagSet, InvalidFlagSet, Resolution

__all__ = [
    "CompiledDecider",
    "DecideAnswer",
    "WireAnswer",
    "decision_answer",
    "encode_headers",
    "header_lines",
    "json_body",
]

log = logging.getLogger(__name__)

#: One encoder for all requests: json.dumps with options builds a new encoder per call.
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_DECISION_ID = b"x-route-decision-id"
_JSON = (b"content-type", b"application/json")
_NOT_FOUND = "FLAG_NOT_FOUND"
#: What uvicorn refuses in a header value (it answers 500): control bytes but tab.
_UNSAFE_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")

Headers = list[tuple[bytes, bytes]]


def json_body(decision: Decision) -> bytes:
    """The decision's JSON body, as every decide endpoint answers it."""
    return _ENCODE(decision.as_json()).encode()


def encode_headers(pairs: Sequence[tuple[str, str]], body_length: int) -> Headers:
    """Response headers for a JSON answer of `body_length` bytes (values in latin-1)."""
    headers = [(name.encode(), value.encode("latin-1")) for name, value in pairs]
    headers.append(_JSON)
    headers.append((b"content-length", str(body_length).encode()))
    return headers


def decision_answer(decision: Decision) -> tuple[bytes, Headers]:
    """The decision's JSON body and its response headers, built for this one decision."""
    body = json_body(decision)
    return body, encode_headers(decision_headers(decision), len(body))


def header_lines(headers: Headers) -> bytes | None:
    """`headers` as the lines of an HTTP/1.1 head, or None when a value holds a byte that
    uvicorn would refuse to write (a flag's backend URL with a newline, say)."""
    lines = []
    for name, value in headers:
        if _UNSAFE_VALUE.search(value):
            return None
        lines.append(b"%s: %s\r\n" % (name, value))
    return b"".join(lines)


class DecideAnswer(NamedTuple):
    """A decision and its response, ready to send (`headers` include the content length).

    A NamedTuple: a frozen dataclass costs ~1.5 us more per request to build."""

    decision: Decision
    body: bytes
    headers: Headers


class WireAnswer(NamedTuple):
    """A decision and its response for the HTTP server: `lines` are the head's header lines
    (content type and length included), None when a value cannot be written (see
    `header_lines`)."""

    decision: Decision
    body: bytes
    lines: bytes | None


@dataclass(frozen=True, slots=True)
class _Prebuilt:
    """Everything of one (version, flag, answer) that does not depend on the request."""

    resolution: Resolution  # kept alive, so its id() is not reused while cached
    variant: str
    backend: str
    url: str
    reason: str
    version: int
    error_code: str | None
    #: Shared by every Decision made from this answer: listeners must not mutate it.
    metadata: dict[str, Any]
    default_variant: str
    body_head: bytes  # the JSON body up to the decision id's opening quote
    body_tail: bytes  # from the decision id's closing quote to the end
    headers_head: Headers  # before x-route-decision-id
    headers_tail: Headers  # after it, content-type and content-length included
    lines_head: bytes | None  # headers_head as head lines, through "x-route-decision-id: "
    lines_tail: bytes | None  # "\r\n", then headers_tail as head lines


@dataclass(frozen=True, slots=True)
class _State:
    """One flag-set version: the store's flag set, its compiled form, the prebuilt answers."""

    flag_set: FlagSet
    compiled: CompiledFlagSet
    prebuilt: dict[int, _Prebuilt]


class CompiledDecider:
    """Decides routing flags with the compiled evaluator; subscribe `update` to the store."""

    def __init__(
        self, store: FlagStore, *, ids: DecisionIds, listeners: list[DecisionListener]
    ) -> None:
        self._store = store
        self._state: _State | None = None
        self._lookup = RoutingLookup()
        self._update_lock = threading.Lock()
        self.ids = ids
        #: The Decider's own list (shared): every listener sees the decisions of both paths.
        self.listeners = listeners

    @property
    def flag_set(self) -> CompiledFlagSet | None:
        state = self._state
        return state.compiled if state is not None else None

    def update(self, flag_set: FlagSet) -> None:
        """FlagStore listener: compile the new flag set (unchanged flags are reused)."""
        with self._update_lock:
            previous = self._state.compiled if self._state is not None else None
            try:
                # The same compiled set the OpenFeature provider gets from this document.
                compiled = CompiledFlagSet.shared(flag_set.stamped_document, previous)
            except InvalidFlagSet as exc:
                # flagd-core refuses such a document too and keeps its flags: so do we.
                log.warning(
                    "flag set version %s refused by the compiled evaluator; the "
                    "previous flags keep serving: %s",
                    flag_set.version,
                    exc,
                )
                if previous is None:
                    return
                compiled = previous
            self._state = _State(flag_set, compiled, {})

    def decide(
        self,
        flag_key: str,
        targeting_key: str | None,
        attributes: dict[str, Any],
        *,
        ignored: list[str] | None = None,
        tester: str | None = None,
    ) -> DecideAnswer:
        """Decide `flag_key` and build its response; raises as Decider.decide does."""
        decision, prebuilt = self._decided(flag_key, targeting_key, attributes, ignored, tester)
        if ignored or tester:  # notes of this request: built as the OpenFeature path builds
            return DecideAnswer(decision, *decision_answer(decision))
        id_bytes = decision.decision_id.encode()
        return DecideAnswer(
            decision,
            prebuilt.body_head + id_bytes + prebuilt.body_tail,
            [*prebuilt.headers_head, (_DECISION_ID, id_bytes), *prebuilt.headers_tail],
        )

    def decide_wire(
        self,
        flag_key: str,
        targeting_key: str | None,
        attributes: dict[str, Any],
        *,
        ignored: list[str] | None = None,
        tester: str | None = None,
    ) -> WireAnswer:
        """`decide`, with the headers as the head lines the HTTP server writes."""
        decision, prebuilt = self._decided(flag_key, targeting_key, attributes, ignored, tester)
        if ignored or tester or prebuilt.lines_head is None or prebuilt.lines_tail is None:
            body, headers = decision_answer(decision)
            return WireAnswer(decision, body, header_lines(headers))
        id_bytes = decision.decision_id.encode()
        return WireAnswer(
            decision,
            prebuilt.body_head + id_bytes + prebuilt.body_tail,
            prebuilt.lines_head + id_bytes + prebuilt.lines_tail,
        )

    def _decided(
        self,
        flag_key: str,
        targeting_key: str | None,
        attributes: dict[str, Any],
        ignored: list[str] | None,
        tester: str | None,
    ) -> tuple[Decision, _Prebuilt]:
        """The decision (listeners told) and its prebuilt parts."""
        started = time.perf_counter()
        state = self._state
        if state is None:
            self._store.current  # noqa: B018 - raises FlagsNotLoaded, as the OpenFeature path
            raise FlagNotFound(f"no flag named {shown_key(flag_key)}")  # loaded meanwhile
        routing = self._lookup.get(state.flag_set, flag_key)
        resolution = state.compiled.evaluate(flag_key, targeting_key, attributes)
        prebuilt = state.prebuilt.get(id(resolution))
        if prebuilt is None or prebuilt.resolution is not resolution:
            if resolution.error_code == _NOT_FOUND:
                raise FlagNotFound(f"no flag named {shown_key(flag_key)}")
            prebuilt = _prebuild(state, flag_key, routing, resolution)
            if resolution.error_code is None:  # the shared answers; errors may be per call
                state.prebuilt[id(resolution)] = prebuilt
        decision = Decision(
            flag_key,
            prebuilt.variant,
            prebuilt.backend,
            prebuilt.url,
            prebuilt.reason,
            prebuilt.version,
            self.ids.next(),
            targeting_key,
            prebuilt.error_code,
            prebuilt.metadata,
            prebuilt.default_variant,
            ignored,
            tester,
        )
        elapsed = time.perf_counter() - started
        for listener in self.listeners:
            listener(decision, elapsed)
        return decision, prebuilt


def _prebuild(
    state: _State, flag_key: str, routing: FlagRouting, resolution: Resolution
) -> _Prebuilt:
    """The parts of an answer, as Decider turns an OpenFeature evaluation into a Decision."""
    metadata = dict(resolution.metadata)
    version = int(metadata.pop(VERSION_KEY, state.flag_set.version))
    variant, value = resolution.variant, resolution.value
    if variant is not None and isinstance(value, dict) and "url" in value:
        backend = Backend(name=str(value.get("backend")), url=str(value["url"]).rstrip("/"))
    else:  # an evaluation error or a disabled flag: serve the default variant, say why
        variant = routing.default_variant
        backend = routing.table[variant]
    template = Decision(
        flag_key,
        variant,
        backend.name,
        backend.url,
        resolution.reason,
        version,
        "",
        None,
        resolution.error_code,
        metadata,
        routing.default_variant,
    )
    fields = template.as_json()
    fields.pop("decisionId")
    error_code = fields.pop("errorCode", None)
    head = _ENCODE(fields)[:-1] + ',"decisionId":"'
    tail = '"' + (f',"errorCode":{_ENCODE(error_code)}' if error_code else "") + "}"
    body_head, body_tail = head.encode(), tail.encode()
    length = len(body_head) + DecisionIds.LENGTH + len(body_tail)
    headers = encode_headers(decision_headers(template), length)
    at = next(index for index, (name, _) in enumerate(headers) if name == _DECISION_ID)
    lines_head, lines_tail = header_lines(headers[:at]), header_lines(headers[at + 1 :])
    return _Prebuilt(
        resolution,
        variant,
        backend.name,
        backend.url,
        resolution.reason,
        version,
        resolution.error_code,
        metadata,
        routing.default_variant,
        body_head,
        body_tail,
        headers[:at],
        headers[at + 1 :],
        None if lines_head is None else lines_head + _DECISION_ID + b": ",
        None if lines_tail is None else b"\r\n" + lines_tail,
    )
