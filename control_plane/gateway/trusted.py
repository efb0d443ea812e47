"""Trusted colouring: which routing header the gateway sets, and from what, per header rule.

A header rule with `set_by="gateway"` is never taken from the client: the rendered config sets
it from a trusted nginx variable (defined in the template's map/geo section) or clears it
(`proxy_set_header <name> "";`, which sends no header). A rule with `set_by="client"` passes the
client's value through, and so does a `tester_only` rule (a pin): the control plane honours it
only with a valid signed `x-tester-token`, and backends never see it. The decision subrequest
sends nothing else but the tester token, the gateway's own Authorization and the W3C trace
context.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from control_plane.settings import HeaderRule

__all__ = [
    "TESTER_TOKEN_HEADER",
    "TRUSTED_SOURCES",
    "backend_header_lines",
    "decision_header_lines",
    "who_sets",
]

#: Header of a signed tester token (verified by the control plane): passed through unchanged.
TESTER_TOKEN_HEADER = "x-tester-token"  # noqa: S105 - a header name, not a secret

#: Gateway-set headers with a trusted source in the shipped template (see its comments).
TRUSTED_SOURCES: Mapping[str, str] = {
    "x-user-id": "$cp_user_id",  # the gateway's sticky cookie (unsigned), or a verified user
    "x-region": "$cp_region",  # a geo block on the client address
}

_TRACE_HEADERS = ("traceparent", "tracestate")


def _client_value(header: str) -> str:
    return "$http_" + header.replace("-", "_")


def who_sets(rule: HeaderRule) -> tuple[str, str]:
    """(who, the nginx value) for one header rule in the shipped config."""
    if rule.set_by == "client":
        return "client", _client_value(rule.header)
    if rule.tester_only:
        return "tester", _client_value(rule.header)
    source = TRUSTED_SOURCES.get(rule.header)
    return ("gateway", source) if source else ("gateway (cleared)", '""')


def _rule_lines(rules: Iterable[HeaderRule], *, gateway_only: bool) -> list[str]:
    lines = []
    for rule in rules:
        who, value = who_sets(rule)
        if gateway_only and who == "client":
            continue
        if gateway_only and who == "tester":
            lines.append(f'proxy_set_header {rule.header} "";  # a pin is for the decision only')
            continue
        note = {
            "client": "set_by client: passed through as the client sent it",
            "gateway": "set_by gateway: from a trusted source, never the client",
            "gateway (cleared)": "set_by gateway: no trusted source configured, cleared",
            "tester": "tester_only: honoured only with a valid x-tester-token",
        }[who]
        lines.append(f"proxy_set_header {rule.header} {value};  # {note}")
    return lines


def decision_header_lines(rules: Iterable[HeaderRule], authorization: str) -> list[str]:
    """`proxy_set_header` lines of the decision subrequest (which passes no other header).

    `authorization` is the nginx value of the gateway's own Authorization (`""`: none); the
    client's Authorization never reaches the decision.
    """
    rules = [rule for rule in rules if rule.header not in (TESTER_TOKEN_HEADER, "authorization")]
    lines = _rule_lines(rules, gateway_only=False)
    lines.append(
        f"proxy_set_header {TESTER_TOKEN_HEADER} {_client_value(TESTER_TOKEN_HEADER)};"
        "  # a signed tester token, verified by the control plane"
    )
    lines.append(
        f"proxy_set_header Authorization {authorization};"
        "  # the gateway's token (CP_GATEWAY_TOKENS), never the client's"
    )
    lines.extend(f"proxy_set_header {name} {_client_value(name)};" for name in _TRACE_HEADERS)
    return lines


def backend_header_lines(rules: Iterable[HeaderRule]) -> list[str]:
    """Lines that give backends the gateway's values of gateway-set headers, not the client's."""
    rules = [rule for rule in rules if rule.header not in (TESTER_TOKEN_HEADER, "authorization")]
    lines = _rule_lines(rules, gateway_only=True)
    lines.append(
        f'proxy_set_header {TESTER_TOKEN_HEADER} "";  # a credential for the control plane only'
    )
    return lines
