"""flagd's sync protocol (`flagd.sync.v1.FlagSyncService`) served from the flag store.

Router replicas run the official flagd provider in in-process mode pointed at this server: they
receive the whole flag set on connect and again on every accepted change, and evaluate locally.

The server is grpc.aio on an event loop of its own thread, so one idle coroutine (not one
thread) holds each replica's stream and the process serves any number of replicas. The store
notifies from its reload thread; `call_soon_threadsafe` hands each new flag set to the loop,
which wakes every stream. A stream always sends the newest flag set: if several reloads land
while it is busy it skips the intermediate ones, which is correct because every message carries
the complete state.

Usage (the app lifespan does this when `Settings.sync_port` is not 0)::

    handle = start_sync_server(store, "127.0.0.1", 8015)
    ...
    handle.stop()
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import struct_pb2
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

from control_plane.distribution.selector import Selector, SelectorError
from control_plane.errors import ControlPlaneError
from control_plane.flagstore import FlagSet, FlagStore

__all__ = [
    "SELECTOR_HEADER",
    "FlagSyncServicer",
    "SyncServerError",
    "SyncServerHandle",
    "start_sync_server",
]

log = logging.getLogger(__name__)

#: gRPC metadata key flagd providers (>= flagd 0.11) send their selector in.
SELECTOR_HEADER = "flagd-selector"

_SERVER_OPTIONS: list[tuple[str, Any]] = [
    # Without this grpc sets SO_REUSEPORT, and a second server on a taken port would "bind"
    # and silently share it instead of failing.
    ("grpc.so_reuseport", 0),
    # Ping idle replicas so a vanished one (no FIN) frees its stream within about a minute.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
]


def _dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, ensure_ascii=False)


class SyncServerError(ControlPlaneError):
    title = "Sync server failed"


class FlagSyncServicer(sync_pb2_grpc.FlagSyncServiceServicer):
    """The FlagSyncService over the flag sets handed to `publish` (all on one event loop)."""

    def __init__(self) -> None:
        self._latest: FlagSet | None = None
        self._documents: dict[str, str] = {}  # selector text -> JSON of _latest
        self._waiters: set[asyncio.Event] = set()
        self._closing = False
        #: Open SyncFlags streams (replicas currently connected).
        self.streams = 0

    # -- state changes (loop thread) ---------------------------------------------------------

    def publish(self, flag_set: FlagSet) -> None:
        """Make `flag_set` the one every stream sends next."""
        self._latest = flag_set
        self._documents.clear()
        for waiter in self._waiters:
            waiter.set()

    def close(self) -> None:
        """End every open stream (cleanly, status OK) so replicas reconnect elsewhere."""
        self._closing = True
        for waiter in self._waiters:
            waiter.set()

    def _document(self, flag_set: FlagSet, selector: Selector) -> str:
        # Serialised once per flag set and selector, not once per replica.
        if flag_set is not self._latest:
            return _dumps(selector.document(flag_set))
        text = self._documents.get(selector.text)
        if text is None:
            text = _dumps(selector.document(flag_set))
            self._documents[selector.text] = text
        return text

    # -- RPCs --------------------------------------------------------------------------------

    async def SyncFlags(  # name fixed by the generated stub
        self, request: sync_pb2.SyncFlagsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[sync_pb2.SyncFlagsResponse]:
        selector = await self._selector(request.selector, context)
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        self.streams += 1
        peer = context.peer()
        log.info("replica %s connected (selector %r)", peer, selector.text)
        try:
            sent: FlagSet | None = None
            while not self._closing:
                waiter.clear()
                flag_set = self._latest
                if flag_set is not None and flag_set is not sent:
                    sent = flag_set
                    yield sync_pb2.SyncFlagsResponse(
                        flag_configuration=self._document(flag_set, selector)
                    )
                    continue
                await waiter.wait()
        finally:
            self._waiters.discard(waiter)
            self.streams -= 1
            log.info("replica %s disconnected", peer)

    async def FetchAllFlags(
        self, request: sync_pb2.FetchAllFlagsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> sync_pb2.FetchAllFlagsResponse:
        selector = await self._selector(request.selector, context)
        flag_set = self._latest
        if flag_set is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "no valid flag set has been loaded yet")
        assert flag_set is not None
        return sync_pb2.FetchAllFlagsResponse(flag_configuration=self._document(flag_set, selector))

    async def GetMetadata(
        self, request: sync_pb2.GetMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> sync_pb2.GetMetadataResponse:
        # flagd answers with its static `--context-value`s, which providers merge into every
        # evaluation context. We add none: the flag set's own metadata (version, bucketing)
        # already reaches replicas inside the flag document, where it belongs.
        return sync_pb2.GetMetadataResponse(metadata=struct_pb2.Struct())

    async def _selector(self, field: str, context: grpc.aio.ServicerContext[Any, Any]) -> Selector:
        headers = {item[0]: item[1] for item in context.invocation_metadata() or ()}
        header = headers.get(SELECTOR_HEADER)
        text = header if isinstance(header, str) and header else field
        try:
            return Selector.parse(text)
        except SelectorError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.detail)
            raise  # abort() raises; this keeps type checkers honest


class SyncServerHandle:
    """A running sync server: its bound `port`, open `streams`, and `stop()`."""

    def __init__(self, *, host: str, port: int, servicer: FlagSyncServicer,
                 server: grpc.aio.Server, loop: asyncio.AbstractEventLoop,
                 thread: threading.Thread, unsubscribe: Callable[[], None]) -> None:
        self.host = host
        self.port = port
        self._servicer = servicer
        self._server = server
        self._loop = loop
        self._thread = thread
        self._unsubscribe = unsubscribe
        self._stopped = False
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return _address(self.host, self.port)

    @property
    def streams(self) -> int:
        """Replicas connected right now."""
        return self._servicer.streams

    def stop(self, grace: float = 1.0) -> None:
        """End all streams, stop accepting connections, and free the port (idempotent)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._unsubscribe()
        future = asyncio.run_coroutine_threadsafe(self._shutdown(grace), self._loop)
        try:
            future.result(timeout=grace + 10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        log.info("flagd sync server on %s stopped", self.address)

    async def _shutdown(self, grace: float) -> None:
        self._servicer.close()
        await self._server.stop(grace)

    def __enter__(self) -> SyncServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"  # IPv6 literal
    return f"{host}:{port}"


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve(servicer: FlagSyncServicer, address: str) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=_SERVER_OPTIONS)
    sync_pb2_grpc.add_FlagSyncServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:  # older grpc versions report a failed bind this way instead of raising
        raise RuntimeError(f"failed to bind {address}")
    await server.start()
    return server, port


