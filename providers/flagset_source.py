"""The seam between a flag source and the flagd provider: a Protocol, plus a fake that ships.

The control plane feeds its validated flag sets into the official flagd provider through this
seam, so every decision is evaluated by the flagd evaluator (openfeature-flagd-core) exactly as a
replica that syncs from us would evaluate it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["FlagDocumentSource", "StaticFlagSource"]

#: Receives a whole flagd flag-configuration document (`{"flags": ..., "metadata": ...}`).
DocumentListener = Callable[[dict[str, Any]], None]


class FlagDocumentSource(Protocol):
    """Something that pushes complete flagd documents: now, and on every change."""

    def subscribe_documents(self, listener: DocumentListener) -> Callable[[], None]:
        """Deliver the current document (if any) and every later one; return an unsubscribe."""
        ...


class StaticFlagSource:
    """A flag source holding one document, changed by `publish` (for tests and tools)."""

    def __init__(self, document: dict[str, Any] | None = None) -> None:
        self._document = document
        self._listeners: list[DocumentListener] = []

    def subscribe_documents(self, listener: DocumentListener) -> Callable[[], None]:
        self._listeners.append(listener)
        if self._document is not None:
            listener(self._document)
        return lambda: self._listeners.remove(listener)

    def publish(self, document: dict[str, Any]) -> None:
        self._document = document
        for listener in list(self._listeners):
            listener(document)
