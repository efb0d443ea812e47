"""Tenant ids: the one alphabet every adapter accepts, checked before any backend sees an id.

A tenant id is 1 to 64 characters from ``A-Z a-z 0-9 _ -``. That is the same alphabet Weaviate
uses for native tenant names, so one id works with both adapters, and it contains no character
that means anything inside a Milvus expression string (quotes, backslashes, spaces, newlines).
Anything else is refused with `InvalidTenantId`, naming the first offending character. The
adapters still escape the id (and use server-side template parameters where supported): the
alphabet is the first line of defence, not the only one.

Tenant-prefixed keys (`tenant_key`): ``"acme:doc-1"``. ``:`` is outside the alphabet, so the
tenant part of such a key is unambiguous and two tenants can never choose the same key. That is
what closes the check-then-write race of shared collections (see `TenantMilvus`).
"""

from __future__ import annotations

import re

from vector_hooks.errors import InvalidTenantId

__all__ = [
    "TENANT_ID_ALPHABET",
    "TENANT_ID_MAX_LENGTH",
    "TENANT_ID_PATTERN",
    "TENANT_KEY_SEPARATOR",
    "is_tenant_key",
    "tenant_key",
    "validate_tenant_id",
]

#: Human-readable statement of the allowed characters (used in error messages and docs).
TENANT_ID_ALPHABET = "ASCII letters, digits, '_' and '-'"
#: Longest accepted tenant id, in characters.
TENANT_ID_MAX_LENGTH = 64
#: The full rule as a regular expression.
TENANT_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,%d}" % TENANT_ID_MAX_LENGTH)  # noqa: UP031
#: Separates tenant and key in a tenant-prefixed key; not in the tenant alphabet.
TENANT_KEY_SEPARATOR = ":"
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


def tenant_key(tenant: str, key: str | int) -> str:
    """A primary key only `tenant` may write: the tenant id, ``:``, then `key`.

    >>> tenant_key("acme", "doc-1")
    'acme:doc-1'
    """
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise TypeError(f"key must be a string or an integer, not {type(key).__name__}")
    return f"{validate_tenant_id(tenant)}{TENANT_KEY_SEPARATOR}{key}"


def is_tenant_key(tenant: str, pk: object) -> bool:
    """Whether `pk` is a tenant-prefixed key of `tenant` with a non-empty key part.

    >>> [is_tenant_key("acme", pk) for pk in ("acme:1", "acme-eu:1", "acme:", 1)]
    [True, False, False, False]
    """
    prefix = tenant + TENANT_KEY_SEPARATOR
    return isinstance(pk, str) and pk.startswith(prefix) and len(pk) > len(prefix)
