"""flagd's sync protocol (`flagd.sync.v1.FlagSyncService`) served from the flag store.

Router replicas run the official flagd provider in in-process mode pointed at this server: they
receive the whole flag set on connect and again on every accepted change, and evaluate locally.

The server is grpc.aio on an event loop of its own thread, so one idle coroutine (not one
thread) holds each replica's stream and the process serves any number of replicas. The store
notifies from its reload thread; `call_soon_threadsafe` hands each new flag set to the loop,
which wakes every stream. A stream always sends the newest flag set: if several reloads land
while it is busy it skips the intermediate ones, which is correct because every message carries
the complete state.

Who may sync: the port serves every flag, targeting rules included, so it is guarded three
ways, all set from `Settings` (see `serve_from_settings`):

- bound to loopback (`sync_host`, 127.0.0.1) unless configured otherwise;
- with tokens configured, every RPC needs gRPC metadata `authorization: Bearer <token>`, else
  UNAUTHENTICATED. The official Python provider sends one through its `channel_credentials`
  option: `grpc.composite_channel_credentials(<TLS or grpc.local_channel_credentials()>,
  grpc.access_token_call_credentials(token))` (gRPC sends call credentials only over TLS or
  local channels, never in plaintext across a network);
- with a certificate and key, the port speaks TLS only (providers: tls=True, cert_path=<CA>),
  and with a client CA, replicas must present a certificate it signed (mutual TLS), for
  providers that can pass TLS settings but no token.

Usage (the app lifespan does this when `Settings.sync_port` is not 0)::

    handle = start_sync_server(store, "127.0.0.1", 8015, tokens=["a-long-sync-secret"])
    ...
    handle.stop()
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc
from pydantic import SecretStr

from control_plane.auth import GatewayTokenChecker
from control_plane.distribution._document_text import DefaultViewTexts, dumps_by_member
from control_plane.distribution.selector import Selector, SelectorError, SelectorNotFound
from control_plane.errors import ControlPlaneError, Unauthenticated
from control_plane.flagstore import FlagSet, FlagStore
from control_plane.settings import Settings

__all__ = [
    "SELECTOR_HEADER",
    "FlagSyncServicer",
    "SyncServerError",
    "SyncServerHandle",
    "SyncTLS",
    "serve_from_settings",
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


class SyncServerError(ControlPlaneError):
    title = "Sync server failed"


@dataclass(frozen=True)
class SyncTLS:
    """PEM material of a TLS sync port; `client_ca` set: client certificates are required."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(
        cls, cert_file: Path, key_file: Path, client_ca_file: Path | None = None
    ) -> SyncTLS:
        return cls(
            cert_file.read_bytes(),
            key_file.read_bytes(),
            client_ca_file.read_bytes() if client_ca_file else None,
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


class FlagSyncServicer(sync_pb2_grpc.FlagSyncServiceServicer):
    """The FlagSyncService over the flag sets handed to `publish` (all on one event loop).

    With `tokens`, every RPC first checks `authorization: Bearer <token>` in its metadata.
    """

    def __init__(
        self, tokens: Sequence[SecretStr | str] = (), context: Mapping[str, Any] | None = None
    ) -> None:
        self._tokens = GatewayTokenChecker(tokens)  # digests once; constant-time compare
        #: Static evaluation context (setting `sync_context`), as flagd's --context-value.
        self._context = struct_pb2.Struct()
        self._context.update(dict(context or {}))
        self._latest: FlagSet | None = None
        self._documents: dict[str, str] = {}  # selector text -> JSON of _latest
        #: The default view's text, written only for flags that changed (see _document_text).
        self._default_texts = DefaultViewTexts()
        self._waiters: set[asyncio.Event] = set()
        self._closing = False
        #: Open SyncFlags streams (replicas currently connected).
        self.streams = 0

    @property
    def requires_token(self) -> bool:
        return self._tokens.enabled

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
            return dumps_by_member(selector.document(flag_set, check=False))
        text = self._documents.get(selector.text)
        if text is None:
            if selector.everything:
                text = self._default_texts.text(flag_set)
            else:
                text = dumps_by_member(selector.document(flag_set, check=False))
            self._documents[selector.text] = text
        return text

    async def _check_exists(
        self, selector: Selector, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """NOT_FOUND when the selector names a flag set or file the serving set lacks."""
        flag_set = self._latest
        if flag_set is None or selector.everything:
            return
        try:
            selector.document(flag_set)
        except SelectorNotFound as exc:
            log.warning("sync call from %s refused: %s", context.peer(), exc.detail)
            await context.abort(grpc.StatusCode.NOT_FOUND, exc.detail)

    # -- RPCs --------------------------------------------------------------------------------

    async def SyncFlags(  # name fixed by the generated stub
        self, request: sync_pb2.SyncFlagsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[sync_pb2.SyncFlagsResponse]:
        await self._authorize(context)
        selector = await self._selector(request.selector, context)
        await self._check_exists(selector, context)
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
                        flag_configuration=self._document(flag_set, selector),
                        sync_context=self._context,
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
        await self._authorize(context)
        selector = await self._selector(request.selector, context)
        await self._check_exists(selector, context)
        flag_set = self._latest
        if flag_set is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "no valid flag set has been loaded yet"
            )
            raise SyncServerError("unreachable: abort() raises")
        return sync_pb2.FetchAllFlagsResponse(flag_configuration=self._document(flag_set, selector))

    async def GetMetadata(
        self, request: sync_pb2.GetMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> sync_pb2.GetMetadataResponse:
        await self._authorize(context)
        # As flagd: the static context (its --context-value, our `sync_context`), which
        # providers merge into every evaluation context. Not the version or bucketing: those
        # would change evaluation results; they travel in the document's controlPlane member.
        return sync_pb2.GetMetadataResponse(metadata=self._context)

    async def _authorize(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """UNAUTHENTICATED unless the call carries a configured token (no-op with none)."""
        if not self._tokens.enabled:
            return
        header: str | bytes | None = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value
        if header is None:
            detail = "the sync service needs gRPC metadata 'authorization: Bearer <token>'"
        else:
            try:
                self._tokens(header)
                return
            except Unauthenticated:
                detail = "the authorization metadata is not 'Bearer <a valid sync token>'"
        log.warning("sync call from %s refused: %s", context.peer(), detail)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, detail)

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

    def __init__(
        self,
        *,
        host: str,
        port: int,
        servicer: FlagSyncServicer,
        server: grpc.aio.Server,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        unsubscribe: Callable[[], None],
    ) -> None:
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


async def _serve(
    servicer: FlagSyncServicer, address: str, tls: SyncTLS | None
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=_SERVER_OPTIONS)
    sync_pb2_grpc.add_FlagSyncServiceServicer_to_server(servicer, server)
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, tls.server_credentials())
    if port == 0:  # older grpc versions report a failed bind this way instead of raising
        raise RuntimeError(f"failed to bind {address}")
    await server.start()
    return server, port


def serve_from_settings(store: FlagStore, settings: Settings) -> SyncServerHandle | None:
    """The sync server `settings` ask for (None when `sync_port` is 0).

    Tokens: `sync_tokens`, or the gateway tokens when none are set (see the settings).
    """
    if not settings.sync_port:
        return None
    tls = None
    if settings.sync_tls_cert_file is not None and settings.sync_tls_key_file is not None:
        tls = SyncTLS.from_files(
            settings.sync_tls_cert_file,
            settings.sync_tls_key_file,
            settings.sync_tls_client_ca_file,
        )
    tokens = settings.sync_tokens or settings.gateway_tokens
    return start_sync_server(
        store,
        settings.sync_host,
        settings.sync_port,
        tokens=tokens,
        tls=tls,
        context=settings.sync_context,
    )


def start_sync_server(
    store: FlagStore,
    host: str = "127.0.0.1",
    port: int = 8015,
    *,
    tokens: Sequence[SecretStr | str] = (),
    tls: SyncTLS | None = None,
    context: Mapping[str, Any] | None = None,
) -> SyncServerHandle:
    """Serve flagd.sync.v1 for `store` on host:port (0 picks a free port); returns at once.

    With `tokens`, calls need `authorization: Bearer <token>` metadata; with `tls`, the port
    speaks TLS only; `context` is the static context sent to providers (GetMetadata,
    sync_context). Raises SyncServerError, naming the address, when it cannot be bound.
    """
    address = _address(host, port)
    servicer = FlagSyncServicer(tokens, context)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=_run_loop, args=(loop,), name="flagd-sync-server", daemon=True)
    thread.start()
    try:
        server, bound = asyncio.run_coroutine_threadsafe(
            _serve(servicer, address, tls), loop
        ).result(timeout=30)
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
    log.info(
        "serving flagd sync (flagd.sync.v1) on %s (%s, %s)",
        _address(host, bound),
        "TLS" if tls else "plaintext",
        "token required" if servicer.requires_token else "no token",
    )
    return SyncServerHandle(
        host=host,
        port=bound,
        servicer=servicer,
        server=server,
        loop=loop,
        thread=thread,
        unsubscribe=unsubscribe,
    )
