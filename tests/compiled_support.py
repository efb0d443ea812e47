"""Run the official flagd provider and the compiled evaluator side by side on the same inputs.

Answers are compared as (value, variant, reason, error code, error message, metadata) tuples,
values by repr so 1, 1.0 and True differ. The official provider raises for errors; it is read
the way the OpenFeature client reads it (the error's code and message, the caller's default, no
variant, no metadata), which is what the compiled provider returns without raising.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from typing import Any

from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.resolvers.in_process import InProcessResolver
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import OpenFeatureError

from providers import StaticFlagSource, source_fed_provider
from providers.compiled import CompiledFlagSet, CompiledProvider, Resolution

Answer = tuple[str, Any, str, Any, Any, str]

FLAG_TYPES = ("boolean", "string", "integer", "float", "object")
DEFAULTS: dict[str, Any] = {
    "boolean": False,
    "string": "dflt",
    "integer": 7,
    "float": 0.25,
    "object": {"dflt": True},
}


#: `$flagd.timestamp` as it shows in a message or value that quotes the evaluation data: the
#: two evaluators of a pair read the clock apart, sometimes a second apart on a slow machine.
_TIMESTAMP = re.compile(r"('timestamp': )\d+")


def _clockless(text: Any) -> Any:
    return _TIMESTAMP.sub(r"\1<now>", text) if isinstance(text, str) else text


def answer(
    value: Any,
    variant: Any,
    reason: Any,
    code: Any,
    message: Any,
    metadata: Mapping[str, Any] | None,
) -> Answer:
    return (
        _clockless(repr(value)),
        variant,
        str(reason),
        None if code is None else str(code),
        _clockless(message),
        repr(sorted((metadata or {}).items())),
    )


def from_resolution(resolution: Resolution) -> Answer:
    return answer(
        resolution.value,
        resolution.variant,
        resolution.reason,
        resolution.error_code,
        resolution.error_message,
        resolution.metadata,
    )


class Pair:
    """The official provider and the compiled one, both fed `document`."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.source = StaticFlagSource(document)
        self.official: FlagdProvider = source_fed_provider(self.source)
        self.official.initialize(EvaluationContext())
        self.compiled = CompiledProvider(self.source)
        self.compiled.initialize(EvaluationContext())

    @property
    def flag_set(self) -> CompiledFlagSet:
        return self.compiled.flag_set

    def official_typed(
        self, flag_type: str, key: str, default: Any, context: EvaluationContext
    ) -> Answer:
        method = getattr(self.official, f"resolve_{flag_type}_details")
        try:
            details = method(key, default, context)
        except OpenFeatureError as exc:
            return answer(default, None, "ERROR", exc.error_code, exc.error_message, None)
        except Exception as exc:  # the OpenFeature client reports these as GENERAL
            return answer(
                default, None, "ERROR", "GENERAL", getattr(exc, "error_message", str(exc)), None
            )
        return answer(
            details.value,
            details.variant,
            details.reason,
            details.error_code,
            details.error_message,
            details.flag_metadata,
        )

    def compiled_typed(
        self, flag_type: str, key: str, default: Any, context: EvaluationContext
    ) -> Answer:
        details = getattr(self.compiled, f"resolve_{flag_type}_details")(key, default, context)
        return answer(
            details.value,
            details.variant,
            details.reason,
            details.error_code,
            details.error_message,
            details.flag_metadata,
        )

    def official_untyped(self, key: str, default: Any, context: EvaluationContext) -> Answer:
        resolver = self.official.resolver
        assert isinstance(resolver, InProcessResolver)
        try:
            details = resolver.evaluator._resolve(key, default, context, None)
        except OpenFeatureError as exc:
            return answer(default, None, "ERROR", exc.error_code, exc.error_message, None)
        except Exception as exc:
            return answer(default, None, "ERROR", "GENERAL", str(exc), None)
        return answer(
            details.value,
            details.variant,
            details.reason,
            details.error_code,
            details.error_message,
            details.flag_metadata,
        )

    def compiled_direct(self, key: str, default: Any, context: EvaluationContext) -> Answer:
        return from_resolution(
            self.flag_set.evaluate(key, context.targeting_key, context.attributes, default)
        )

    def mismatches(
        self,
        keys: Iterable[str],
        contexts: Iterable[EvaluationContext],
        flag_types: Iterable[str] = FLAG_TYPES,
        limit: int = 5,
    ) -> tuple[int, list[str]]:
        """(evaluations compared, the first `limit` differences) over every combination."""
        count, found = 0, []
        for key, context, flag_type in itertools.product(
            list(keys), list(contexts), list(flag_types)
        ):
            default = DEFAULTS[flag_type]
            pairs = [
                (
                    self.official_typed(flag_type, key, default, context),
                    self.compiled_typed(flag_type, key, default, context),
                )
            ]
            if flag_type == "object":
                pairs.append(
                    (
                        self.official_untyped(key, None, context),
                        self.compiled_direct(key, None, context),
                    )
                )
            for official, compiled in pairs:
                count += 1
                if official != compiled and len(found) < limit:
                    found.append(
                        f"{key} {flag_type} {context.targeting_key!r} "
                        f"{context.attributes}:\n  official {official}\n"
                        f"  compiled {compiled}"
                    )
        return count, found

    def close(self) -> None:
        self.official.shutdown()
        self.compiled.shutdown()
