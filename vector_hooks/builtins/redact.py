"""`redact`: per-tenant output field allow/deny lists and masking of patterns like e-mails.

Config (all optional)::

    {"allow": ["title", "body"],        # keep only these fields (applied first)
     "deny": ["internal_notes"],        # then drop these
     "mask": ["email", "phone", "ipv4", {"name": "ticket", "regex": "TCK-[0-9]+"}],
     "mask_fields": ["body"],           # mask only in these fields (default: every field)
     "replacement": "[redacted]"}

Masking walks strings inside lists and objects too. It is a SECURITY hook: if redaction fails,
the search fails instead of returning unredacted data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from vector_hooks.errors import HookConfigError
from vector_hooks.hooks import BaseHook, HookKind
from vector_hooks.request import Hits, SearchRequest

__all__ = ["MASK_PATTERNS", "RedactHook"]

#: Named patterns a flag can refer to.
MASK_PATTERNS: Mapping[str, re.Pattern[str]] = {
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    # 9 to 15 digits, optionally led by "+", with up to two of " ().-" between digits.
    "phone": re.compile(r"(?<![\w+])\+?\d(?:[\s().-]{0,2}\d){8,14}(?![\w])"),
    "ipv4": re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])"),
}


def _names(value: object, key: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise HookConfigError(f"{key} must be a list of field names, got {value!r}")
    return frozenset(value)


class RedactHook(BaseHook):
    """Drop and mask output fields per tenant (fails closed)."""

    name: ClassVar[str] = "redact"
    kind: ClassVar[HookKind] = HookKind.SECURITY

    def __init__(
        self,
        *,
        allow: frozenset[str] | None = None,
        deny: frozenset[str] = frozenset(),
        mask: tuple[re.Pattern[str], ...] = (),
        mask_fields: frozenset[str] | None = None,
        replacement: str = "[redacted]",
    ) -> None:
        self.allow = allow
        self.deny = deny
        self.mask = mask
        self.mask_fields = mask_fields
        self.replacement = replacement

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RedactHook:
        known = {"allow", "deny", "mask", "mask_fields", "replacement"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise HookConfigError(f"unknown key(s) {unknown}; allowed: {sorted(known)}")
        patterns: list[re.Pattern[str]] = []
        mask = config.get("mask", [])
        if not isinstance(mask, list):
            raise HookConfigError(f"mask must be a list, got {mask!r}")
        for index, item in enumerate(mask):
            if isinstance(item, str):
                if item not in MASK_PATTERNS:
                    raise HookConfigError(
                        f"mask[{index}]: unknown pattern {item!r}; named patterns are "
                        f"{sorted(MASK_PATTERNS)}, or give {{'name': ..., 'regex': ...}}"
                    )
                patterns.append(MASK_PATTERNS[item])
            elif isinstance(item, Mapping) and isinstance(item.get("regex"), str):
                try:
                    patterns.append(re.compile(item["regex"]))
                except re.error as exc:
                    raise HookConfigError(f"mask[{index}].regex does not compile: {exc}") from exc
            else:
                raise HookConfigError(
                    f"mask[{index}] must be a pattern name or an object with 'regex'"
                )
        replacement = config.get("replacement", "[redacted]")
        if not isinstance(replacement, str):
            raise HookConfigError(f"replacement must be a string, got {replacement!r}")
        return cls(
            allow=_names(config.get("allow"), "allow"),
            deny=_names(config.get("deny"), "deny") or frozenset(),
            mask=tuple(patterns),
            mask_fields=_names(config.get("mask_fields"), "mask_fields"),
            replacement=replacement,
        )

    def after_search(self, request: SearchRequest, hits: Hits) -> Hits | None:
        for group in hits:
            for hit in group:
                fields = hit.fields
                if self.allow is not None:
                    fields = {k: v for k, v in fields.items() if k in self.allow}
                if self.deny:
                    fields = {k: v for k, v in fields.items() if k not in self.deny}
                if self.mask:
                    fields = {
                        k: self._masked(v)
                        if self.mask_fields is None or k in self.mask_fields
                        else v
                        for k, v in fields.items()
                    }
                hit.fields = fields
        return hits

    def _masked(self, value: Any) -> Any:
        if isinstance(value, str):
            for pattern in self.mask:
                value = pattern.sub(self.replacement, value)
            return value
        if isinstance(value, list):
            return [self._masked(item) for item in value]
        if isinstance(value, dict):
            return {key: self._masked(item) for key, item in value.items()}
        return value
