"""The hook contract: what a hook may do around a search, and whether its failure blocks it.

A hook has a `name`, a `kind` and three methods, plus two optional ones; `BaseHook` gives each
a safe do-nothing default, so a hook overrides only what it needs:

- optional ``init()`` once before first use (open files, clients), optional ``close()`` once
  at the end;
- ``before_search(request)`` may rewrite the request (return a new one, or mutate and return
  None); pipelines run these in list order;
- ``after_search(request, hits)`` may rewrite the hits (return new lists, or None to keep);
  pipelines run these in reverse order, so the first hook in the list wraps all the others;
- ``on_error(request, error)`` sees a failed search (the backend or a security hook), in reverse
  order; it must not raise.

`kind` decides what a failure means. A SECURITY hook fails closed: the search is refused with
`SecurityHookFailed` (or the hook's own `RequestRefused`). A QUALITY hook fails open: the hits
keep the order they had before it, a warning is logged and a metric counted.

Example::

    class BoostPinned(BaseHook):
        name = "boost-pinned"

        def after_search(self, request, hits):
            return [sorted(group, key=lambda h: not h.fields.get("pinned")) for group in hits]
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Protocol, runtime_checkable

from vector_hooks.request import Hits, SearchRequest

__all__ = ["BaseHook", "Hook", "HookKind"]


class HookKind(StrEnum):
    """How a failing hook affects the search."""

    #: Fail closed: refuse the search (tenant filter, redaction, audit).
    SECURITY = "security"
    #: Fail open: keep the previous results, log a warning, count a metric (reranking).
    QUALITY = "quality"


@runtime_checkable
class Hook(Protocol):
    """What a pipeline calls; see the module docstring for the order and failure rules.

    ``init()`` and ``close()`` are optional and called when present.
    """

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> HookKind: ...

    def before_search(self, request: SearchRequest) -> SearchRequest | None: ...

    def after_search(self, request: SearchRequest, hits: Hits) -> Hits | None: ...

    def on_error(self, request: SearchRequest, error: BaseException) -> None: ...


class BaseHook:
    """A hook that does nothing; subclass it and override what you need."""

    name: ClassVar[str] = "base"
    #: Quality by default: a third-party hook must opt in to blocking searches.
    kind: ClassVar[HookKind] = HookKind.QUALITY

    def init(self) -> None:
        """Acquire resources; called once before the first search."""

    def close(self) -> None:
        """Release resources; called once when the pipeline is discarded."""

    def before_search(self, request: SearchRequest) -> SearchRequest | None:
        """Return a rewritten request, or None to keep `request` (possibly mutated)."""
        return None

    def after_search(self, request: SearchRequest, hits: Hits) -> Hits | None:
        """Return rewritten hits, or None to keep `hits`."""
        return None

    def on_error(self, request: SearchRequest, error: BaseException) -> None:
        """Observe a failed search; must not raise."""
