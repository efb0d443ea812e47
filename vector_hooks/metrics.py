"""In-process counters for what operators need to see: hooks failing open or closed, fallbacks.

Deliberately dependency-free: `snapshot()` returns plain numbers a service can export through
whatever it already uses (prometheus_client, OpenTelemetry, logs).
"""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["DEFAULT_METRICS", "HookMetrics"]


class HookMetrics:
    """Thread-safe counters keyed by label tuples."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hook_failures: Counter[tuple[str, str, str]] = Counter()
        self._pipeline_fallbacks: Counter[str] = Counter()
        self._searches: Counter[tuple[str, str]] = Counter()

    def hook_failed(self, hook: str, phase: str, outcome: str) -> None:
        """Count a hook failure; `outcome` is "open" (ignored) or "closed" (search refused)."""
        with self._lock:
            self._hook_failures[(hook, phase, outcome)] += 1

    def pipeline_fallback(self, reason: str) -> None:
        """Count a switch to the safe default pipeline because the selected one was unusable."""
        with self._lock:
            self._pipeline_fallbacks[reason] += 1

    def search_done(self, operation: str, outcome: str) -> None:
        """Count one adapter call by operation and outcome ("ok", "refused", "error")."""
        with self._lock:
            self._searches[(operation, outcome)] += 1

    def hook_failures(self, hook: str, phase: str | None = None, outcome: str | None = None) -> int:
        """How many failures of `hook` were counted (optionally of one phase/outcome)."""
        with self._lock:
            return sum(
                count
                for (name, ph, out), count in self._hook_failures.items()
                if name == hook and phase in (None, ph) and outcome in (None, out)
            )

    def pipeline_fallbacks(self, reason: str | None = None) -> int:
        """How many fallbacks to the default pipeline were counted (optionally for one reason)."""
        with self._lock:
            if reason is None:
                return sum(self._pipeline_fallbacks.values())
            return self._pipeline_fallbacks[reason]

    def snapshot(self) -> dict[str, dict[str, int]]:
        """All counters as ``{"metric": {"label,label": count}}``."""
        with self._lock:
            return {
                "hook_failures": {",".join(k): v for k, v in self._hook_failures.items()},
                "pipeline_fallbacks": dict(self._pipeline_fallbacks),
                "searches": {",".join(k): v for k, v in self._searches.items()},
            }


#: The process-wide counters used when a pipeline or selector is not given its own.
DEFAULT_METRICS = HookMetrics()
