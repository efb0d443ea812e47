"""Choose the pipeline for each tenant: a fixed one, or the one a feature flag names.

`FlagPipelineSelector` evaluates the object flag `vector-hook-pipeline` (key in `flags`) with an
OpenFeature client, the tenant as targeting key and as the `tenant` context attribute. Which
hooks run, with which parameters, is then whatever the flag's targeting answers for that tenant;
with a flagd provider, editing the flag file changes the pipeline of a running service within
the provider's reload time. Built pipelines are cached by flag value, so a search pays for one
flag evaluation, not for building hooks.

A value that cannot be used (evaluation error, not a pipeline, unknown hook, bad config, no
tenant filter) never reaches a search: the selector falls back to the safe default pipeline
(tenant isolation only), logs why once per distinct problem, and counts
`pipeline_fallback(reason)`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from typing import Any, Protocol, runtime_checkable

from openfeature import api as openfeature_api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext

from flags import VECTOR_HOOK_PIPELINE
from vector_hooks.builder import build_pipeline
from vector_hooks.errors import ConfigurationError
from vector_hooks.metrics import DEFAULT_METRICS, HookMetrics
from vector_hooks.pipeline import Pipeline
from vector_hooks.registry import HookRegistry
from vector_hooks.spec import DEFAULT_PIPELINE, PipelineSpec

__all__ = ["FlagPipelineSelector", "PipelineSelector", "StaticSelector", "as_selector"]

logger = logging.getLogger("vector_hooks.selector")


@runtime_checkable
class PipelineSelector(Protocol):
    """Gives the pipeline to run for one tenant's call."""

    def select(self, tenant: str) -> Pipeline: ...

    def close(self) -> None: ...


class StaticSelector:
    """The same pipeline for every tenant."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def select(self, tenant: str) -> Pipeline:
        return self.pipeline

    def close(self) -> None:
        self.pipeline.close()


def as_selector(pipeline: Pipeline | PipelineSelector | None) -> PipelineSelector:
    """Accept what adapters accept: a selector, one pipeline, or None for the safe default."""
    if pipeline is None:
        return StaticSelector(build_pipeline(DEFAULT_PIPELINE, label="default"))
    if isinstance(pipeline, Pipeline):
        return StaticSelector(pipeline)
    return pipeline


class FlagPipelineSelector:
    """Per-tenant pipelines from an OpenFeature object flag; see the module docstring.

    >>> from openfeature import api
    >>> selector = FlagPipelineSelector(api.get_client("vector-hooks"))  # doctest: +SKIP
    """

    def __init__(
        self,
        client: OpenFeatureClient | None = None,
        *,
        flag_key: str = VECTOR_HOOK_PIPELINE,
        default: PipelineSpec = DEFAULT_PIPELINE,
        registry: HookRegistry | None = None,
        metrics: HookMetrics | None = None,
        cache_size: int = 64,
    ) -> None:
        default.require_isolation()
        self._client = client or openfeature_api.get_client()
        self._flag_key = flag_key
        self._registry = registry
        self._metrics = metrics or DEFAULT_METRICS
        self._default_value: dict[str, Any] = default.to_value()
        self._default = build_pipeline(
            default, registry=registry, metrics=self._metrics, label="default"
        )
        self._cache: OrderedDict[str, Pipeline] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    @property
    def default(self) -> Pipeline:
        """The safe pipeline used whenever the flag cannot be used."""
        return self._default

    def select(self, tenant: str) -> Pipeline:
        """Evaluate the flag for `tenant` and return the (cached) pipeline it names."""
        context = EvaluationContext(targeting_key=tenant, attributes={"tenant": tenant})
        details = self._client.get_object_details(self._flag_key, self._default_value, context)
        if details.error_code is not None:
            self._fallback(
                "evaluation-error",
                f"flag {self._flag_key!r} could not be evaluated for tenant {tenant!r} "
                f"({details.error_code}: {details.error_message})",
            )
            return self._default
        value = details.value
        try:
            key = json.dumps(value, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError):
            key = repr(value)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
        if cached is not None:
            if cached is self._default:
                # This value was found unusable before (and logged then); still count each use.
                self._metrics.pipeline_fallback("invalid-value")
            return cached
        try:
            pipeline = build_pipeline(
                PipelineSpec.parse(value),
                registry=self._registry,
                metrics=self._metrics,
                label=str(details.variant or "flag"),
            )
        except ConfigurationError as exc:
            self._fallback(
                "invalid-value",
                f"flag {self._flag_key!r} variant {details.variant!r} (tenant {tenant!r}) is "
                f"not a usable pipeline: {exc}",
            )
            pipeline = self._default
        return self._remember(key, pipeline)

    def _remember(self, key: str, pipeline: Pipeline) -> Pipeline:
        evicted: list[Pipeline] = []
        with self._lock:
            existing = self._cache.get(key)
            if existing is not None:
                # Another thread built the same value first; keep one copy.
                if pipeline is not self._default and pipeline is not existing:
                    evicted.append(pipeline)
                pipeline = existing
            else:
                self._cache[key] = pipeline
                while len(self._cache) > self._cache_size:
                    _, old = self._cache.popitem(last=False)
                    if old is not self._default:
                        evicted.append(old)
        for old in evicted:
            old.close()
        return pipeline

    def _fallback(self, reason: str, message: str) -> None:
        self._metrics.pipeline_fallback(reason)
        with self._lock:
            first = message not in self._warned
            if first:
                if len(self._warned) > 1000:
                    self._warned.clear()
                self._warned.add(message)
        if first:
            logger.warning("%s; using the safe default pipeline %s", message, self._default.names)

    def close(self) -> None:
        """Close every cached pipeline and the default one."""
        with self._lock:
            pipelines = list(self._cache.values())
            self._cache.clear()
        for pipeline in pipelines:
            if pipeline is not self._default:
                pipeline.close()
        self._default.close()
