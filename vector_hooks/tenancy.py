"""Tenant ids: the one alphabet every adapter accepts, checked before any backend sees an id.

A tenant id is 1 to 64 characters from ``A-Z a-z 0-9 _ -``. That is the same alphabet Weaviate
uses for native tenant names, so one id works with both adapters, and it contains no character
that means anything inside a Milvus expression string (quotes, backslashes, spaces, newlines).
Anything else is refused with `InvalidTenantId`, naming the first offending character. The
adapters still escape the id (and use server-side template parameters where supported): the
alphabet is the first line of defence, not the only one.
"""

from __future__ import annotations

import re

from vector_hooks.errors import InvalidTenantId

__all__ = ["TENANT_ID_ALPHABET", "TENANT_ID_MAX_LENGTH", "TENANT_ID_PATTERN", "validate_tenant_id"]

#: Human-readable statement of the allowed characters (used in error messages and docs).
TENANT_ID_ALPHABET = "ASCII letters, digits, '_' and '-'"
#: Longest accepted tenant id, in characters.
TENANT_ID_MAX_LENGTH = 64
#: The full rule as a regular expression.
TENANT_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,%d}" % TENANT_ID_MAX_LENGTH)  # noqa: UP031
_ALLOWED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def validate_tenant_id(tenant: object) -> str:
    """Return `tenant` unchanged if it is a valid tenant id, else raise `InvalidTenantId`.

    >>> validate_tenant_id("acme-eu_1")
    'acme-eu_1'
    """
    if not isinstance(tenant, str):
        raise InvalidTenantId(tenant, f"must be a string, not {type(tenant).__name__}")
    if not tenant:
        raise InvalidTenantId(tenant, "must not be empty")
    if len(tenant) > TENANT_ID_MAX_LENGTH:
        raise InvalidTenantId(
            tenant, f"is {len(tenant)} characters long; the limit is {TENANT_ID_MAX_LENGTH}"
        )
    if TENANT_ID_PATTERN.fullmatch(tenant) is None:
        position, char = next((i, c) for i, c in enumerate(tenant) if c not in _ALLOWED)
        raise InvalidTenantId(
            tenant,
            f"character {char!r} at position {position} is not allowed "
            f"(allowed: {TENANT_ID_ALPHABET})",
        )
    return tenant
