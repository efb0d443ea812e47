"""Who may sync flags: tokens in gRPC metadata, TLS, mutual TLS, and the loopback default.

Clients are grpc stubs (to see status codes) and the official flagd provider in IN_PROCESS mode
(to prove a real replica can sync through each guard). Certificates are made per test run with
the `cryptography` package.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from distribution_support import client_for
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.exception import ProviderFatalError
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc
from pydantic import ValidationError

from control_plane import cli
from control_plane.cli.common import settings_from
from control_plane.distribution.sync_server import (
    SyncServerHandle,
    SyncTLS,
    serve_from_settings,
    start_sync_server,
)
from control_plane.flagstore import FlagStore
from control_plane.settings import Settings
from flags import PINNED_ROUTER

TOKEN = "sync-secret-0123456789"


@dataclass(frozen=True)
class Pem:
    cert: Path
    key: Path


def _self_signed(directory: Path, name: str) -> Pem:
    """A self-signed CA-capable certificate for localhost and 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = Pem(directory / f"{name}.crt", directory / f"{name}.key")
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem


@pytest.fixture
def store(flags_dir: Path) -> FlagStore:
    store = FlagStore(flags_dir)
    store.reload()
    return store


@pytest.fixture
def server_pem(tmp_path: Path) -> Pem:
    return _self_signed(tmp_path, "sync-server")


@pytest.fixture
def token_server(store: FlagStore) -> Iterator[SyncServerHandle]:
    with start_sync_server(store, "127.0.0.1", 0, tokens=[TOKEN]) as handle:
        yield handle


def _fetch(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> str:
    stub = sync_pb2_grpc.FlagSyncServiceStub(channel)
    response = stub.FetchAllFlags(sync_pb2.FetchAllFlagsRequest(), timeout=5, metadata=metadata)
    return str(response.flag_configuration)


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    code: grpc.StatusCode = caught.value.code()
    return code


def _in_process(port: int, **options: object) -> FlagdProvider:
    return FlagdProvider(
        resolver_type=ResolverType.IN_PROCESS,
        host="127.0.0.1",
        port=port,
        deadline_ms=3000,
        **options,
    )  # type: ignore[arg-type]


def _pinned_url(provider: FlagdProvider) -> object:
    client = client_for(provider, "secured-replica")
    return client.get_object_details(PINNED_ROUTER, {}).value.get("url")


def test_anonymous_fetch_is_unauthenticated_when_a_token_is_configured(
    token_server: SyncServerHandle, store: FlagStore
) -> None:
    """With a sync token set, FetchAllFlags without (or with a wrong) token is UNAUTHENTICATED;
    with `authorization: Bearer <token>` it answers the flag set."""
    with grpc.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
        assert _code(lambda: _fetch(channel)) == grpc.StatusCode.UNAUTHENTICATED
        wrong = (("authorization", "Bearer not-the-sync-token-000"),)
        assert _code(lambda: _fetch(channel, wrong)) == grpc.StatusCode.UNAUTHENTICATED
        stub = sync_pb2_grpc.FlagSyncServiceStub(channel)
        stream = stub.SyncFlags(sync_pb2.SyncFlagsRequest(), timeout=5)
        assert _code(lambda: next(stream)) == grpc.StatusCode.UNAUTHENTICATED
        document = _fetch(channel, (("authorization", f"Bearer {TOKEN}"),))
    assert json.loads(document) == store.current.to_flagd()


def test_gateway_tokens_guard_the_sync_port_when_no_sync_token_is_set(
    store: FlagStore, flags_dir: Path
) -> None:
    """Settings with gateway tokens only: the sync port refuses anonymous calls and accepts a
    gateway token (the configuration of the original report no longer leaks the flag set)."""
    settings = Settings(flags_dir=flags_dir, sync_port=1, gateway_tokens=[TOKEN])
    settings = settings.model_copy(update={"sync_port": 0})
    handle = serve_from_settings(store, settings)
    assert handle is None  # sync_port 0: nothing served
    settings = settings.model_copy(update={"sync_port": _free_port()})
    handle = serve_from_settings(store, settings)
    assert handle is not None
    with handle, grpc.insecure_channel(handle.address) as channel:
        assert _code(lambda: _fetch(channel)) == grpc.StatusCode.UNAUTHENTICATED
        assert _fetch(channel, (("authorization", f"Bearer {TOKEN}"),))


def test_official_provider_sends_a_token_over_a_local_channel(
    token_server: SyncServerHandle,
) -> None:
    """The official provider, given composite local + access-token channel credentials, syncs
    from a token-guarded loopback port without TLS."""
    credentials = grpc.composite_channel_credentials(
        grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP),
        grpc.access_token_call_credentials(TOKEN),
    )
    provider = _in_process(token_server.port, channel_credentials=credentials)
    try:
        assert _pinned_url(provider) == "http://127.0.0.1:9131"
    finally:
        provider.shutdown()


