"""Filling a canary's PromQL queries in: `{{ flag }}`, `{{ variant }}`, `{{ stable }}`,
`{{ interval }}`, as Flagger's metric templates fill `{{ target }}` and `{{ interval }}`.

Names are checked when the spec is parsed, so a typo is a 422, not a failed check an interval
later. Values are escaped for a double-quoted PromQL string (`\\` and `"`), which is where flag
and variant names go (`{variant="{{ variant }}"}`); `{{ interval }}` is a Prometheus duration
(`30s`, `1500ms`) for range selectors such as `[{{ interval }}]`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["VARIABLES", "duration", "render", "unknown_variables"]

#: Every variable a query may use, and what it becomes.
VARIABLES = {
    "flag": "the routing flag's key",
    "variant": "the canary variant (canaryVariant)",
    "stable": "the stable variant (stableVariant)",
    "interval": "the analysis interval as a Prometheus duration, e.g. 30s",
}

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def unknown_variables(query: str) -> list[str]:
    """The placeholder names in `query` that are not template variables, in order."""
    return [name for name in _PLACEHOLDER.findall(query) if name not in VARIABLES]


def duration(seconds: float) -> str:
    """`seconds` as a Prometheus duration: whole seconds as `30s`, otherwise milliseconds."""
    millis = max(1, round(seconds * 1000))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def render(query: str, values: Mapping[str, str]) -> str:
    """`query` with every `{{ name }}` replaced by its escaped value (names checked before)."""
    return _PLACEHOLDER.sub(lambda match: _escape(values[match.group(1)]), query)
