"""Build a ready-to-run `Pipeline` from a spec (or its JSON value) and a hook registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vector_hooks.errors import ConfigurationError, HookConfigError
from vector_hooks.hooks import Hook
from vector_hooks.metrics import HookMetrics
from vector_hooks.pipeline import Pipeline
from vector_hooks.registry import HookRegistry, default_registry
from vector_hooks.spec import PipelineSpec

__all__ = ["build_pipeline"]


def build_pipeline(
    spec: PipelineSpec | Mapping[str, Any],
    *,
    registry: HookRegistry | None = None,
    metrics: HookMetrics | None = None,
    require_isolation: bool = True,
    label: str | None = None,
) -> Pipeline:
    """Create, configure and open every hook of `spec`, in order.

    Raises a `ConfigurationError` subclass naming the hook and key that is wrong; hooks already
    built are closed first. With `require_isolation` (the default) the spec must contain
    `tenant-filter`.

    >>> build_pipeline({"hooks": ["audit", "tenant-filter"]}).names
    ('audit', 'tenant-filter')
    """
    if not isinstance(spec, PipelineSpec):
        spec = PipelineSpec.parse(spec)
    if require_isolation:
        spec.require_isolation()
    registry = registry or default_registry
    hooks: list[tuple[str, Hook]] = []
    for index, hook_spec in enumerate(spec.hooks):
        try:
            hook = registry.create(hook_spec.name, hook_spec.config)
        except HookConfigError as exc:
            raise HookConfigError(f"hooks[{index}] ({hook_spec.name}): {exc}") from exc
        except ConfigurationError:
            raise
        hooks.append((hook_spec.name, hook))
    pipeline = Pipeline(hooks, metrics=metrics, label=label or "+".join(spec.names))
    pipeline.open()
    return pipeline
