"""flagd compatibility of the sync service (issue 14), through the official Python provider
(openfeature-provider-flagd, in-process mode over flagd.sync.v1).

- context enrichment: the static context (CP_SYNC_CONTEXT) reaches the provider in
  GetMetadata and the SyncFlags stream's sync_context, so a rule on an enriched attribute
  evaluates as with flagd (the testbed's contextEnrichment.feature);
- selectors: a flagSetId or file-path selector gets that set; an unknown one is NOT_FOUND,
  which the provider reports (it never becomes ready) instead of serving an empty set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from distribution_support import client_for, write_document
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ProviderNotReadyError
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

from control_plane.distribution import SyncServerHandle, start_sync_server
from control_plane.flagstore import FlagStore
from providers import sync_provider

CONTEXT_AWARE: dict[str, Any] = {
    "state": "ENABLED",
    "variants": {"internal": "INTERNAL", "external": "EXTERNAL"},
    "defaultVariant": "external",
    "targeting": {"if": [{"==": [{"var": "deployment"}, "internal"]}, "internal", "external"]},
}


def _bool(default: str) -> dict[str, Any]:
    return {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": default}


@pytest.fixture
def sync(tmp_path: Path) -> Iterator[SyncServerHandle]:
    directory = tmp_path / "flags"
    directory.mkdir()
    write_document(
        directory,
        "aware.flagd.json",
        {"flags": {"context-aware": CONTEXT_AWARE, "shared": _bool("on")}},
    )
    write_document(
        directory,
        "team.flagd.json",
        {"metadata": {"flagSetId": "team"}, "flags": {"shared": _bool("off")}},
    )
    store = FlagStore(directory)
    store.reload()
    with start_sync_server(store, "127.0.0.1", 0, context={"deployment": "internal"}) as handle:
        yield handle


def test_static_context_enriches_in_process_evaluation(sync: SyncServerHandle) -> None:
    """A rule on an attribute only the sync context carries evaluates to the enriched branch."""
    client = client_for(sync_provider("127.0.0.1", sync.port), "compat-enrichment")
    details = client.get_string_details("context-aware", "not", EvaluationContext("u"))
    assert (details.value, details.reason) == ("INTERNAL", "TARGETING_MATCH")


def test_get_metadata_answers_the_static_context(sync: SyncServerHandle) -> None:
    """GetMetadata answers the configured context (flagd's --context-value), not {}."""
    with grpc.insecure_channel(sync.address) as channel:
        answer = sync_pb2_grpc.FlagSyncServiceStub(channel).GetMetadata(
            sync_pb2.GetMetadataRequest(), timeout=5
        )
    assert dict(answer.metadata) == {"deployment": "internal"}


@pytest.mark.parametrize("selector", ["flagSetId=team", "/etc/flagd/team.flagd.json"])
def test_selectors_pick_a_flag_set_for_the_provider(sync: SyncServerHandle, selector: str) -> None:
    """The provider with a flagSetId or file-path selector serves that set's `shared`."""
    client = client_for(
        sync_provider("127.0.0.1", sync.port, selector=selector), f"compat-selector-{selector}"
    )
    assert client.get_boolean_value("shared", True) is False


def test_default_view_serves_the_default_sets_definition(sync: SyncServerHandle) -> None:
    """Without a selector the key both sets define resolves to the default set's flag."""
    client = client_for(sync_provider("127.0.0.1", sync.port), "compat-default-view")
    assert client.get_boolean_value("shared", False) is True


@pytest.mark.parametrize("selector", ["flagSetId=nope", "source=missing.flagd.json"])
def test_unknown_selector_is_not_found(sync: SyncServerHandle, selector: str) -> None:
    """FetchAllFlags and SyncFlags answer NOT_FOUND naming the set or file, never {}."""
    with grpc.insecure_channel(sync.address) as channel:
        stub = sync_pb2_grpc.FlagSyncServiceStub(channel)
        with pytest.raises(grpc.RpcError) as fetched:
            stub.FetchAllFlags(sync_pb2.FetchAllFlagsRequest(selector=selector), timeout=5)
        assert fetched.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as streamed:
            next(iter(stub.SyncFlags(sync_pb2.SyncFlagsRequest(selector=selector), timeout=5)))
        assert streamed.value.code() == grpc.StatusCode.NOT_FOUND


def test_unknown_selector_is_an_error_the_provider_reports(sync: SyncServerHandle) -> None:
    """The official provider with an unknown selector fails to become ready (an error its
    owner sees) instead of reporting READY with no flags."""
    provider = sync_provider("127.0.0.1", sync.port, selector="flagSetId=nope", deadline_ms=500)
    with pytest.raises(ProviderNotReadyError):
        client_for(provider, "compat-unknown-selector")
    provider.shutdown()
