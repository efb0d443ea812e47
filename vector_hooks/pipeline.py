"""Run an ordered list of hooks around one backend call, with fail-closed/fail-open rules.

``before_search`` runs in list order, the backend call runs, ``after_search`` runs in reverse
order, so the first hook in the list wraps all the others (put `audit` first and
`tenant-filter` last: audit then sees the final hits, the tenant filter has the last word on
the request). A SECURITY hook that raises refuses the search; a QUALITY hook that raises is
skipped: the request or hits it was handed are restored, a warning is logged and
`HookMetrics.hook_failed(..., outcome="open")` is counted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace

from vector_hooks.errors import RequestRefused, SecurityHookFailed
from vector_hooks.hooks import Hook, HookKind
from vector_hooks.metrics import DEFAULT_METRICS, HookMetrics
from vector_hooks.request import Hits, SearchRequest

__all__ = ["Execute", "Pipeline"]

logger = logging.getLogger("vector_hooks.pipeline")

#: The adapter's real backend call: takes the final request, returns one hit list per query.
Execute = Callable[[SearchRequest], Hits]


def _snapshot(request: SearchRequest) -> SearchRequest:
    """A copy deep enough that a failed quality hook's half-done edits can be undone."""
    return replace(
        request,
        params=dict(request.params),
        output_fields=None if request.output_fields is None else list(request.output_fields),
        attributes=dict(request.attributes),
        extra_fields=set(request.extra_fields),
    )


class Pipeline:
    """An ordered, named list of hooks; thread-safe once opened.

    >>> from vector_hooks.builtins import TenantFilterHook
    >>> pipeline = Pipeline([TenantFilterHook()])
    >>> pipeline.names
    ('tenant-filter',)
    """

    def __init__(
        self,
        hooks: Sequence[Hook | tuple[str, Hook]],
        *,
        metrics: HookMetrics | None = None,
        label: str = "custom",
    ) -> None:
        entries: list[tuple[str, Hook]] = []
        for item in hooks:
            if isinstance(item, tuple):
                entries.append(item)
            else:
                entries.append((item.name, item))
        self._entries = tuple(entries)
        self._metrics = metrics or DEFAULT_METRICS
        self.label = label
        self._lock = threading.Lock()
        self._opened = False
        self._closed = False

    @property
    def names(self) -> tuple[str, ...]:
        """Hook names in list order."""
        return tuple(name for name, _ in self._entries)

    @property
    def hooks(self) -> tuple[Hook, ...]:
        return tuple(hook for _, hook in self._entries)

    def open(self) -> None:
        """Call every hook's ``init()`` once; `run` does this on first use."""
        with self._lock:
            if self._opened:
                return
            initialised: list[Hook] = []
            try:
                for _, hook in self._entries:
                    init = getattr(hook, "init", None)
                    if init is not None:
                        init()
                    initialised.append(hook)
            except BaseException:
                for hook in reversed(initialised):
                    self._close_one(hook)
                raise
            self._opened = True

    def close(self) -> None:
        """Call every hook's ``close()`` in reverse order; errors are logged, not raised."""
        with self._lock:
            if not self._opened or self._closed:
                self._closed = True
                return
            self._closed = True
            for _, hook in reversed(self._entries):
                self._close_one(hook)

    def _close_one(self, hook: Hook) -> None:
        close = getattr(hook, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception:
            logger.exception("hook %r failed to close", getattr(hook, "name", hook))

    def __enter__(self) -> Pipeline:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run(self, request: SearchRequest, execute: Execute) -> Hits:
        """Run before hooks, `execute`, then after hooks; see the module docstring."""
        if not self._opened:
            self.open()
        entered: list[tuple[str, Hook]] = []
        for name, hook in self._entries:
            entered.append((name, hook))
            if hook.kind is HookKind.SECURITY:
                try:
                    changed = hook.before_search(request)
                except Exception as exc:
                    error = self._fail_closed(name, "before_search", exc, request, entered)
                    if error is exc:
                        raise
                    raise error from exc
                if changed is not None:
                    request = changed
            else:
                saved = _snapshot(request)
                try:
                    changed = hook.before_search(request)
                except Exception as exc:
                    self._fail_open(name, "before_search", exc)
                    request = saved
                else:
                    if changed is not None:
                        request = changed
        try:
            hits = execute(request)
        except Exception as exc:
            self._notify_error(request, exc, entered)
            raise
        for name, hook in reversed(self._entries):
            if hook.kind is HookKind.SECURITY:
                try:
                    new_hits = hook.after_search(request, hits)
                except Exception as exc:
                    error = self._fail_closed(name, "after_search", exc, request, entered)
                    if error is exc:
                        raise
                    raise error from exc
                if new_hits is not None:
                    hits = new_hits
            else:
                saved_hits = [list(group) for group in hits]
                try:
                    new_hits = hook.after_search(request, hits)
                except Exception as exc:
                    self._fail_open(name, "after_search", exc)
                    hits = saved_hits
                else:
                    if new_hits is not None:
                        hits = new_hits
        return hits

    def _fail_closed(
        self,
        name: str,
        phase: str,
        exc: Exception,
        request: SearchRequest,
        entered: list[tuple[str, Hook]],
    ) -> RequestRefused:
        self._metrics.hook_failed(name, phase, "closed")
        # A hook's own refusal (bad tenant id, ...) already says what is wrong; anything else
        # is wrapped so the caller sees which security hook failed.
        error = exc if isinstance(exc, RequestRefused) else SecurityHookFailed(name, phase, exc)
        self._notify_error(request, error, entered)
        return error

    def _fail_open(self, name: str, phase: str, exc: Exception) -> None:
        self._metrics.hook_failed(name, phase, "open")
        logger.warning(
            "quality hook %r failed in %s and was skipped (results keep their previous order): "
            "%s: %s",
            name,
            phase,
            type(exc).__name__,
            exc,
        )

    def _notify_error(
        self, request: SearchRequest, error: BaseException, entered: list[tuple[str, Hook]]
    ) -> None:
        for name, hook in reversed(entered):
            try:
                hook.on_error(request, error)
            except Exception:
                logger.exception("hook %r raised in on_error; ignored", name)

    def __repr__(self) -> str:
        return f"Pipeline({self.label!r}, {list(self.names)!r})"
