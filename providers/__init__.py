"""OpenFeature wiring: the flagd provider built for each flag source, and provider-level hooks."""

from providers.anonymous_logs import quiet_anonymous_fractional
from providers.compiled import CompiledFlagSet, CompiledProvider
from providers.flagd import file_provider, rpc_provider, source_fed_provider, sync_provider
from providers.flagset_source import FlagDocumentSource, StaticFlagSource

__all__ = [
    "CompiledFlagSet",
    "CompiledProvider",
    "FlagDocumentSource",
    "StaticFlagSource",
    "file_provider",
    "quiet_anonymous_fractional",
    "rpc_provider",
    "source_fed_provider",
    "sync_provider",
]
