"""The flagd sync server: official flagd providers (in-process) sync flags from our FlagStore."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from distribution_support import client_for, wait_for, write_document
from google.protobuf.json_format import MessageToDict
from openfeature.client import OpenFeatureClient
from openfeature.exception import ErrorCode
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

from control_plane import cli
from control_plane.cli.common import settings_from
from control_plane.distribution import SyncServerError, SyncServerHandle, start_sync_server
from control_plane.flagstore import FlagStore
from flags import PINNED_ROUTER
from providers import sync_provider

ROUTING_FILE = "routing.flagd.json"


def _routing_document(flags_dir: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((flags_dir / ROUTING_FILE).read_text())
    return document


def _set_pinned_url(flags_dir: Path, url: str) -> None:
    """Edit the URL of the variant everyone without a pin gets (pinned-router's "v1")."""
    document = _routing_document(flags_dir)
    document["flags"][PINNED_ROUTER]["variants"]["v1"]["url"] = url
    write_document(flags_dir, ROUTING_FILE, document)


def _extra_flag(variant: str = "on", flag_set_id: str | None = None) -> dict[str, Any]:
    flag: dict[str, Any] = {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": variant,
    }
    if flag_set_id is not None:
        flag["metadata"] = {"flagSetId": flag_set_id}
    return flag


@pytest.fixture
def store(flags_dir: Path) -> FlagStore:
    store = FlagStore(flags_dir)
    store.reload()
    return store


@pytest.fixture
def server(store: FlagStore) -> Iterator[SyncServerHandle]:
    handle = start_sync_server(store, "127.0.0.1", 0)
    yield handle
    handle.stop()


@pytest.fixture
def stub(server: SyncServerHandle) -> Iterator[sync_pb2_grpc.FlagSyncServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield sync_pb2_grpc.FlagSyncServiceStub(channel)


@pytest.fixture
def replica(server: SyncServerHandle) -> Iterator[OpenFeatureClient]:
    """A router replica: the official flagd provider, in-process, syncing from our server."""
    provider = sync_provider("127.0.0.1", server.port)
    client = client_for(provider, "replica")
    yield client
    provider.shutdown()


def _pinned_url(client: OpenFeatureClient) -> Any:
    return client.get_object_details(PINNED_ROUTER, {}).value.get("url")


def test_replica_sees_a_reloaded_flag_within_one_second(
    flags_dir: Path, store: FlagStore, replica: OpenFeatureClient
) -> None:
    """A valid edit reloaded by the store reaches an in-process flagd replica within 1 s."""
    assert _pinned_url(replica) == "http://127.0.0.1:9131"
    _set_pinned_url(flags_dir, "http://127.0.0.1:9199")
    new = store.reload()
    assert wait_for(lambda: _pinned_url(replica) == "http://127.0.0.1:9199", timeout=1.0), (
        "the replica did not see the change within 1 s"
    )
    details = replica.get_object_details(PINNED_ROUTER, {})
    assert details.value == {"backend": "model-v1", "url": "http://127.0.0.1:9199"}
    assert "flagSetVersion" not in details.flag_metadata  # flagd's metadata, not our facts
    assert new.version == store.current.version


def test_replica_keeps_the_last_good_flags_when_a_reload_is_refused(
    flags_dir: Path,
    store: FlagStore,
    replica: OpenFeatureClient,
    stub: sync_pb2_grpc.FlagSyncServiceStub,
) -> None:
    """A refused flag sends nothing to replicas (the set is unchanged); the next valid edit
    arrives as the next message."""
    stream = stub.SyncFlags(sync_pb2.SyncFlagsRequest(), timeout=30)
    first = json.loads(next(stream).flag_configuration)
    assert first["controlPlane"]["flagSetVersion"] == store.current.version
    # The same key in a second file is refused by the store (alone: the rest is unchanged).
    write_document(flags_dir, "clash.flagd.json", {"flags": {PINNED_ROUTER: _extra_flag()}})
    store.reload()
    assert {item.key for item in store.refused} == {PINNED_ROUTER}  # both definitions
    assert _pinned_url(replica) == "http://127.0.0.1:9131"
    # Fixed by rewriting the file, not deleting it (a deletion waits for the store's settle
    # window before it takes effect).
    write_document(flags_dir, "clash.flagd.json", {"flags": {"no-clash": _extra_flag()}})
    _set_pinned_url(flags_dir, "http://127.0.0.1:9198")
    fixed = store.reload()
    second = json.loads(next(stream).flag_configuration)
    assert second["controlPlane"]["flagSetVersion"] == fixed.version
    assert second["flags"][PINNED_ROUTER]["variants"]["v1"]["url"] == "http://127.0.0.1:9198"
    assert wait_for(lambda: _pinned_url(replica) == "http://127.0.0.1:9198", timeout=5.0)
    stream.cancel()


def test_every_connected_replica_receives_each_change(
    flags_dir: Path, store: FlagStore, server: SyncServerHandle
) -> None:
    """Twenty replicas on their own connections each get the initial set and then the change."""
    channels = [grpc.insecure_channel(f"127.0.0.1:{server.port}") for _ in range(20)]
    try:
        streams = [
            sync_pb2_grpc.FlagSyncServiceStub(channel).SyncFlags(
                sync_pb2.SyncFlagsRequest(), timeout=30
            )
            for channel in channels
        ]
        initial = {
            json.loads(next(s).flag_configuration)["controlPlane"]["flagSetVersion"]
            for s in streams
        }
        assert initial == {store.current.version}
        assert wait_for(lambda: server.streams == 20, timeout=5.0)
        _set_pinned_url(flags_dir, "http://127.0.0.1:9197")
        new = store.reload()
        updates = [json.loads(next(s).flag_configuration) for s in streams]
        assert {u["controlPlane"]["flagSetVersion"] for u in updates} == {new.version}
        assert {u["flags"][PINNED_ROUTER]["variants"]["v1"]["url"] for u in updates} == {
            "http://127.0.0.1:9197"
        }
        for s in streams:
            s.cancel()
    finally:
        for channel in channels:
            channel.close()
    assert wait_for(lambda: server.streams == 0, timeout=5.0)


def test_fetch_all_flags_returns_the_serving_flag_set(
    store: FlagStore, stub: sync_pb2_grpc.FlagSyncServiceStub
) -> None:
    """FetchAllFlags answers the store's current flagd document, metadata included."""
    response = stub.FetchAllFlags(sync_pb2.FetchAllFlagsRequest(), timeout=10)
    assert json.loads(response.flag_configuration) == store.current.to_flagd()


def test_get_metadata_adds_no_static_context(stub: sync_pb2_grpc.FlagSyncServiceStub) -> None:
    """GetMetadata answers an empty context, so replicas' evaluation contexts stay untouched."""
    response = stub.GetMetadata(sync_pb2.GetMetadataRequest(), timeout=10)
    assert MessageToDict(response.metadata) == {}


def test_source_selector_syncs_one_file(
    flags_dir: Path, store: FlagStore, server: SyncServerHandle
) -> None:
    """A replica whose selector names one flag file gets only that file's flags."""
    write_document(flags_dir, "extra.flagd.json", {"flags": {"extra-flag": _extra_flag()}})
    store.reload()
    provider = sync_provider("127.0.0.1", server.port, selector="source=extra.flagd.json")
    client = client_for(provider, "selected")
    try:
        assert client.get_boolean_details("extra-flag", False).value is True
        missing = client.get_object_details(PINNED_ROUTER, {})
        assert missing.error_code == ErrorCode.FLAG_NOT_FOUND
    finally:
        provider.shutdown()


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", {"*", "a", "b"}),  # "*": every flag of the shipped files
        ("routing", {"routing.flagd.json"}),  # a file name: that file's flags
        ("source=teams.flagd.json", {"a", "b"}),
        ("flagSetId=payments", {"a"}),
        ("source=teams,flagSetId=search", {"b"}),
    ],
)
def test_selector_header_filters_flags(
    flags_dir: Path,
    store: FlagStore,
    stub: sync_pb2_grpc.FlagSyncServiceStub,
    selector: str,
    expected: set[str],
) -> None:
    """The flagd-selector header picks flags by source file and by flagSetId metadata."""
    write_document(
        flags_dir,
        "teams.flagd.json",
        {
            "flags": {
                "a": _extra_flag(flag_set_id="payments"),
                "b": _extra_flag(flag_set_id="search"),
            }
        },
    )
    shipped = store.current
    store.reload()
    if "*" in expected:
        expected = (expected - {"*"}) | set(shipped.flags)
    if ROUTING_FILE in expected:
        expected = {key for key, source in shipped.sources.items() if source == ROUTING_FILE}
        assert PINNED_ROUTER in expected
    response = stub.FetchAllFlags(
        sync_pb2.FetchAllFlagsRequest(), timeout=10, metadata=(("flagd-selector", selector),)
    )
    assert set(json.loads(response.flag_configuration)["flags"]) == expected


