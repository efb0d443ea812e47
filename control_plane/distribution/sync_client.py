"""Replica mode: follow a control plane (or any flagd) over flagd.sync.v1 and serve its flags.

A replica keeps no database and edits nothing. `ReplicaSync` streams `SyncFlags` from the
primary; every document it receives is written atomically into the replica's own flag directory
and loaded by an ordinary FlagStore, so the replica's whole routing stack (decide fast path,
compiled evaluator, OpenFeature provider, OFREP) works exactly as on the primary, validation
included. Versions are the primary's (from the document's `controlPlane` facts), so a decision
says the same flag-set version on every replica.

When the primary is unreachable the replica keeps serving the last set it holds (also across a
restart: the file stays in its directory) and says how stale it is (`status()`, /readyz, the
`control_plane_replica_*` metrics); it reconnects with backoff.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

from control_plane.errors import FlagValidationError
from control_plane.flagstore.flagset import FACTS_MEMBER, FlagSet
from control_plane.flagstore.history import RecordRequest
from control_plane.flagstore.store import FlagStore

__all__ = ["SYNCED_FILE", "PrimaryVersions", "ReplicaSync", "ReplicaTarget"]

log = logging.getLogger(__name__)

#: The file a replica writes each synced document to, in its flag directory.
SYNCED_FILE = "synced.flagd.json"
#: Seconds between reconnection attempts; capped at 1 s, since a replica that is not
#: connected misses edits (an attempt on a loopback or LAN primary costs next to nothing).
_BACKOFF = (0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True, slots=True)
class ReplicaTarget:
    """Where the primary is and how to reach it."""

    address: str  # HOST:PORT of its flagd.sync.v1 service
    token: str | None = None  # sent as `authorization: Bearer <token>` metadata
    ca_file: Path | None = None  # PEM: connect with TLS, trusting these certificates
    selector: str = ""
    provider_id: str = "control-plane-replica"


class PrimaryVersions:
    """A VersionRecorder that numbers flag sets as the primary did (its facts say which)."""

    def __init__(self) -> None:
        self.next_version: int | None = None
        self._fallback = 0

    def latest(self) -> FlagSet | None:
        """Nothing to resume from: a replica's flags come from its primary (or its file)."""
        return None

    def record(self, request: RecordRequest) -> int:
        self._fallback += 1
        return self.next_version if self.next_version is not None else self._fallback


class ReplicaSync:
    """One thread streaming flags from the primary into `store`'s directory."""

    def __init__(self, store: FlagStore, versions: PrimaryVersions, target: ReplicaTarget) -> None:
        self.store = store
        self.versions = versions
        self.target = target
        self.connected = False
        self.synced_at: float | None = None  # last document received (monotonic)
        self.disconnected_at: float | None = time.monotonic()
        self.documents = 0
        self.refused = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._call: Any = None
        self._thread = threading.Thread(target=self._run, name="replica-sync", daemon=True)

    # -- life ------------------------------------------------------------------------------

    def start(self) -> None:
        """Serve what the directory holds from a previous run, then follow the primary."""
        if (self.store.directory / SYNCED_FILE).exists():
            try:
                self.store.reload()
            except FlagValidationError as exc:
                log.warning("the flags kept from the last sync are invalid: %s", exc.detail)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(timeout=5)

    # -- status ----------------------------------------------------------------------------

    def stale_seconds(self) -> float:
        """0 while the stream is open (the primary pushes every change); else since it broke."""
        if self.connected or self.disconnected_at is None:
            return 0.0
        return time.monotonic() - self.disconnected_at

    def status(self) -> dict[str, Any]:
        return {
            "primary": self.target.address,
            "connected": self.connected,
            "staleSeconds": round(self.stale_seconds(), 3),
            "documents": self.documents,
            "refused": self.refused,
            "lastError": self.last_error,
        }

    # -- the stream ------------------------------------------------------------------------

    def _channel(self) -> grpc.Channel:
        if self.target.ca_file is not None:
            credentials = grpc.ssl_channel_credentials(self.target.ca_file.read_bytes())
            return grpc.secure_channel(self.target.address, credentials)
        return grpc.insecure_channel(self.target.address)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                with self._channel() as channel:
                    stub = sync_pb2_grpc.FlagSyncServiceStub(channel)
                    metadata = (
                        [("authorization", f"Bearer {self.target.token}")]
                        if self.target.token
                        else None
                    )
                    call = stub.SyncFlags(
                        sync_pb2.SyncFlagsRequest(
                            provider_id=self.target.provider_id, selector=self.target.selector
                        ),
                        metadata=metadata,
                    )
                    self._call = call
                    for response in call:
                        if not self.connected:
                            log.info("replica synced from %s", self.target.address)
                        self.connected, attempt = True, 0
                        self._apply(response.flag_configuration)
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    break
                code = exc.code() if isinstance(exc, grpc.Call) else None
                self.last_error = f"{getattr(code, 'name', 'error')}: {_details(exc)}"
                if self.connected or attempt == 0:
                    log.warning(
                        "replica lost its primary %s (%s); serving the last flag set",
                        self.target.address,
                        self.last_error,
                    )
            finally:
                self._call = None
                if self.connected:
                    self.connected = False
                    self.disconnected_at = time.monotonic()
            self._stop.wait(_BACKOFF[min(attempt, len(_BACKOFF) - 1)])
            attempt += 1

    def _apply(self, text: str) -> None:
        """Write the document where the store reads it, then load it (validated as usual)."""
        try:
            document = json.loads(text)
            facts = document.get(FACTS_MEMBER, {}) if isinstance(document, dict) else {}
            version = facts.get("flagSetVersion") if isinstance(facts, dict) else None
        except ValueError as exc:
            self.refused += 1
            self.last_error = f"the primary sent a document that is not JSON: {exc}"
            log.error("%s", self.last_error)
            return
        directory = self.store.directory
        directory.mkdir(parents=True, exist_ok=True)
        temp = directory / f".{SYNCED_FILE}.tmp"
        temp.write_text(text, encoding="utf-8")
        temp.replace(directory / SYNCED_FILE)
        self.versions.next_version = version if isinstance(version, int) else None
        try:
            self.store.reload()
        except FlagValidationError as exc:
            self.refused += 1
            self.last_error = f"the primary's flags were refused here: {exc.detail}"
            log.error("%s", self.last_error)
            return
        self.documents += 1
        self.synced_at = time.monotonic()


def _details(exc: grpc.RpcError) -> str:
    details = exc.details() if isinstance(exc, grpc.Call) else None
    return str(details or exc)
