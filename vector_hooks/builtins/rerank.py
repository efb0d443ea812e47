"""`tenant-aware-rerank`: over-fetch candidates, fuse scores per tenant, diversify with MMR.

Per query, over ``candidates`` hits (the request's fetch limit is raised to it):

1. fused score = ``vector_weight`` * similarity (higher is better, as adapters normalise it)
   + sum of field boosts: ``{"field": w}`` adds w * numeric value (booleans count 0/1),
   ``{"field": {"value": w}}`` adds w when the field equals that value
   + ``recency.weight`` * 0.5 ** (age / ``recency.half_life_s``) from an epoch-seconds (or
   datetime / ISO-8601) ``recency.field``; a missing timestamp adds nothing;
2. if ``mmr_lambda`` < 1, maximal marginal relevance picks the final `limit` hits: each next
   hit maximises lambda * relevance - (1 - lambda) * max cosine similarity to those already
   picked, relevance being the fused score scaled to [0, 1]. This needs candidate vectors,
   which the hook asks the adapter for;
3. otherwise the top `limit` by fused score (ties keep the backend's order).

Per-tenant parameters come from the pipeline flag: its targeting gives each tenant a variant
with its own config. It is a QUALITY hook: if it fails, the backend order is kept.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from vector_hooks.errors import HookConfigError
from vector_hooks.hooks import BaseHook, HookKind
from vector_hooks.request import Hit, Hits, SearchRequest

__all__ = ["RerankConfig", "TenantAwareRerankHook"]

Boost = float | Mapping[str, float]


@dataclass(frozen=True)
class RerankConfig:
    """Validated parameters of `tenant-aware-rerank` (see the module docstring)."""

    candidates: int = 50
    vector_weight: float = 1.0
    boosts: Mapping[str, Boost] = field(default_factory=dict)
    recency_field: str | None = None
    half_life_s: float = 7 * 24 * 3600.0
    recency_weight: float = 0.0
    mmr_lambda: float = 1.0

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> RerankConfig:
        """Check a JSON config; errors name the offending key."""
        known = {"candidates", "vector_weight", "boosts", "recency", "mmr_lambda"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise HookConfigError(f"unknown key(s) {unknown}; allowed: {sorted(known)}")
        candidates = config.get("candidates", 50)
        if (
            isinstance(candidates, bool)
            or not isinstance(candidates, int)
            or not (1 <= candidates <= 16384)
        ):
            raise HookConfigError(
                f"candidates must be an integer in [1, 16384], got {candidates!r}"
            )
        vector_weight = _number(config.get("vector_weight", 1.0), "vector_weight")
        mmr_lambda = _number(config.get("mmr_lambda", 1.0), "mmr_lambda")
        if not 0.0 <= mmr_lambda <= 1.0:
            raise HookConfigError(f"mmr_lambda must be a number in [0, 1], got {mmr_lambda!r}")
        boosts_raw = config.get("boosts", {})
        if not isinstance(boosts_raw, Mapping):
            raise HookConfigError("boosts must be an object of field -> weight")
        boosts: dict[str, Boost] = {}
        for name, weight in boosts_raw.items():
            if isinstance(weight, Mapping):
                boosts[name] = {
                    str(value): _number(w, f"boosts.{name}.{value}") for value, w in weight.items()
                }
            else:
                boosts[name] = _number(weight, f"boosts.{name}")
        recency = config.get("recency")
        recency_field: str | None = None
        half_life = 7 * 24 * 3600.0
        recency_weight = 0.0
        if recency is not None:
            if not isinstance(recency, Mapping):
                raise HookConfigError("recency must be an object with field, half_life_s, weight")
            extra = sorted(set(recency) - {"field", "half_life_s", "weight"})
            if extra:
                raise HookConfigError(f"recency has unknown key(s) {extra}")
            recency_field = recency.get("field")
            if not isinstance(recency_field, str) or not recency_field:
                raise HookConfigError("recency.field must name a timestamp field")
            half_life = _number(recency.get("half_life_s", half_life), "recency.half_life_s")
            if half_life <= 0:
                raise HookConfigError(f"recency.half_life_s must be > 0, got {half_life!r}")
            recency_weight = _number(recency.get("weight", 0.2), "recency.weight")
        return cls(
            candidates=candidates,
            vector_weight=vector_weight,
            boosts=boosts,
            recency_field=recency_field,
            half_life_s=half_life,
            recency_weight=recency_weight,
            mmr_lambda=mmr_lambda,
        )


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HookConfigError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def _numeric(value: object) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return 0.0


def _epoch_seconds(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dt.datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return stamp.timestamp()
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        return _epoch_seconds(parsed)
    return None


class TenantAwareRerankHook(BaseHook):
    """Score fusion + recency decay + MMR over an over-fetched candidate set (fails open)."""

    name: ClassVar[str] = "tenant-aware-rerank"
    kind: ClassVar[HookKind] = HookKind.QUALITY

    def __init__(
        self, config: RerankConfig | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config or RerankConfig()
        self._clock = clock

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TenantAwareRerankHook:
        return cls(RerankConfig.from_mapping(config))

    def before_search(self, request: SearchRequest) -> SearchRequest | None:
        config = self.config
        request.fetch_limit = max(request.fetch_limit, request.limit, config.candidates)
        needed = list(config.boosts)
        if config.recency_field:
            needed.append(config.recency_field)
        request.require_fields(*needed)
        if config.mmr_lambda < 1.0:
            request.want_vectors = True
        return None

    def after_search(self, request: SearchRequest, hits: Hits) -> Hits | None:
        now = self._clock()
        return [self.rerank(group, request.limit, now=now) for group in hits]

    def fused_scores(self, group: list[Hit], *, now: float) -> np.ndarray:
        """The fused score of each hit, in input order."""
        config = self.config
        scores = np.fromiter((hit.score for hit in group), dtype=np.float64, count=len(group))
        scores *= config.vector_weight
        for name, boost in config.boosts.items():
            if isinstance(boost, Mapping):
                scores += [boost.get(str(hit.fields.get(name)), 0.0) for hit in group]
            else:
                scores += [boost * _numeric(hit.fields.get(name)) for hit in group]
        if config.recency_field and config.recency_weight:
            decay = np.zeros(len(group))
            for i, hit in enumerate(group):
                stamp = _epoch_seconds(hit.fields.get(config.recency_field))
                if stamp is not None:
                    age = max(now - stamp, 0.0)
                    decay[i] = 0.5 ** (age / config.half_life_s)
            scores += config.recency_weight * decay
        return scores

    def rerank(self, group: list[Hit], limit: int, *, now: float) -> list[Hit]:
        """Reorder one query's candidates and keep `limit` of them."""
        if not group:
            return group
        fused = self.fused_scores(group, now=now)
        for hit, score in zip(group, fused, strict=True):
            hit.rerank_score = float(score)
        keep = min(limit, len(group))
        order: list[int]
        if self.config.mmr_lambda >= 1.0 or keep <= 1:
            order = np.argsort(-fused, kind="stable")[:keep].tolist()
        else:
            order = self._mmr(group, fused, keep)
        return [group[i] for i in order]

    def _mmr(self, group: list[Hit], fused: np.ndarray, keep: int) -> list[int]:
        missing = [hit.id for hit in group if hit.vector is None]
        if missing:
            raise ValueError(f"MMR needs candidate vectors; {len(missing)} hit(s) came without")
        vectors = np.asarray([hit.vector for hit in group], dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        unit = vectors / norms
        similarity = unit @ unit.T
        low, high = float(fused.min()), float(fused.max())
        relevance = (fused - low) / (high - low) if high > low else np.ones_like(fused)
        lam = self.config.mmr_lambda
        redundancy = np.full(len(group), -np.inf)
        chosen = np.zeros(len(group), dtype=bool)
        picked: list[int] = []
        for step in range(keep):
            scores = relevance.copy() if step == 0 else lam * relevance - (1.0 - lam) * redundancy
            scores[chosen] = -np.inf
            best = int(np.argmax(scores))
            picked.append(best)
            chosen[best] = True
            redundancy = np.maximum(redundancy, similarity[best])
        return picked
