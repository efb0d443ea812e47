"""Parse one outcome line as nginx sends it: syslog framing around the `cp_route` JSON.

nginx's `access_log syslog:` sends RFC 3164 datagrams (`<190>Dec  1 20:51:34 host cp: {...}`,
or without the host with `nohostname`); relays such as rsyslog may re-frame them as RFC 5424
(`<190>1 2026-12-01T20:51:34Z host cp - - - {...}`); bare JSON is accepted too. Everything
here is untrusted input: sizes are bounded, every field is checked, and anything unexpected
raises LineRefused with a fixed reason (a metric label), never another exception.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["MAX_DATAGRAM", "GatewayLine", "LineRefused", "parse_datagram", "syslog_message"]

#: Larger datagrams are refused unread (nginx's own lines are well under 1 KiB).
MAX_DATAGRAM = 8192
_MAX_FIELDS = 32
_MAX_FIELD = 512
_PRI = re.compile(rb"^<([0-9]{1,3})>")
_RFC3164_TIME = re.compile(rb"^[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} ")
_DECISION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_REASON = re.compile(r"^[A-Z_]{1,32}$")
_STATUS = re.compile(r"^[1-5][0-9]{2}$")
_BOM = b"\xef\xbb\xbf"


class LineRefused(Exception):
    """A datagram that yields no outcome; `reason` is one of a fixed set of labels."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class GatewayLine:
    """The fields of one `cp_route` line that an outcome is built from, checked."""

    flag: str
    decision_id: str
    variant: str
    reason: str
    flag_set_version: int | None
    #: The backend's status; None when it gave no response head (refused, timed out).
    status: int | None
    error: str | None
    seconds: float
    #: True for a request the stable fallback served (no decision was had).
    fallback: bool
    #: True when the upstream was the control plane's dispatch proxy (it counted the call).
    dispatched: bool


def syslog_message(data: bytes) -> bytes:
    """The MSG part of an RFC 3164 or RFC 5424 datagram (or the datagram, when bare JSON)."""
    if data.startswith(b"{"):
        return data
    match = _PRI.match(data)
    if match is None or int(match.group(1)) > 191:
        raise LineRefused("malformed")
    rest = data[match.end() :]
    if rest.startswith(b"1 "):
        return _rfc5424_message(rest[2:])
    time_match = _RFC3164_TIME.match(rest)
    if time_match is None:
        raise LineRefused("malformed")
    rest = rest[time_match.end() :]
    # HOSTNAME? TAG: MSG (nginx writes "host tag: msg", or "tag: msg" with nohostname)
    first, _, after_first = rest.partition(b" ")
    if _is_tag(first):
        return after_first
    second, _, after_second = after_first.partition(b" ")
    if _is_tag(second):
        return after_second
    return after_first  # a sender without a tag: the host, then the message


def _is_tag(token: bytes) -> bool:
    return token.endswith(b":") or (token.endswith(b"]:") and b"[" in token)


def _rfc5424_message(rest: bytes) -> bytes:
    # TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]
    parts = rest.split(b" ", 5)
    if len(parts) < 6:
        raise LineRefused("malformed")
    data = parts[5]
    if data.startswith(b"-"):
        message = data[1:]
    else:
        index = 0
        while index < len(data) and data[index : index + 1] == b"[":
            index = _element_end(data, index)
        message = data[index:]
    if message.startswith(b" "):
        message = message[1:]
    return message.removeprefix(_BOM)


def _element_end(data: bytes, start: int) -> int:
    """Index after the SD-ELEMENT at `start` (quoted values may hold escaped ] and ")."""
    index, quoted = start + 1, False
    while index < len(data):
        char = data[index : index + 1]
        if char == b"\\" and quoted:
            index += 2
            continue
        if char == b'"':
            quoted = not quoted
        elif char == b"]" and not quoted:
            return index + 1
        index += 1
    raise LineRefused("malformed")


def parse_datagram(data: bytes) -> GatewayLine:
    """One checked GatewayLine from one datagram, or LineRefused saying why not."""
    if len(data) > MAX_DATAGRAM:
        raise LineRefused("oversized")
    message = syslog_message(data).strip()
    try:
        fields = json.loads(message)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise LineRefused("malformed") from None
    if not isinstance(fields, dict) or len(fields) > _MAX_FIELDS:
        raise LineRefused("malformed")
    for value in fields.values():
        if not isinstance(value, str) or len(value) > _MAX_FIELD:
            raise LineRefused("malformed")
    if fields.get("v", "1") != "1":
        raise LineRefused("unsupported_version")
    try:
        flag = unquote(fields.get("flag", ""), errors="strict")
    except UnicodeDecodeError:
        raise LineRefused("malformed") from None
    if not flag or not flag.isprintable():
        raise LineRefused("malformed")
    fallback = fields.get("fallback") == "1"
    decision_id = fields.get("decision", "")
    if not fallback and not _DECISION_ID.fullmatch(decision_id):
        raise LineRefused("no_decision" if decision_id == "" else "malformed")
    status_text = _last(fields.get("upstream_status", ""))
    if status_text in ("", "-"):
        raise LineRefused("no_upstream")
    if not _STATUS.fullmatch(status_text):
        raise LineRefused("malformed")
    upstream_status = int(status_text)
    answered = _last(fields.get("header_time", "")) not in ("", "-")
    seconds = _seconds(_last(fields.get("upstream_time", "")))
    if seconds is None:
        seconds = _seconds(fields.get("request_time", ""))
    if seconds is None:
        raise LineRefused("malformed")
    reason = fields.get("reason", "")
    version = fields.get("version", "")
    return GatewayLine(
        flag=flag,
        decision_id=decision_id,
        variant=fields.get("variant", ""),
        reason=reason if _REASON.fullmatch(reason) else "UNKNOWN",
        flag_set_version=int(version) if version.isdigit() and len(version) < 19 else None,
        status=upstream_status if answered else None,
        error=None if answered else ("timeout" if upstream_status == 504 else "refused"),
        seconds=seconds,
        fallback=fallback,
        dispatched=bool(fields.get("dispatched")),
    )


def _last(value: str) -> str:
    """The last of nginx's per-attempt values ("502, 200" across servers, "a : b" redirects)."""
    return re.split(r"[,:]", value)[-1].strip()


def _seconds(text: str) -> float | None:
    if not re.fullmatch(r"[0-9]{1,7}(?:\.[0-9]{1,6})?", text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None
