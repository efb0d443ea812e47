"""`CompiledProvider`: the compiled evaluator as an OpenFeature provider, fed by a flag source.

A drop-in for `providers.source_fed_provider(source)` (the official flagd provider in in-process
mode): it subscribes to the same FlagDocumentSource, compiles each document it is sent (keeping
the previous flag set when one is refused, as flagd-core does) and answers every resolve_* call
as flagd-core 1.0.0 does, TYPE_MISMATCH included. Errors come back as resolution details with an
error code instead of exceptions; the OpenFeature client reports both the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType, Reason
from openfeature.provider import AbstractProvider
from openfeature.provider.metadata import Metadata

from providers.compiled.document import InvalidFlagSet
from providers.compiled.flagset import CompiledFlagSet
from providers.compiled.resolution import DEFAULT, DISABLED, TYPE_MISMATCH, Resolution
from providers.flagset_source import FlagDocumentSource

__all__ = ["CompiledProvider"]

log = logging.getLogger(__name__)

_REASONS = {reason.value: reason for reason in Reason}
_ERRORS = {code.value: code for code in ErrorCode}
_EMPTY: dict[str, Any] = {}

#: flagd-core's type check per resolve method: accepted types, name in the message.
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "boolean": ((bool,), "bool"),
    "string": ((str,), "str"),
    "integer": ((int,), "int"),
    "float": ((int, float), "float"),
    "object": ((dict, list), "dict or list"),
}


def _mismatch(flag_type: str, value: Any) -> bool:
    if flag_type == "boolean" and isinstance(value, int) and not isinstance(value, bool):
        return True
    if flag_type == "integer" and isinstance(value, bool):
        return True
    return not isinstance(value, _TYPES[flag_type][0])


def _details(answer: Resolution, default: Any, flag_type: str) -> FlagResolutionDetails[Any]:
    if answer.error_code is not None:
        return FlagResolutionDetails(
            default,
            error_code=_ERRORS[answer.error_code],
            error_message=answer.error_message,
            reason=Reason.ERROR,
        )
    value = answer.value
    checked = not (
        answer.reason == DISABLED or (answer.reason == DEFAULT and answer.variant is None)
    )
    if checked and _mismatch(flag_type, value):
        message = f"Expected type {_TYPES[flag_type][1]} but got {type(value).__name__}"
        return FlagResolutionDetails(
            default, error_code=_ERRORS[TYPE_MISMATCH], error_message=message, reason=Reason.ERROR
        )
    if flag_type == "float" and isinstance(value, int):
        value = float(value)
    return FlagResolutionDetails(
        value,
        variant=answer.variant,
        reason=_REASONS[answer.reason],
        flag_metadata=dict(answer.metadata),
    )


class CompiledProvider(AbstractProvider):
    """OpenFeature provider over CompiledFlagSet, its documents pushed by `source`."""

    def __init__(self, source: FlagDocumentSource | None = None) -> None:
        super().__init__()
        self._source = source
        self._unsubscribe: Callable[[], None] | None = None
        self.flag_set = CompiledFlagSet.from_document({"flags": {}})

    # -- lifecycle -----------------------------------------------------------------------

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        # A source with no document yet is not an error: flags are FLAG_NOT_FOUND until one
        # arrives, as with the flagd provider this replaces.
        if self._source is not None and self._unsubscribe is None:
            self._unsubscribe = self._source.subscribe_documents(self.update)

    def shutdown(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def update(self, document: Mapping[str, Any]) -> None:
        """Compile and swap in `document`; a refused one is logged and the current set stays."""
        previous = self.flag_set
        try:
            flag_set = CompiledFlagSet.shared(document, previous)
        except InvalidFlagSet as exc:
            log.warning("flag configuration refused, the previous one keeps serving: %s", exc)
            return
        self.flag_set = flag_set
        self.emit_provider_configuration_changed(
            ProviderEventDetails(
                flags_changed=flag_set.changed_keys(previous), metadata=dict(flag_set.metadata)
            )
        )

    def get_metadata(self) -> Metadata:
        return Metadata(name="CompiledFlagdProvider")

    # -- resolving -----------------------------------------------------------------------

    def _resolve(
        self, flag_type: str, flag_key: str, default: Any, context: EvaluationContext | None
    ) -> FlagResolutionDetails[Any]:
        if context is None:
            answer = self.flag_set.evaluate(flag_key, None, _EMPTY, default)
        else:
            answer = self.flag_set.evaluate(
                flag_key, context.targeting_key, context.attributes, default
            )
        return _details(answer, default, flag_type)

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        return self._resolve("boolean", flag_key, default_value, evaluation_context)

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        return self._resolve("string", flag_key, default_value, evaluation_context)

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        return self._resolve("integer", flag_key, default_value, evaluation_context)

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        return self._resolve("float", flag_key, default_value, evaluation_context)

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        return self._resolve("object", flag_key, default_value, evaluation_context)
