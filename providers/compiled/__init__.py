"""A compiled flagd evaluator: flag targeting compiled into closures once per flag-set version.

`CompiledFlagSet.evaluate(flag, targeting_key, attributes)` is the direct call (no OpenFeature
objects); `CompiledProvider` is the same evaluator as an OpenFeature provider fed by a
FlagDocumentSource. Answers equal the official flagd provider's (openfeature-flagd-core 1.0.0);
fractional bucketing follows the generation the flag set declares (v2 by default, or v3).
"""

from providers.compiled.bucketing import GENERATIONS, Generation, parse_generation
from providers.compiled.document import InvalidFlagSet
from providers.compiled.flagset import CompiledFlagSet
from providers.compiled.provider import CompiledProvider
from providers.compiled.resolution import Resolution

__all__ = [
    "GENERATIONS",
    "CompiledFlagSet",
    "CompiledProvider",
    "Generation",
    "InvalidFlagSet",
    "Resolution",
    "parse_generation",
]
