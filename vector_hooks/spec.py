"""Parse a pipeline definition (the `vector-hook-pipeline` flag value) into a checked spec.

The value is a JSON object::

    {"hooks": [
        "audit",
        {"name": "tenant-aware-rerank", "config": {"candidates": 50, "mmr_lambda": 0.7}},
        "tenant-filter"
    ]}

Each entry is a hook name, or an object with `name` and an optional `config` object. An
optional `description` string is allowed. Errors name the path of the bad part
(``hooks[1].config``), so a log line says exactly what to fix in the flag file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vector_hooks.errors import PipelineConfigError

__all__ = ["DEFAULT_PIPELINE", "TENANT_FILTER", "HookSpec", "PipelineSpec"]

#: Name of the built-in security hook every pipeline must contain.
TENANT_FILTER = "tenant-filter"


@dataclass(frozen=True)
class HookSpec:
    """One hook by registry name with its configuration."""

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))

    def to_value(self) -> dict[str, Any]:
        return {"name": self.name, "config": dict(self.config)}


@dataclass(frozen=True)
class PipelineSpec:
    """An ordered list of hook specs, as read from a flag value or written in code."""

    hooks: tuple[HookSpec, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.hooks)

    def to_value(self) -> dict[str, Any]:
        """The JSON object form (what the flag variant holds)."""
        return {"hooks": [spec.to_value() for spec in self.hooks]}

    def require_isolation(self) -> None:
        """Raise unless the pipeline contains the tenant filter."""
        if TENANT_FILTER not in self.names:
            raise PipelineConfigError(
                f"hooks must include {TENANT_FILTER!r}: every pipeline isolates tenants "
                f"(got {list(self.names)})"
            )

    @classmethod
    def parse(cls, value: object) -> PipelineSpec:
        """Check and convert a JSON value; raises `PipelineConfigError` naming the bad part."""
        if not isinstance(value, Mapping):
            raise PipelineConfigError(
                f"a pipeline must be a JSON object with a 'hooks' list, not {_kind(value)}"
            )
        unknown = sorted(set(value) - {"hooks", "description"})
        if unknown:
            raise PipelineConfigError(f"unknown key(s) {unknown}; allowed: hooks, description")
        if "description" in value and not isinstance(value["description"], str):
            raise PipelineConfigError("description must be a string")
        hooks = value.get("hooks")
        if not isinstance(hooks, list) or not hooks:
            raise PipelineConfigError(f"hooks must be a non-empty list, not {_kind(hooks)}")
        specs: list[HookSpec] = []
        for index, entry in enumerate(hooks):
            where = f"hooks[{index}]"
            if isinstance(entry, str):
                specs.append(HookSpec(_name(entry, where)))
                continue
            if not isinstance(entry, Mapping):
                raise PipelineConfigError(
                    f"{where} must be a hook name or an object, not {_kind(entry)}"
                )
            extra = sorted(set(entry) - {"name", "config"})
            if extra:
                raise PipelineConfigError(f"{where} has unknown key(s) {extra}; use name, config")
            config = entry.get("config", {})
            if not isinstance(config, Mapping):
                raise PipelineConfigError(f"{where}.config must be an object, not {_kind(config)}")
            specs.append(HookSpec(_name(entry.get("name"), f"{where}.name"), config))
        seen: set[str] = set()
        for spec in specs:
            if spec.name in seen:
                raise PipelineConfigError(f"hook {spec.name!r} is listed twice")
            seen.add(spec.name)
        return cls(tuple(specs))


def _name(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PipelineConfigError(f"{where} must be a non-empty hook name, not {_kind(value)}")
    return value


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


#: The safe default: isolate tenants and nothing else. Used when the flag is missing or bad.
DEFAULT_PIPELINE = PipelineSpec((HookSpec(TENANT_FILTER),))