@pytest.mark.parametrize(
    ("selector", "named"),
    [("colour=blue", "'colour'"), ("source=", "needs a value"), ("routing,,x", "empty term")],
)
def test_malformed_selector_is_refused_with_its_reason(
    stub: sync_pb2_grpc.FlagSyncServiceStub, selector: str, named: str
) -> None:
    """A selector we cannot read is INVALID_ARGUMENT with a message saying what is wrong."""
    with pytest.raises(grpc.RpcError) as caught:
        next(stub.SyncFlags(sync_pb2.SyncFlagsRequest(selector=selector), timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in caught.value.details()


def test_stream_waits_for_the_first_valid_flag_set(tmp_path: Path) -> None:
    """Before any valid flag set, FetchAllFlags is UNAVAILABLE and streams wait for the first."""
    directory = tmp_path / "late"
    directory.mkdir()
    store = FlagStore(directory)
    with (
        start_sync_server(store, "127.0.0.1", 0) as handle,
        grpc.insecure_channel(f"127.0.0.1:{handle.port}") as channel,
    ):
        stub = sync_pb2_grpc.FlagSyncServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.FetchAllFlags(sync_pb2.FetchAllFlagsRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        stream = stub.SyncFlags(sync_pb2.SyncFlagsRequest(), timeout=30)
        received: list[dict[str, Any]] = []
        reader = threading.Thread(
            target=lambda: received.append(json.loads(next(stream).flag_configuration))
        )
        reader.start()
        assert wait_for(lambda: handle.streams == 1, timeout=5.0)
        assert received == []
        write_document(directory, "first.flagd.json", {"flags": {"first": _extra_flag()}})
        store.reload()
        reader.join(timeout=10)
        assert [set(doc["flags"]) for doc in received] == [{"first"}]
        stream.cancel()


def test_stop_ends_streams_and_frees_the_port(store: FlagStore) -> None:
    """stop() ends open streams cleanly, refuses new calls, and the port can be bound again."""
    handle = start_sync_server(store, "127.0.0.1", 0)
    with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
        stub = sync_pb2_grpc.FlagSyncServiceStub(channel)
        stream = stub.SyncFlags(sync_pb2.SyncFlagsRequest(), timeout=30)
        next(stream)
        handle.stop()
        handle.stop()  # idempotent
        assert list(stream) == []  # ended by the server with status OK, not a timeout
        assert stream.code() == grpc.StatusCode.OK
        assert handle.streams == 0
        with pytest.raises(grpc.RpcError) as caught:
            stub.FetchAllFlags(sync_pb2.FetchAllFlagsRequest(), timeout=2)
        assert caught.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
    with start_sync_server(store, "127.0.0.1", handle.port) as again:
        assert again.port == handle.port


def test_a_taken_port_is_a_clear_error(store: FlagStore) -> None:
    """Starting on a port another socket holds fails with an error naming the address."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(SyncServerError, match=f"127.0.0.1:{port}"):
            start_sync_server(store, "127.0.0.1", port)


def test_serve_accepts_sync_port_option(tmp_path: Path) -> None:
    """`control-plane serve --sync-port N` sets the sync port; 0 disables the service."""
    args = cli.build_parser().parse_args(["serve", "--flags", str(tmp_path), "--sync-port", "0"])
    assert settings_from(args).sync_port == 0
    args = cli.build_parser().parse_args(["serve", "--sync-port", "18015"])
    assert settings_from(args).sync_port == 18015


def test_serve_refuses_an_out_of_range_sync_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An impossible --sync-port is a one-line error naming the setting, exit status 2."""
    status = cli.main(["serve", "--flags", str(tmp_path), "--sync-port", "70000"])
    assert status == 2
    assert "sync_port" in capsys.readouterr().err
