"""Milvus boolean expressions: quote values, check caller filters, AND the tenant around them.

Why each step exists (all seen on Milvus Lite 3.2.2): a naive f-string such as
``f'tenant_id == "{tenant}"'`` returns every tenant's rows for the id ``t1" or tenant_id != "``;
a caller filter with an unbalanced ``)`` can close the parenthesis around it and OR itself
past the tenant condition. So tenant ids are validated (`vector_hooks.tenancy`) and quoted, and
the caller's filter is refused unless its brackets balance outside string literals, its string
literals are terminated on their line, and it holds no control characters, before it is
wrapped as ``(<tenant condition>) and (<caller filter>)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from vector_hooks.errors import InvalidFilter, UnsafeArgument

__all__ = [
    "TENANT_PARAM",
    "check_field_name",
    "check_filter",
    "compose",
    "in_list",
    "quote",
    "tenant_condition",
]

#: Name of the template parameter carrying the tenant where the server supports filter_params.
TENANT_PARAM = "vh_tenant"

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {")", "]", "}"}


def check_field_name(name: str) -> str:
    """A plain Milvus field identifier, or ValueError."""
    if not isinstance(name, str) or _FIELD.fullmatch(name) is None:
        raise ValueError(f"{name!r} is not a plain field name ([A-Za-z_][A-Za-z0-9_]*)")
    return name


def quote(value: str) -> str:
    """A double-quoted Milvus string literal for `value`.

    >>> quote('a"b')
    '"a\\\\"b"'
    """
    if not isinstance(value, str):
        raise UnsafeArgument(f"expected a string value, got {type(value).__name__}")
    for char in value:
        if (ord(char) < 0x20 and char not in "\n\r\t") or ord(char) == 0x7F:
            raise UnsafeArgument(f"value contains control character {char!r}")
    return '"' + "".join(_ESCAPES.get(char, char) for char in value) + '"'


def tenant_condition(field: str, tenant: str, *, as_param: bool) -> str:
    """``field == "tenant"`` or, with server-side templates, ``field == {vh_tenant}``."""
    if as_param:
        return f"{field} == {{{TENANT_PARAM}}}"
    return f"{field} == {quote(tenant)}"


def check_filter(expr: object, *, templates: bool = False) -> str:
    """Return the stripped caller filter, or raise `InvalidFilter` saying what is wrong.

    `templates` allows ``{name}`` placeholders (servers with filter_params support).
    """
    if expr is None:
        return ""
    if not isinstance(expr, str):
        raise InvalidFilter(f"filter must be a string, not {type(expr).__name__}")
    stack: list[tuple[str, int]] = []
    quote_char = ""
    escaped = False
    for column, char in enumerate(expr, start=1):
        if char == "\x00" or (ord(char) < 0x20 and char not in "\n\r\t"):
            raise InvalidFilter(f"filter contains control character {char!r} at column {column}")
        if quote_char:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote_char:
                quote_char = ""
            elif char in "\r\n":
                raise InvalidFilter(f"string literal broken by a line break at column {column}")
            continue
        if char in "\"'":
            quote_char = char
        elif char in _OPENERS:
            if char == "{" and not templates:
                raise InvalidFilter(
                    f"'{{' at column {column}: template parameters need a server with "
                    "filter_params support"
                )
            stack.append((char, column))
        elif char in _CLOSERS:
            if not stack or _OPENERS[stack[-1][0]] != char:
                raise InvalidFilter(f"unbalanced {char!r} at column {column} of the filter")
            stack.pop()
        elif char == "\\":
            raise InvalidFilter(f"backslash outside a string literal at column {column}")
    if quote_char:
        raise InvalidFilter("unterminated string literal in the filter")
    if stack:
        char, column = stack[-1]
        raise InvalidFilter(f"unclosed {char!r} at column {column} of the filter")
    return expr.strip()


def compose(tenant_expr: str, caller_filter: str) -> str:
    """The tenant condition ANDed around the (checked) caller filter."""
    if not caller_filter:
        return tenant_expr
    return f"({tenant_expr}) and ({caller_filter})"


def in_list(field: str, values: Iterable[object]) -> str:
    """``field in [...]`` for primary keys (ints or strings)."""
    items: list[str] = []
    for value in values:
        if isinstance(value, bool):
            raise UnsafeArgument("ids must be integers or strings, not booleans")
        if isinstance(value, int):
            items.append(str(value))
        elif isinstance(value, str):
            items.append(quote(value))
        else:
            raise UnsafeArgument(f"ids must be integers or strings, not {type(value).__name__}")
    return f"{field} in [{', '.join(items)}]"