def test_official_provider_without_a_token_is_refused(token_server: SyncServerHandle) -> None:
    """A provider with no token is refused (UNAUTHENTICATED, fatal when configured so)."""
    provider = _in_process(token_server.port, fatal_status_codes=["UNAUTHENTICATED"])
    try:
        with pytest.raises(ProviderFatalError):
            client_for(provider, "anonymous-replica")
    finally:
        provider.shutdown()


def test_official_provider_syncs_over_tls_with_cert_path(store: FlagStore, server_pem: Pem) -> None:
    """A TLS sync port (self-signed certificate) serves the official provider configured with
    tls=True and cert_path; a plaintext client cannot talk to it."""
    tls = SyncTLS.from_files(server_pem.cert, server_pem.key)
    with start_sync_server(store, "127.0.0.1", 0, tls=tls) as handle:
        provider = _in_process(handle.port, tls=True, cert_path=str(server_pem.cert))
        try:
            assert _pinned_url(provider) == "http://127.0.0.1:9131"
        finally:
            provider.shutdown()
        with grpc.insecure_channel(handle.address) as plain:
            assert _code(lambda: _fetch(plain)) == grpc.StatusCode.UNAVAILABLE


def test_official_provider_syncs_over_tls_with_a_token(store: FlagStore, server_pem: Pem) -> None:
    """TLS and a token together: the provider passes both through channel_credentials."""
    tls = SyncTLS.from_files(server_pem.cert, server_pem.key)
    with start_sync_server(store, "127.0.0.1", 0, tls=tls, tokens=[TOKEN]) as handle:
        root = server_pem.cert.read_bytes()
        with grpc.secure_channel(handle.address, grpc.ssl_channel_credentials(root)) as channel:
            assert _code(lambda: _fetch(channel)) == grpc.StatusCode.UNAUTHENTICATED
        credentials = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(root), grpc.access_token_call_credentials(TOKEN)
        )
        provider = _in_process(handle.port, channel_credentials=credentials)
        try:
            assert _pinned_url(provider) == "http://127.0.0.1:9131"
        finally:
            provider.shutdown()


def test_mutual_tls_requires_a_client_certificate(
    store: FlagStore, server_pem: Pem, tmp_path: Path
) -> None:
    """With a client CA, only replicas presenting a certificate it signed get the flag set."""
    client_pem = _self_signed(tmp_path, "replica")
    tls = SyncTLS.from_files(server_pem.cert, server_pem.key, client_pem.cert)
    root = server_pem.cert.read_bytes()
    with start_sync_server(store, "127.0.0.1", 0, tls=tls) as handle:
        with grpc.secure_channel(handle.address, grpc.ssl_channel_credentials(root)) as bare:
            assert _code(lambda: _fetch(bare)) == grpc.StatusCode.UNAVAILABLE
        credentials = grpc.ssl_channel_credentials(
            root, client_pem.key.read_bytes(), client_pem.cert.read_bytes()
        )
        provider = _in_process(handle.port, channel_credentials=credentials)
        try:
            assert _pinned_url(provider) == "http://127.0.0.1:9131"
        finally:
            provider.shutdown()


def test_sync_port_binds_loopback_whatever_the_http_host(flags_dir: Path) -> None:
    """`sync_host` defaults to 127.0.0.1 even when the HTTP API listens on every address."""
    settings = Settings(flags_dir=flags_dir, host="0.0.0.0")
    assert settings.sync_host == "127.0.0.1"


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "sync.internal"])
def test_non_loopback_sync_without_authentication_is_refused(flags_dir: Path, host: str) -> None:
    """Binding the sync port beyond loopback with no token and no client CA is a settings
    error naming sync_host; with a sync token it is accepted."""
    with pytest.raises(ValidationError, match="sync_host"):
        Settings(flags_dir=flags_dir, sync_host=host)
    assert Settings(flags_dir=flags_dir, sync_host=host, sync_tokens=[TOKEN]).sync_host == host


def test_tls_settings_must_come_as_a_pair_of_existing_files(
    flags_dir: Path, server_pem: Pem
) -> None:
    """A certificate without its key, or a missing file, is refused before anything starts."""
    with pytest.raises(ValidationError, match="go together"):
        Settings(flags_dir=flags_dir, sync_tls_cert_file=server_pem.cert)
    with pytest.raises(ValidationError, match="does not exist"):
        Settings(
            flags_dir=flags_dir,
            sync_tls_cert_file=server_pem.cert,
            sync_tls_key_file=server_pem.key.with_name("missing.key"),
        )


def test_serve_takes_sync_host_and_tls_options(tmp_path: Path, server_pem: Pem) -> None:
    """`serve --sync-host --sync-tls-cert --sync-tls-key` reach the settings."""
    args = cli.build_parser().parse_args(
        [
            "serve",
            "--flags",
            str(tmp_path),
            "--sync-host",
            "::1",
            "--sync-tls-cert",
            str(server_pem.cert),
            "--sync-tls-key",
            str(server_pem.key),
        ]
    )
    settings = settings_from(args)
    assert (settings.sync_host, settings.sync_tls_cert_file, settings.sync_tls_key_file) == (
        "::1",
        server_pem.cert,
        server_pem.key,
    )


def _free_port() -> int:
    from servers import free_port

    return free_port()
