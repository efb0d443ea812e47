"""OFREP evaluation without HTTP: parse a request, evaluate, and shape OFREP response bodies.

How a flag is evaluated, and why at this level. OFREP has no flag type in the request or the
response (OFREP ADR 0003): the server answers a flag's value whatever its type. flagd's own
OFREP handler calls its evaluator's "resolve as any value". Our choices were:

- `FlagdCore._resolve(key, default, ctx, flag_type=None)`: untyped, but private API, and it
  bypasses the OpenFeature client, so its hooks (metrics, evaluation log) would not see OFREP
  evaluations;
- the client's `get_object_details` for every flag: trips the SDK's and flagd-core's type checks
  (`TYPE_MISMATCH` for a boolean flag);
- the client's typed evaluation, with the type each flag declares through its variants (flagd's
  schema makes a flag's variants all booleans, strings, numbers or objects).

We take the third: the same client, provider, evaluator and hooks as the routing API, so OFREP
and `/v1/decide` can never disagree, and float flags come back as floats exactly as a typed SDK
sees them. The type is read from the store's current flag set while the evaluator may, for the
microseconds of a swap, still hold the previous set; a `TYPE_MISMATCH` can only come from such
a race (never from a valid flag), so it is retried once. A bulk answer is checked to come from
one flag set version (every evaluation reports `flagSetVersion` in its metadata) and is
re-evaluated otherwise, so no answer mixes two versions.

A successful evaluation without a variant (flag disabled, or no default variant) means "use the
code default" (OFREP ADR 0006): `value` and `variant` are left out (the schema's `variant` is a
string, never null). openfeature-provider-ofrep (Python, 0.3.0) reads `data["variant"]`
unconditionally, so it reports such an answer as a GENERAL error with the code default: the
same value. Reasons keep to OFREP's list (STATIC, TARGETING_MATCH, SPLIT, DISABLED, UNKNOWN):
flagd's DEFAULT (targeting matched nothing, the default variant serves) is sent as STATIC.

Evaluation metadata is the flag's own merged with its file's, exactly as flagd reports it; the
version stamp our evaluator adds (flagset.VERSION_KEY) is read and removed here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagEvaluationDetails, FlagType, FlagValueType

from control_plane.errors import BadRequestInput, ControlPlaneError
from control_plane.flagstore import FlagSet, FlagStore
from control_plane.flagstore.flagset import VERSION_KEY
from control_plane.json_input import loads_checked

__all__ = [
    "OFREP_REASONS",
    "Evaluation",
    "OfrepEvaluator",
    "OfrepRequestError",
    "flag_type",
    "parse_evaluation_request",
]

log = logging.getLogger(__name__)

#: Error codes OFREP's failure bodies allow (400s, and 404 FLAG_NOT_FOUND); anything else, such
#: as TYPE_MISMATCH (see above), is reported as GENERAL.
_WIRE_ERROR_CODES = frozenset(
    {
        ErrorCode.PARSE_ERROR,
        ErrorCode.TARGETING_KEY_MISSING,
        ErrorCode.INVALID_CONTEXT,
        ErrorCode.GENERAL,
        ErrorCode.FLAG_NOT_FOUND,
    }
)

#: The reasons OFREP's evaluationSuccess lists; others are mapped (see the module docstring).
OFREP_REASONS = ("STATIC", "TARGETING_MATCH", "SPLIT", "DISABLED", "UNKNOWN")
_REASON_MAP = {"DEFAULT": "STATIC", "CACHED": "STATIC"}

_PLACEHOLDER_DEFAULTS: dict[FlagType, FlagValueType] = {
    FlagType.BOOLEAN: False,
    FlagType.STRING: "",
    FlagType.INTEGER: 0,
    FlagType.FLOAT: 0.0,
    FlagType.OBJECT: {},
}

#: Attempts to get a bulk answer from one flag set version. Reloads come at most every
#: `reload_interval` (0.2 s) in service, so the second attempt succeeds; the bound only matters
#: under back-to-back reloads (a test does that), where each attempt still has a fair chance.
_BULK_ATTEMPTS = 50


class OfrepRequestError(ControlPlaneError):
    """The OFREP request body is unusable; `error_code` is the OFREP code to answer with."""

    title = "Invalid OFREP request"

    def __init__(self, error_code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.error_code = error_code


def parse_evaluation_request(body: bytes) -> EvaluationContext:
    """The evaluation context of an OFREP request body (`{"context": {...}}`; empty is fine)."""
    if not body.strip():
        return EvaluationContext()
    try:
        # Checked as every request body is: UTF-8, depth, no lone surrogates or control
        # characters in any string (a surrogate in a targeting key crashed mmh3).
        data = loads_checked(body, source="body")
    except BadRequestInput as exc:
        code = (
            ErrorCode.INVALID_CONTEXT if exc.source.startswith("body.") else ErrorCode.PARSE_ERROR
        )
        raise OfrepRequestError(code, exc.detail) from None
    if not isinstance(data, dict):
        raise OfrepRequestError(
            ErrorCode.INVALID_CONTEXT,
            f'request body must be a JSON object like {{"context": {{...}}}}, '
            f"got {_json_type(data)}",
        )
    context = data.get("context")
    if context is None:
        return EvaluationContext()
    if not isinstance(context, dict):
        raise OfrepRequestError(
            ErrorCode.INVALID_CONTEXT, f"`context` must be a JSON object, got {_json_type(context)}"
        )
    attributes = dict(context)
    targeting_key = attributes.pop("targetingKey", None)
    if targeting_key is not None and not isinstance(targeting_key, str):
        raise OfrepRequestError(
            ErrorCode.INVALID_CONTEXT,
            f"`context.targetingKey` must be a string, got {_json_type(targeting_key)}",
        )
    return EvaluationContext(targeting_key=targeting_key, attributes=attributes)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def flag_type(definition: Mapping[str, Any] | None) -> FlagType:
    """The OpenFeature type a flag's variants declare (numbers: INTEGER only if all are ints)."""
    variants = definition.get("variants") if definition else None
    values = list(variants.values()) if isinstance(variants, Mapping) else []
    if not values:
        return FlagType.OBJECT
    if all(isinstance(value, bool) for value in values):
        return FlagType.BOOLEAN
    if all(isinstance(value, str) for value in values):
        return FlagType.STRING
    if all(isinstance(value, int | float) and not isinstance(value, bool) for value in values):
        if all(isinstance(value, int) for value in values):
            return FlagType.INTEGER
        return FlagType.FLOAT
    return FlagType.OBJECT


