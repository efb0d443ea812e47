"""Unpacking a message in one JSON call gives exactly what unpacking it line by line gives:
the same records for a well-formed pack, and the line-by-line refusals (each bad line alone,
with its number) for any other payload, however its lines are made."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.events.messages import _unpack_lines, _unpack_whole, encode, unpack
from control_plane.experiments.records import CALL_SAMPLES, EXPOSURES, OUTCOME_EVENTS, Record


def _exposure(index: int, unit: str | None = None) -> Record:
    return Record(
        EXPOSURES,
        {
            "decision_id": f"d-{index:08d}",
            "flag": "chat-router",
            "variant": "canary" if index % 2 else "stable",
            "unit": unit if unit is not None else f"{index:064x}",
            "flag_set_version": 1,
            "reason": "SPLIT",
            "at": 1_700_000_000.0 + index / 7,
        },
    )


def _outcome(index: int) -> Record:
    row = {"id": f"{index:032x}", "decision_id": f"d-{index:08d}", "metric": "clicked"}
    return Record(OUTCOME_EVENTS, {**row, "unit": None, "kind": "binary", "value": 1.0})


def _pack(records: list[Record]) -> bytes:
    return b"\n".join(encode(record) for record in records)


#: A record is `{"table": "exposures", "row": {...}}`: lines that are not one, alone or in
#: pairs that keep the count of a joined array (`HEAD` left open at its end, `TAIL` closing it;
#: two records on one line), and lines that are one in an unusual spelling.
HEAD = b'{"table":"exposures","row":{"decision_id":"x","values":[1'
TAIL = b"2]}}"
TWO = b'{"table":"exposures","row":{"decision_id":"a"}} , {"table":"exposures","row":{}}'
BAD_LINES = [
    b"not json",
    b"",
    b" \t\r",
    b"\xff",
    b"\x00",
    b"[]",
    b"{}",
    b"null",
    b'{"table":"nope","row":{}}',
    b'{"table":"exposures","row":[]}',
    b'{"table":"exposures"}',
    HEAD,
    TAIL,
    TWO,
    TWO.replace(b" , ", b","),
    b'{"table":"exposures","row":{}}{"table":"exposures","row":{}}',
    b'[{"table":"exposures","row":{}}',
    b'{"table":"exposures","row":{}}]',
    b'{"table":"exposures","row":{"s":"a',
    b'b"}}',
    b'{"table":"exposures","row":{"s":"\t"}}',  # a raw tab in a string is no JSON
    b"\xef\xbb\xbf" + encode(_exposure(0)),  # a byte order mark
]
ODD_RECORDS = [
    b' {"row":{"decision_id":"\\u00e9\\n\\"q\\"","at":1e400},"table":"call_samples"}\r',
    '{"table":"exposures","row":{"decision_id":"日本","unit":"é"}}'.encode(),
    b'{"table":"exposures","row":{"decision_id":"d","table":"x"},"table":"outcome_events"}',
    b'{"table":"exposures","row":{"n":[{"a":1},{"b":[2,{}]}],"s":"},{"}}',
]


def test_a_well_formed_pack_is_read_whole_and_as_line_by_line() -> None:
    """A pack the publisher makes takes the one-call path and gives the records it holds, in
    order, non-ASCII and escaped strings included."""
    records = [_exposure(i, unit='ünït "q" \\ \u2028 \n') for i in range(50)]
    records += [_outcome(i) for i in range(3)]
    payload = _pack(records)
    assert _unpack_whole(payload) == records
    assert unpack(payload) == (records, []) == _unpack_lines(payload)


def test_a_pack_with_a_bad_line_is_refused_line_by_line() -> None:
    """A bad line sends the pack to the line-by-line path: the line refused alone with its
    number, the other records kept."""
    good = [_exposure(1), _exposure(2), _exposure(3)]
    payload = b"\n".join([encode(good[0]), b"not json", encode(good[1]), encode(good[2])])
    assert _unpack_whole(payload) is None
    records, refused = unpack(payload)
    assert records == good
    assert [why.split(":")[0] for why in refused] == ["line 2"]


def test_lines_that_keep_the_array_s_count_are_still_refused_alone() -> None:
    """A line left open and the line that closes it make one element of a joined array, and a
    line of two records makes two: together they keep the count, and are refused all the
    same."""
    good = _exposure(1)
    payload = b"\n".join([encode(good), HEAD, TAIL, TWO.replace(b" , ", b",")])
    assert len(json.loads(b"[" + payload.replace(b"\n", b",") + b"]")) == 4  # the count kept
    assert unpack(payload) == _unpack_lines(payload)
    records, refused = unpack(payload)
    assert records == [good]
    assert [why.split(":")[0] for why in refused] == ["line 2", "line 3", "line 4"]


@pytest.mark.parametrize("line", ODD_RECORDS)
def test_a_record_in_an_unusual_spelling_is_read_as_line_by_line(line: bytes) -> None:
    """Whitespace, key order, escapes, duplicate keys, nested values: the same record both
    ways."""
    payload = b"\n".join([encode(_exposure(1)), line, encode(_exposure(2))])
    assert unpack(payload) == _unpack_lines(payload)
    assert len(unpack(payload)[0]) == 3


_lines = st.one_of(
    st.integers(0, 40).map(lambda i: encode(_exposure(i))),
    st.integers(0, 40).map(lambda i: encode(_outcome(i))),
    st.sampled_from(BAD_LINES + ODD_RECORDS),
    st.text(max_size=12).map(
        lambda s: encode(Record(CALL_SAMPLES, {"decision_id": s, "variant": s}))
    ),
    st.binary(max_size=8).filter(lambda b: b"\n" not in b),
)


@given(st.lists(_lines, max_size=8))
def test_unpack_is_line_by_line_unpacking_for_any_lines(lines: list[bytes]) -> None:
    """Any payload of such lines: the same records and refusals as line by line."""
    payload = b"\n".join(lines)
    assert unpack(payload) == _unpack_lines(payload)


_groups = st.sampled_from([[HEAD, TAIL], [HEAD], [TAIL], [TWO], [b""], ODD_RECORDS[:1]])


@given(st.lists(_groups, max_size=6))
def test_open_and_doubled_lines_never_pass_for_records(groups: list[list[bytes]]) -> None:
    """Lines that open, close or double values, in any order and count: as line by line."""
    payload = b"\n".join([encode(_exposure(0)), *(line for group in groups for line in group)])
    assert unpack(payload) == _unpack_lines(payload)
