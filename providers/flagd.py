"""Build the official flagd OpenFeature provider for each way this project gets its flags.

- `source_fed_provider(source)`: in-process flagd evaluation fed by a FlagDocumentSource (the
  control plane's own flag store). No network, no file polling: a flag set swap reaches the
  evaluator in the same call.
- `sync_provider(host, port)`: in-process evaluation syncing from a flagd sync server (ours, or a
  real flagd) over `flagd.sync.v1`; this is what router replicas run.
- `file_provider(path)`: in-process evaluation of one flag file the provider polls itself.
- `rpc_provider(host, port)`: remote evaluation over flagd's evaluation gRPC service.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.contrib.provider.flagd.resolvers.in_process import InProcessResolver
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails

from providers.flagset_source import FlagDocumentSource

__all__ = ["file_provider", "rpc_provider", "source_fed_provider", "sync_provider"]


class _SourceConnector:
    """A flagd in-process connector (FlagStateConnector protocol) fed by a FlagDocumentSource."""

    def __init__(self, provider: FlagdProvider, source: FlagDocumentSource) -> None:
        self._provider = provider
        self._source = source
        self._unsubscribe: Callable[[], None] | None = None

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        # A source with no flag set yet is not an error: the provider serves FLAG_NOT_FOUND
        # until the first set arrives, and the owner of the source reports readiness.
        self._unsubscribe = self._source.subscribe_documents(self._update)

    def shutdown(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _update(self, document: dict[str, Any]) -> None:
        resolver = _in_process(self._provider)
        changed = resolver.evaluator.set_flags_and_get_changed_keys(json.dumps(document))
        self._provider.emit_provider_configuration_changed(
            ProviderEventDetails(
                flags_changed=changed, metadata=dict(resolver.evaluator.get_flag_set_metadata())
            )
        )


def _in_process(provider: FlagdProvider) -> InProcessResolver:
    resolver = provider.resolver
    if not isinstance(resolver, InProcessResolver):  # the provider changed its internals
        raise TypeError(f"expected the flagd in-process resolver, got {type(resolver).__name__}")
    return resolver


def source_fed_provider(source: FlagDocumentSource) -> FlagdProvider:
    """The flagd provider in in-process mode, its flags pushed by `source`."""
    # The placeholder path makes the provider build its in-process resolver without dialling a
    # sync server; the connector that would poll it is replaced before initialize() runs.
    provider = FlagdProvider(
        resolver_type=ResolverType.IN_PROCESS, offline_flag_source_path="unused-fed-by-source"
    )
    resolver = _in_process(provider)
    resolver.connector = _SourceConnector(provider, source)
    # The provider's only hook (SyncMetadataHook) copies context that a flagd sync server sends
    # along with flags; a source-fed provider never receives any, and the hook costs about 5 us
    # per evaluation on the decision hot path.
    provider.hooks = []
    return provider


def sync_provider(
    host: str, port: int, *, selector: str | None = None, deadline_ms: int = 2000
) -> FlagdProvider:
    """In-process evaluation syncing flags over flagd.sync.v1 from `host:port`."""
    return FlagdProvider(
        resolver_type=ResolverType.IN_PROCESS,
        host=host,
        port=port,
        selector=selector,
        deadline_ms=deadline_ms,
    )


def file_provider(path: str, *, poll_ms: int = 500) -> FlagdProvider:
    """In-process evaluation of one flagd file, re-read when its mtime changes."""
    return FlagdProvider(
        resolver_type=ResolverType.FILE, offline_flag_source_path=path, deadline_ms=poll_ms
    )


def rpc_provider(host: str, port: int) -> FlagdProvider:
    """Remote evaluation against a flagd evaluation service."""
    return FlagdProvider(resolver_type=ResolverType.RPC, host=host, port=port)