@dataclass(frozen=True)
class Evaluation:
    """One flag's evaluation, as OFREP reports it."""

    key: str
    details: FlagEvaluationDetails[Any]

    @property
    def version(self) -> int | None:
        """The flag set version that answered (our evaluator stamps it), if known."""
        found = (self.details.flag_metadata or {}).get(VERSION_KEY)
        return found if isinstance(found, int) else None

    @property
    def metadata(self) -> dict[str, Any]:
        """The evaluation's metadata as flagd reports it (our version stamp removed)."""
        return {
            key: value
            for key, value in (self.details.flag_metadata or {}).items()
            if key != VERSION_KEY
        }

    @property
    def error_code(self) -> ErrorCode | None:
        code = self.details.error_code
        if code is None:
            return None
        try:
            return ErrorCode(code)
        except ValueError:  # a provider's own code: OFREP only knows OpenFeature's
            return ErrorCode.GENERAL

    @property
    def status(self) -> int:
        """The HTTP status of a single-flag answer."""
        code = self.error_code
        if code is None:
            return 200
        if code == ErrorCode.FLAG_NOT_FOUND:
            return 404
        if code == ErrorCode.PROVIDER_NOT_READY:
            return 500
        if code == ErrorCode.PROVIDER_FATAL:
            return 500
        return 400

    def body(self) -> dict[str, Any]:
        """evaluationSuccess, evaluationFailure or flagNotFound, per the OFREP OpenAPI spec."""
        details = self.details
        metadata = self.metadata
        code = self.error_code
        if code is not None:
            wire_code = code if code in _WIRE_ERROR_CODES else ErrorCode.GENERAL
            failure: dict[str, Any] = {
                "key": self.key,
                "errorCode": str(wire_code),
                "errorDetails": details.error_message or f"evaluation failed: {code}",
            }
            if metadata:
                failure["metadata"] = metadata
            return failure
        success: dict[str, Any] = {"key": self.key}
        if details.variant is not None:
            success["value"] = details.value
        # else: the code default (see the module docstring); the caller's default applies.
        reason = str(details.reason or "UNKNOWN")
        reason = _REASON_MAP.get(reason, reason)
        success["reason"] = reason if reason in OFREP_REASONS else "UNKNOWN"
        if details.variant is not None:
            success["variant"] = details.variant
        success["metadata"] = metadata
        return success


