"""The flag store: holds the serving flag set, reloads the directory, and tells subscribers.

Readers take `store.current` (one attribute read, so a swap is atomic for them); writers go
through `reload()`, which validates first. An invalid flag never blocks unrelated valid ones
(see `partial`): it is refused on its own and keeps its last good definition (or stays absent
if new), a file that cannot be parsed keeps all of its last good flags, everything else goes
live, and `status()` lists what was refused and why (`refused`). With `strict=True`
(setting `flags_strict`) any error refuses the whole edit and the last good flag set keeps
serving, as does an edit where nothing at all is valid. A watcher thread polls the directory
every `reload_interval` seconds.

How the watcher copes with editors: a half-written file is a syntax error, so it is refused
like any invalid edit and retried once the bytes change again. Changes are detected from
(name, mtime, size, inode) and, while a file was modified in the last two seconds (timestamps
are coarse), from a hash of the bytes as well.

A file that disappears is not a rollout: an editor that deletes and re-creates a file on save
must not unpublish its flags for that moment. So a deletion takes effect only once the file has
stayed gone for `deletion_settle` seconds (default 2); until then the store keeps serving the
file's last bytes, other edits still go live, and `status()` lists the deletion under
`pendingDeletions`. A file that comes back within the window cancels it. Files the admin API
removes itself (a rollback) are dropped at once.

An edit written by the admin API (`write_and_reload`) either goes live with its version recorded
or is undone: when validation, the recorder or the write itself fails, the files are put back
as they were, under the same lock, before anything else reads them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from control_plane.errors import FlagsNotLoaded, FlagValidationError
from control_plane.flagstore.digest import ContentHasher
from control_plane.flagstore.flagset import FlagSet, default_view
from control_plane.flagstore.handover import prompt_handover
from control_plane.flagstore.history import InMemoryRecorder, RecordRequest, VersionRecorder
from control_plane.flagstore.incremental import ReloadCache
from control_plane.flagstore.issues import ValidationIssue
from control_plane.flagstore.loader import FlagFiles, flag_files, read_flag_files
from control_plane.flagstore.partial import Composed, RefusedPart, compose
from control_plane.flagstore.validate import describe

__all__ = [
    "FlagStore",
    "Listener",
    "PendingDeletion",
    "ReloadListener",
    "ReloadOutcome",
    "ReloadStats",
]

log = logging.getLogger(__name__)

Listener = Callable[[FlagSet], None]

#: Files modified this recently are re-hashed on every poll (mtime granularity can be coarse).
_RECENT_SECONDS = 2.0
#: After the version recorder failed, wait this long before the watcher tries again.
_RECORDER_RETRY_SECONDS = 2.0

_Signature = tuple[tuple[str, int, int, int], ...]

#: Set once a flag store of this process has frozen the heap (see `FlagStore._settle_heap`).
_heap_frozen = threading.Event()
#: Flags edited since a store froze the heap before it freezes it again (or half its flags).
_REFREEZE_EDITS = 1000


@dataclass(frozen=True)
class PendingDeletion:
    """A flag file that is gone from the directory but still served until `effective_at`."""

    file: str
    since: float  # wall-clock time the watcher noticed it gone (time.time())
    effective_at: float  # wall-clock time it takes effect unless the file comes back
    due: float  # the same moment on the monotonic clock

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "since": _iso(self.since),
            "effectiveAt": _iso(self.effective_at),
        }


@dataclass(frozen=True)
class ReloadOutcome:
    """What one reload attempt did; reload listeners receive it (metrics, audit, logs)."""

    ok: bool
    #: True when a new flag set went live (a valid edit that changed the definitions).
    changed: bool
    #: The serving version after the attempt (None while nothing valid was ever loaded).
    version: int | None
    issues: tuple[ValidationIssue, ...]
    at: float  # wall-clock time of the attempt (time.time())
    seconds: float  # read + validate + record + swap
    trigger: str  # "watch" (the directory watcher) or "call" (reload() was called)
    #: Flags (or files) refused while the rest of the edit went live (ok is True then).
    refused: tuple[RefusedPart, ...] = ()


ReloadListener = Callable[[ReloadOutcome], None]


@dataclass(frozen=True)
class ReloadStats:
    """Counters of reload attempts since the store was created (the app exports them as metrics)."""

    reloads_ok: int = 0
    reloads_failed: int = 0
    last_reload_at: float | None = None  # last attempt, ok or not (time.time())
    last_success_at: float | None = None
    last_failure_at: float | None = None
    last_reload_seconds: float | None = None


def _iso(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat()


class FlagStore:
    """Serving flag set of one flag directory, with change notification."""

    def __init__(
        self,
        directory: Path,
        *,
        reload_interval: float = 0.2,
        recorder: VersionRecorder | None = None,
        deletion_settle: float = 2.0,
        strict: bool = False,
    ) -> None:
        self.directory = directory
        self.recorder: VersionRecorder = recorder or InMemoryRecorder()
        self.reload_interval = reload_interval
        #: Seconds a vanished flag file must stay gone before its flags are unpublished.
        self.deletion_settle = deletion_settle
        #: All-or-nothing reloads (setting `flags_strict`); else invalid flags are refused alone.
        self.strict = strict
        self._refusals: tuple[RefusedPart, ...] = ()
        self.last_error: FlagValidationError | None = None
        self._current: FlagSet | None = None
        self._files: tuple[str, ...] = ()
        self._warnings: tuple[ValidationIssue, ...] = ()
        self._stats = ReloadStats()
        self._listeners: list[Listener] = []
        self._reload_listeners: list[ReloadListener] = []
        # Serialises reloads, swaps and notifications, so every listener sees versions in order.
        self._reload_lock = threading.RLock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._signature: _Signature = ()
        self._attempt_digest: str | None = None
        #: The bytes of the last attempt, per file: what a pending deletion keeps serving.
        self._attempt_contents: dict[str, bytes] = {}
        self._pending: dict[str, PendingDeletion] = {}
        #: Files the admin API removed on purpose: their deletion is not held back.
        self._removed: set[str] = set()
        self._retry_after = 0.0
        #: What the last reload read and checked, and each flag's canonical JSON, so a reload
        #: redoes only what changed (see incremental and digest).
        self._cache = ReloadCache()
        self._hasher = ContentHasher()
        #: `self._hasher.encoded` when this store last froze the heap (see _settle_heap).
        self._frozen_edits = 0

    # -- reading -------------------------------------------------------------------------

    @property
    def current(self) -> FlagSet:
        flag_set = self._current
        if flag_set is None:
            raise FlagsNotLoaded("no valid flag set has been loaded yet")
        return flag_set

    @property
    def loaded(self) -> bool:
        return self._current is not None

    @property
    def stats(self) -> ReloadStats:
        return self._stats

    @property
    def files(self) -> tuple[str, ...]:
        """The flag files the serving flag set was read from."""
        return self._files

    @property
    def warnings(self) -> tuple[ValidationIssue, ...]:
        """Warnings (not errors) about the serving flag set."""
        return self._warnings

    @property
    def refused(self) -> tuple[RefusedPart, ...]:
        """Flags (or files) of the last edit refused while the rest went live."""
        return self._refusals

    @property
    def pending_deletions(self) -> tuple[PendingDeletion, ...]:
        """Vanished flag files still served until their settle window has passed."""
        return tuple(sorted(self._pending.values(), key=lambda item: item.file))

    def status(self) -> dict[str, Any]:
        """JSON-ready state for `GET /v1/flags/status`: serving version and the last attempt."""
        current = self._current
        stats = self._stats
        error = self.last_error
        pending = self.pending_deletions
        if error is not None:
            state = "error"
            issues = [_as_issue(item) for item in error.issues]
            serving = (
                f"version {current.version} keeps serving" if current else "no flag set is serving"
            )
            message = f"the last edit was refused ({serving}): {error.detail}"
        elif current is not None and self._refusals:
            state = "partial"
            issues = [issue for item in self._refusals for issue in item.issues]
            issues.extend(self._warnings)
            names = ", ".join(item.key or item.file for item in self._refusals[:5])
            more = f" and {len(self._refusals) - 5} more" if len(self._refusals) > 5 else ""
            message = (
                f"version {current.version} is serving; {len(self._refusals)} "
                f"refused ({names}{more}): see refused"
            )
        elif current is not None:
            state = "ok"
            issues = list(self._warnings)
            message = f"version {current.version} is serving"
            if pending:
                message += (
                    f"; deleting {', '.join(item.file for item in pending)} takes "
                    "effect if the file stays gone (see pendingDeletions)"
                )
        else:
            state, issues, message = "unloaded", [], "flags have not been loaded yet"
        return {
            "state": state,
            "message": message,
            "version": current.version if current else None,
            "contentHash": current.content_hash if current else None,
            "files": list(self._files) if current else [],
            "flagCount": len(current.flags) if current else 0,
            "directory": str(self.directory),
            "lastAttemptAt": _iso(stats.last_reload_at),
            "lastSuccessAt": _iso(stats.last_success_at),
            "reloads": {"ok": stats.reloads_ok, "failed": stats.reloads_failed},
            "issues": [issue.to_dict() for issue in issues],
            "pendingDeletions": [item.to_dict() for item in pending],
            "strict": self.strict,
            "refused": [
                item.to_dict(current.version if current else None) for item in self._refusals
            ],
        }

    # -- subscribing ---------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` now (if loaded) and with every new flag set; returns an unsubscribe."""
        with self._reload_lock:
            self._listeners.append(listener)
            if self._current is not None:
                listener(self._current)
        return lambda: _discard(self._listeners, listener)

    def subscribe_documents(self, listener: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """FlagDocumentSource: the same notifications, as flagd documents for our own evaluator
        (stamped with the version in the flag-set metadata, see flagset.VERSION_KEY)."""
        return self.subscribe(lambda flag_set: listener(flag_set.stamped_document))

    def subscribe_reloads(self, listener: ReloadListener) -> Callable[[], None]:
        """Call `listener` with the outcome of every reload attempt (for metrics and logs)."""
        with self._reload_lock:
            self._reload_listeners.append(listener)
        return lambda: _discard(self._reload_listeners, listener)

    # -- reloading -----------------------------------------------------------------------

    def reload(
        self, *, source: str = "file", actor: str = "file-watcher", message: str = ""
    ) -> FlagSet:
        """Load the directory; swap in and announce a new version if it is valid and different.

        Raises FlagValidationError (the last good flag set keeps serving) on invalid flags.
        `source`/`actor`/`message` go to the version recorder when a new version is made, so
        the admin API can write a file and then attribute the reload to its caller.
        """
        with self._reload_lock:
            self._signature = self._directory_signature()
            files = self.read_files()
            return self._apply(files, trigger="call", source=source, actor=actor, message=message)

    def read_files(self) -> FlagFiles:
        """The directory as the store sees it: files whose deletion is pending are still there.

        The admin API plans its edits on this view, so it edits what is being served."""
        with self._reload_lock:
            return self._settle(read_flag_files(self.directory))

    def note_removed(self, name: str) -> None:
        """The caller (the admin API) deleted flag file `name` on purpose: drop it at once."""
        with self._reload_lock:
            self._removed.add(name)
            self._pending.pop(name, None)

    def write_and_reload(
        self,
        write: Callable[[], None],
        *,
        source: str,
        actor: str,
        message: str = "",
        undo: Callable[[], bool] | None = None,
    ) -> FlagSet:
        """Run `write` (which edits the flag files), then reload, with no watcher poll between,
        so the new version is recorded as `source`/`actor` (the admin API), not as a file edit.

        If `write` or the reload fails (invalid flags, the recorder failed, a disk error),
        `undo` puts the files back (returning True if it wrote anything) and the store reloads
        them, all under the lock; then the error propagates. So a refused write leaves the
        files, the serving flag set and the recorded versions as they were.
        """
        with self._reload_lock:
            try:
                write()
                return self.reload(source=source, actor=actor, message=message)
            except BaseException:
                if undo is not None:
                    self._restore(undo)
                raise

    def _restore(self, undo: Callable[[], bool]) -> None:
        try:
            if not undo():
                return
            self.reload(
                source="file", actor="file-watcher", message="restored after a refused API write"
            )
        except Exception:  # the original error matters more; the watcher retries this
            log.exception("could not restore the flag files after a refused API write")

    def _settle(self, files: FlagFiles) -> FlagFiles:
        """`files` plus the last bytes of vanished files whose settle window has not passed.

        Files that reappeared cancel their pending deletion; files removed through
        `note_removed` and deletions past their window are left out (they take effect)."""
        now, wall = time.monotonic(), time.time()
        held: dict[str, bytes] = {}
        pending: dict[str, PendingDeletion] = {}
        for name, content in self._attempt_contents.items():
            if name in files.contents or name in self._removed:
                continue
            item = self._pending.get(name) or PendingDeletion(
                file=name,
                since=wall,
                effective_at=wall + self.deletion_settle,
                due=now + self.deletion_settle,
            )
            if now < item.due:
                held[name] = content
                pending[name] = item
            else:
                log.info(
                    "flag file %s stayed deleted for %.1f s; its flags are unpublished",
                    name,
                    self.deletion_settle,
                )
        for name in pending.keys() - self._pending.keys():
            log.info(
                "flag file %s vanished; its deletion takes effect in %.1f s unless it comes back",
                name,
                self.deletion_settle,
            )
        self._pending = pending
        self._removed.clear()
        if not held:
            return files
        return FlagFiles(files.source, {**files.contents, **held}, files.problems)

    def _apply(
        self,
        files: FlagFiles,
        *,
        trigger: str,
        source: str = "file",
        actor: str = "file-watcher",
        message: str = "",
    ) -> FlagSet:
        with prompt_handover():  # decisions on the event loop wait 0.5 ms, not 5, behind it
            return self._apply_files(
                files, trigger=trigger, source=source, actor=actor, message=message
            )

    def _apply_files(
        self, files: FlagFiles, *, trigger: str, source: str, actor: str, message: str
    ) -> FlagSet:
        started = time.perf_counter()
        at = time.time()
        self._attempt_digest = files.digest
        self._attempt_contents = dict(files.contents)
        current = self._current
        result = self._cache.check_files(files)  # = check_files(files), re-reading changes only
        composed = compose(result, current)
        if result.blocking or (
            not result.ok and (self.strict or (current is None and composed.flag_count == 0))
        ):
            exc = FlagValidationError(describe(list(result.issues)), issues=result.issues)
            self._refused(exc, at, started, trigger)
            raise exc
        digest = self._hasher.digest(
            *_default_view(composed), sets=composed.sets, file_metadata=composed.file_metadata
        )
        changed = current is None or current.content_hash != digest
        if current is not None and not changed:
            # Same definitions (whitespace, order or a flag moved between files): same version.
            flag_set = _flag_set(composed, current.version, digest)
        else:
            try:
                flag_set = self._versioned(
                    composed, digest, source=source, actor=actor, message=message
                )
            except Exception as exc:
                self._attempt_digest = None  # retry the same bytes once the recorder is back
                self._retry_after = time.monotonic() + _RECORDER_RETRY_SECONDS
                refusal = FlagValidationError(
                    f"the flag set is valid but its version could not be recorded: {exc}",
                    issues=(
                        ValidationIssue(
                            file="",
                            path="$",
                            message=(
                                f"could not record the new version ({type(exc).__name__}: {exc}); "
                                "check the database; the store retries"
                            ),
                        ),
                    ),
                )
                self._refused(refusal, at, started, trigger)
                raise
        self._current = flag_set
        self._files = result.files
        self._warnings = tuple(result.warnings)
        self._refusals = composed.refused
        self.last_error = None
        self._retry_after = 0.0
        seconds = time.perf_counter() - started
        self._stats = dataclasses.replace(
            self._stats,
            reloads_ok=self._stats.reloads_ok + 1,
            last_reload_at=at,
            last_success_at=at,
            last_reload_seconds=seconds,
        )
        for item in composed.refused:
            log.warning(
                "flag %s refused (%s); the rest of the edit is live: %s",
                item.key or f"file {item.file}",
                item.serving,
                "; ".join(issue.format() for issue in item.issues[:3]),
            )
        if changed:
            log.info(
                "flag set version %d is live (%s, %d flags from %s)",
                flag_set.version,
                flag_set.content_hash[:12],
                len(flag_set.flags),
                ", ".join(result.files),
            )
            for listener in list(self._listeners):
                _call(listener, flag_set)
            self._settle_heap()
        self._announce(
            ReloadOutcome(
                ok=True,
                changed=changed,
                version=flag_set.version,
                issues=tuple(result.issues),
                at=at,
                seconds=seconds,
                trigger=trigger,
                refused=composed.refused,
            )
        )
        return flag_set

    def _versioned(
        self, composed: Composed, digest: str, *, source: str, actor: str, message: str
    ) -> FlagSet:
        candidate = _flag_set(composed, 0, digest)
        if self._current is None:
            # A restart over unchanged flags keeps the recorded version instead of bumping it.
            latest = self.recorder.latest()
            if latest is not None and latest.content_hash == digest:
                return candidate.with_version(latest.version)
        version = self.recorder.record(
            RecordRequest(flag_set=candidate, source=source, actor=actor, message=message)
        )
        return candidate.with_version(version)

    def _refused(self, exc: FlagValidationError, at: float, started: float, trigger: str) -> None:
        self.last_error = exc
        self._refusals = ()
        seconds = time.perf_counter() - started
        self._stats = dataclasses.replace(
            self._stats,
            reloads_failed=self._stats.reloads_failed + 1,
            last_reload_at=at,
            last_failure_at=at,
            last_reload_seconds=seconds,
        )
        serving = (
            f"version {self._current.version} keeps serving"
            if self._current
            else "no flag set is serving yet"
        )
        log.warning("flag reload refused (%s): %s", serving, exc.detail)
        self._announce(
            ReloadOutcome(
                ok=False,
                changed=False,
                version=self._current.version if self._current else None,
                issues=tuple(_as_issue(item) for item in exc.issues),
                at=at,
                seconds=seconds,
                trigger=trigger,
            )
        )

    def _announce(self, outcome: ReloadOutcome) -> None:
        for listener in list(self._reload_listeners):
            _call(listener, outcome)

    # -- watching ------------------------------------------------------------------------

    def start(self) -> None:
        """Watch the directory in a background thread until `stop()`."""
        if self._watcher is not None:
            return
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="flag-store-watch", daemon=True)
        self._watcher.start()
        with self._reload_lock:
            self._settle_heap()

    def _settle_heap(self) -> None:
        """While the watcher runs (a serving process), move every object alive into the
        collector's permanent generation (`gc.freeze`): once a flag set is live, and again
        after many flags were edited since.

        What is alive then is nearly all long-lived: modules, the app, and every flag's parsed
        and compiled objects. Left in the collected generations, each full collection
        traversed all of them: at 10,000 flags one took 0.3 s with the interpreter lock held
        (every decision waited), in the middle of a reload. A reload replaces only the flags
        that changed; the replaced ones are freed by reference counting (definitions and
        compiled flags hold no cycles; tests/test_reload_work.py checks that reloads leave no
        cyclic garbage) and new objects are collected as usual. Objects alive at a freeze that
        later become cyclic garbage are never collected, so freezes are rare: once per process,
        then once per `_REFREEZE_EDITS` (or half the flag set) edited flags of a store.
        """
        if self._watcher is None or self._current is None:
            return  # not serving (a CLI, a test, a baseline): the collector is left alone
        edited = self._hasher.encoded
        if _heap_frozen.is_set() and edited - self._frozen_edits < max(
            _REFREEZE_EDITS, len(self._current.flags) // 2
        ):
            return
        _heap_frozen.set()
        self._frozen_edits = edited
        gc.collect()  # the garbage of now is collected, not frozen with the rest
        gc.freeze()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None

    def _watch(self) -> None:
        while not self._stop.wait(self.reload_interval):
            try:
                self.poll()
            except FlagValidationError:
                pass  # logged, counted and kept in last_error; the last good set keeps serving
            except Exception:  # the watcher must outlive any surprise (a recorder outage...)
                log.exception("flag directory poll failed; retrying")

    def poll(self) -> bool:
        """One watcher step: reload if the directory's bytes changed. True if it reloaded."""
        with self._reload_lock:
            if time.monotonic() < self._retry_after:
                return False
            signature = self._directory_signature()
            recent = any(
                time.time() - mtime_ns / 1e9 < _RECENT_SECONDS for _, mtime_ns, _, _ in signature
            )
            if (
                signature == self._signature
                and not recent
                and self._attempt_digest
                and not self._pending
            ):
                return False
            files = self.read_files()  # a vanished file is held back until its window passes
            if files.digest == self._attempt_digest:
                self._signature = signature
                return False
            self._signature = signature
            self._apply(files, trigger="watch")
            return True

    def _directory_signature(self) -> _Signature:
        signature = []
        try:
            paths = flag_files(self.directory)
        except OSError:
            return ()
        for path in paths:
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            signature.append((path.name, stat.st_mtime_ns, stat.st_size, stat.st_ino))
        return tuple(signature)


def _default_view(composed: Composed) -> tuple[dict[str, Any], dict[str, Any]]:
    flags, _ = default_view(composed.sets, composed.set_sources)
    return dict(flags), composed.evaluators


def _flag_set(composed: Composed, version: int, digest: str) -> FlagSet:
    return FlagSet.from_sets(
        version=version,
        sets=composed.sets,
        set_sources=composed.set_sources,
        evaluators=composed.evaluators,
        file_metadata=composed.file_metadata,
        evaluator_sources=composed.evaluator_sources,
        digest=digest,
    )


def _as_issue(item: Any) -> ValidationIssue:
    if isinstance(item, ValidationIssue):
        return item
    return ValidationIssue(file="", path="$", message=str(item))


def _discard(items: list[Any], item: Any) -> None:
    with contextlib.suppress(ValueError):  # already unsubscribed
        items.remove(item)


def _call(listener: Callable[[Any], None], argument: Any) -> None:
    try:
        listener(argument)
    except Exception:  # one broken subscriber must not stop the others or the reload
        log.exception("flag store listener %r failed", listener)