def start_sync_server(store: FlagStore, host: str = "127.0.0.1",
                      port: int = 8015) -> SyncServerHandle:
    """Serve flagd.sync.v1 for `store` on host:port (0 picks a free port); returns at once.

    Raises SyncServerError, naming the address, when the port cannot be bound.
    """
    address = _address(host, port)
    servicer = FlagSyncServicer()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=_run_loop, args=(loop,), name="flagd-sync-server",
                              daemon=True)
    thread.start()
    try:
        server, bound = asyncio.run_coroutine_threadsafe(
            _serve(servicer, address), loop).result(timeout=30)
    except Exception as exc:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        raise SyncServerError(f"cannot serve flagd sync on {address}: {exc}") from exc

    def on_flag_set(flag_set: FlagSet) -> None:
        # Called on the store's reload thread; the servicer lives on the loop.
        try:
            loop.call_soon_threadsafe(servicer.publish, flag_set)
        except RuntimeError:  # the loop closed while this reload was notifying: stopped
            log.debug("sync server stopped; flag set %d not published", flag_set.version)

    unsubscribe = store.subscribe(on_flag_set)
    log.info("serving flagd sync (flagd.sync.v1) on %s", _address(host, bound))
    return SyncServerHandle(host=host, port=bound, servicer=servicer, server=server, loop=loop,
                            thread=thread, unsubscribe=unsubscribe)