class OfrepEvaluator:
    """Evaluates flags for OFREP through an OpenFeature client bound to the store's flags."""

    def __init__(self, client: OpenFeatureClient, store: FlagStore) -> None:
        self._client = client
        self._store = store

    def evaluate(self, key: str, context: EvaluationContext) -> Evaluation:
        """One flag. Raises FlagsNotLoaded when the store has no flag set yet."""
        return self.evaluate_at(key, context)[1]

    def evaluate_at(self, key: str, context: EvaluationContext) -> tuple[FlagSet, Evaluation]:
        """One flag, and the flag set that answered it (the store's, if the answer is not
        stamped). Raises FlagsNotLoaded when the store has no flag set yet."""
        flag_set = self._store.current
        details = self._evaluate(key, flag_set, context)
        if details.error_code == ErrorCode.TYPE_MISMATCH:
            flag_set = self._store.current
            details = self._evaluate(key, flag_set, context)  # see module docstring
        evaluation = Evaluation(key=key, details=details)
        if evaluation.version is not None and evaluation.version != flag_set.version:
            latest = self._store.current
            if latest.version == evaluation.version:
                flag_set = latest
        return flag_set, evaluation

    def evaluate_all(self, context: EvaluationContext) -> tuple[FlagSet, list[Evaluation]]:
        """Every flag of one flag set version, in key order (flags of no version are left out).

        Raises FlagsNotLoaded when the store has no flag set yet.
        """
        for _attempt in range(_BULK_ATTEMPTS):
            flag_set = self._store.current
            evaluations = [
                Evaluation(key=key, details=self._evaluate(key, flag_set, context))
                for key in sorted(flag_set.flags)
            ]
            if all(self._from_version(evaluation, flag_set) for evaluation in evaluations):
                break
            time.sleep(0.001)  # a swap happened mid-way; let the provider take the new set
        else:
            log.warning(
                "bulk evaluation straddled flag set swaps %d times in a row; "
                "answering the last attempt",
                _BULK_ATTEMPTS,
            )
        return flag_set, [
            evaluation
            for evaluation in evaluations
            if evaluation.error_code != ErrorCode.FLAG_NOT_FOUND
        ]

    @staticmethod
    def _from_version(evaluation: Evaluation, flag_set: FlagSet) -> bool:
        code = evaluation.error_code
        if code in (ErrorCode.FLAG_NOT_FOUND, ErrorCode.TYPE_MISMATCH):
            return False  # the evaluator holds another version of this flag
        reported = evaluation.version
        return reported is None or reported == flag_set.version

    def _evaluate(
        self, key: str, flag_set: FlagSet, context: EvaluationContext
    ) -> FlagEvaluationDetails[Any]:
        kind = flag_type(flag_set.flags.get(key))
        return self._client.evaluate_flag_details(kind, key, _PLACEHOLDER_DEFAULTS[kind], context)
