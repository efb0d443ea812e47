"""The flag store: holds the serving flag set, reloads the directory, and tells subscribers.

Readers take `store.current` (one attribute read, so a swap is atomic for them); writers go
through `reload()`, which validates first and swaps only a complete, valid flag set.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from control_plane.errors import FlagsNotLoaded, FlagValidationError
from control_plane.flagstore.flagset import FlagSet, content_hash
from control_plane.flagstore.history import InMemoryRecorder, RecordRequest, VersionRecorder
from control_plane.flagstore.loader import flag_files, load_directory

__all__ = ["FlagStore", "Listener"]

log = logging.getLogger(__name__)

Listener = Callable[[FlagSet], None]


class FlagStore:
    """Serving flag set of one flag directory, with change notification."""

    def __init__(self, directory: Path, *, reload_interval: float = 0.2,
                 recorder: VersionRecorder | None = None) -> None:
        self.directory = directory
        self.recorder: VersionRecorder = recorder or InMemoryRecorder()
        self.reload_interval = reload_interval
        self._current: FlagSet | None = None
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._signature: tuple[tuple[str, int, int], ...] = ()
        self.last_error: FlagValidationError | None = None

    @property
    def current(self) -> FlagSet:
        flag_set = self._current
        if flag_set is None:
            raise FlagsNotLoaded("no valid flag set has been loaded yet")
        return flag_set

    @property
    def loaded(self) -> bool:
        return self._current is not None

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` now (if loaded) and with every new flag set; returns an unsubscribe."""
        with self._lock:
            self._listeners.append(listener)
            current = self._current
        if current is not None:
            listener(current)
        return lambda: self._listeners.remove(listener)

    def subscribe_documents(
        self, listener: Callable[[dict[str, Any]], None]
    ) -> Callable[[], None]:
        """FlagDocumentSource: the same notifications, as flagd documents."""
        return self.subscribe(lambda flag_set: listener(flag_set.to_flagd()))

    def reload(self) -> FlagSet:
        """Load the directory; swap in and announce a new version if it is valid and different."""
        with self._lock:
            self._signature = self._directory_signature()
            try:
                loaded = load_directory(self.directory)
            except FlagValidationError as exc:
                self.last_error = exc
                log.warning("flag reload refused: %s", exc.detail)
                raise
            self.last_error = None
            digest = content_hash(loaded.flags, loaded.evaluators)
            if self._current is not None and self._current.content_hash == digest:
                return self._current
            candidate = FlagSet(version=0, flags=loaded.flags, evaluators=loaded.evaluators,
                                sources=loaded.sources, content_hash=digest)
            version = self.recorder.record(
                RecordRequest(flag_set=candidate, source="file", actor="file-watcher")
            )
            flag_set = dataclasses.replace(candidate, version=version)
            self._current = flag_set
            listeners = list(self._listeners)
        for listener in listeners:
            listener(flag_set)
        return flag_set

    def start(self) -> None:
        """Watch the directory in a background thread until `stop()`."""
        if self._watcher is not None:
            return
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="flag-store-watch", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None

    def _watch(self) -> None:
        while not self._stop.wait(self.reload_interval):
            if self._directory_signature() == self._signature:
                continue
            try:
                self.reload()
            except FlagValidationError:
                pass  # logged and kept in last_error; the last good flag set keeps serving

    def _directory_signature(self) -> tuple[tuple[str, int, int], ...]:
        signature = []
        for path in flag_files(self.directory):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            signature.append((path.name, stat.st_mtime_ns, stat.st_size))
        return tuple(signature)
