"""The gateway outcome listener's input handling: syslog framing as nginx (and relays) send it,
checked fields, unknown flags and variants ignored and counted, and no crash on garbage."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from pathlib import Path
from typing import Any

import pytest
from conftest import write_flags
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from control_plane.flagstore import FlagStore
from control_plane.gateway.access_log import MAX_DATAGRAM, LineRefused, parse_datagram
from control_plane.gateway.outcomes import RESULTS, GatewayOutcomes
from control_plane.gateway.syslog_listener import start_syslog_listener
from control_plane.routing.dispatch import DispatchOutcome

FLAG = "chat-router"
LINE: dict[str, str] = {
    "v": "1",
    "flag": FLAG,
    "decision": "a1b2c3000000000001",
    "variant": "canary",
    "backend": "chat-v2",
    "reason": "TARGETING_MATCH",
    "version": "7",
    "status": "200",
    "upstream_status": "200",
    "upstream_time": "0.012",
    "header_time": "0.011",
    "request_time": "0.015",
    "dispatched": "",
    "fallback": "",
}


def _json(**changes: str) -> bytes:
    return json.dumps({**LINE, **changes}).encode()


def _rfc3164(message: bytes, host: bool = True) -> bytes:
    return b"<190>Dec  1 20:51:34 " + (b"gw-1 " if host else b"") + b"cp: " + message


@pytest.fixture
def outcomes(flags_dir: Path) -> tuple[GatewayOutcomes, list[DispatchOutcome], CollectorRegistry]:
    write_flags(
        flags_dir,
        "chat.flagd.json",
        {
            FLAG: {
                "state": "ENABLED",
                "defaultVariant": "stable",
                "metadata": {"experiment": True},
                "variants": {
                    "stable": {"backend": "chat-v1", "url": "http://127.0.0.1:9001"},
                    "canary": {"backend": "chat-v2", "url": "http://127.0.0.1:9002"},
                },
            }
        },
    )
    store = FlagStore(flags_dir)
    store.reload()
    seen: list[DispatchOutcome] = []
    registry = CollectorRegistry()
    return GatewayOutcomes(store, lambda: [seen.append], registry), seen, registry


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(lambda m: _rfc3164(m), id="rfc3164"),
        pytest.param(lambda m: _rfc3164(m, host=False), id="rfc3164-nohostname"),
        pytest.param(lambda m: b"<190>1 2026-12-01T20:51:34.123Z gw-1 cp - - - " + m, id="rfc5424"),
        pytest.param(
            lambda m: (
                b'<190>1 2026-12-01T20:51:34Z gw-1 cp 42 ID7 [x@1 a="]\\"{"] \xef\xbb\xbf' + m
            ),
            id="rfc5424-structured-data-bom",
        ),
        pytest.param(lambda m: m, id="bare-json"),
    ],
)
def test_every_framing_gives_the_same_outcome(outcomes: Any, framing: Any) -> None:
    """nginx's RFC 3164 lines (with or without host), RFC 5424 from a relay and bare JSON
    all become the same dispatch outcome: flag, variant, backend, status, latency, decision."""
    feed, seen, _ = outcomes
    assert feed.feed(framing(_json())) == "accepted"
    (outcome,) = seen
    assert (outcome.decision.flag_key, outcome.variant, outcome.backend) == (
        FLAG,
        "canary",
        "chat-v2",
    )
    assert (outcome.status, outcome.error, outcome.seconds) == (200, None, 0.012)
    assert outcome.decision.decision_id == "a1b2c3000000000001"
    assert outcome.decision.flag_set_version == 7
    assert outcome.decision.metadata["experiment"] is True  # experiments record it
    assert outcome.decision.default_variant == "stable"


@pytest.mark.parametrize(
    ("changes", "status", "error"),
    [
        ({"upstream_status": "503"}, 503, None),
        ({"upstream_status": "502", "header_time": "-"}, None, "refused"),
        ({"upstream_status": "504", "header_time": "-"}, None, "timeout"),
        ({"upstream_status": "502, 200", "header_time": "-, 0.004"}, 200, None),
    ],
)
def test_backend_answers_and_failures_are_told_apart(
    outcomes: Any, changes: dict[str, str], status: int | None, error: str | None
) -> None:
    """A backend's 5xx is a status; no response head at all is `refused` or `timeout`, as the
    dispatch proxy reports them; of several attempts the last one counts."""
    feed, seen, _ = outcomes
    assert feed.feed(_rfc3164(_json(**changes))) == "accepted"
    assert (seen[0].status, seen[0].error) == (status, error)


@pytest.mark.parametrize(
    ("changes", "result"),
    [
        ({"flag": "no-such-flag"}, "unknown_flag"),
        ({"variant": "no-such-variant"}, "unknown_variant"),
        ({"decision": ""}, "no_decision"),
        ({"decision": "", "variant": "", "fallback": "1"}, "fallback"),
        ({"dispatched": "a1b2c3000000000001"}, "dispatched"),
        ({"upstream_status": "-"}, "no_upstream"),
        ({"v": "2"}, "unsupported_version"),
        ({"decision": "x" * 65}, "malformed"),
        ({"upstream_status": "abc"}, "malformed"),
        ({"upstream_time": "nan", "request_time": "inf"}, "malformed"),
        ({"flag": "%ff%fe"}, "malformed"),
    ],
)
def test_lines_that_are_not_a_backend_call_are_ignored_and_counted(
    outcomes: Any, changes: dict[str, str], result: str
) -> None:
    """Unknown flags or variants, requests without a decision, fallbacks, calls the dispatch
    proxy already counted and malformed fields feed nothing, each counted by result."""
    feed, seen, registry = outcomes
    assert feed.feed(_rfc3164(_json(**changes))) == result
    assert seen == []
    assert (
        registry.get_sample_value("control_plane_gateway_log_lines_total", {"result": result}) == 1
    )


def test_datagrams_from_outside_the_allowed_networks_are_refused(outcomes: Any) -> None:
    """A line from an address outside gateway_log_sources feeds nothing."""
    feed, seen, _ = outcomes
    assert feed.feed(_rfc3164(_json()), "192.0.2.1") == "refused_source"
    assert feed.feed(_rfc3164(_json()), "127.0.0.1") == "accepted"
    assert len(seen) == 1


def test_oversized_datagrams_are_refused_unread() -> None:
    """A datagram over MAX_DATAGRAM bytes is refused before any parsing."""
    with pytest.raises(LineRefused) as refused:
        parse_datagram(_rfc3164(_json(backend="x" * MAX_DATAGRAM)))
    assert refused.value.reason == "oversized"


def test_random_bytes_and_mutated_lines_never_crash_the_listener(outcomes: Any) -> None:
    """20,000 random datagrams and byte-mutated real lines: every one gets a result label,
    none raises, and nothing but valid lines reaches the listeners."""
    feed, seen, _ = outcomes
    rng = random.Random(20261201)
    valid = _rfc3164(_json())
    deep = b"<190>Dec  1 20:51:34 h cp: " + b"[" * 5000
    for index in range(20_000):
        if index % 2:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
        else:
            mutated = bytearray(valid)
            for _ in range(rng.randrange(1, 6)):
                mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
            data = bytes(mutated)
        assert feed.feed(data) in RESULTS
    assert feed.feed(deep) == "malformed"
    for outcome in seen:  # whatever survived mutation is still a checked outcome
        assert outcome.variant in ("stable", "canary")
        assert outcome.decision.flag_key == FLAG


@settings(max_examples=300, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(sorted(LINE)), st.text(max_size=40)))
def test_any_field_values_give_a_result_not_an_exception(fields: dict[str, str]) -> None:
    """Whatever strings the fields hold (surrogates, controls, numbers), parsing either
    yields a checked line or refuses with a fixed reason."""
    data = _rfc3164(json.dumps({**LINE, **fields}).encode())
    try:
        line = parse_datagram(data)
    except LineRefused as refused:
        reason = refused.reason
    else:
        reason = None
        assert line.seconds >= 0
        assert line.status is None or 100 <= line.status <= 599
    assert reason is None or reason in RESULTS


def test_the_udp_listener_feeds_each_datagram(outcomes: Any) -> None:
    """Datagrams sent to the bound UDP port reach the outcome feed, garbage included."""
    feed, seen, registry = outcomes

    async def scenario() -> None:
        transport = await start_syslog_listener(feed, "127.0.0.1", 0)
        port = transport.get_extra_info("sockname")[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for data in (_rfc3164(_json()), b"\x00garbage", _rfc3164(_json(variant="zz"))):
                sender.sendto(data, ("127.0.0.1", port))
        for _ in range(200):
            if (
                sum(
                    registry.get_sample_value(
                        "control_plane_gateway_log_lines_total", {"result": result}
                    )
                    or 0
                    for result in RESULTS
                )
                == 3
            ):
                break
            await asyncio.sleep(0.01)
        transport.close()

    asyncio.run(scenario())
    assert len(seen) == 1
    for result in ("accepted", "malformed", "unknown_variant"):
        assert (
            registry.get_sample_value("control_plane_gateway_log_lines_total", {"result": result})
            == 1
        )
