"""flagd's `fractional` operator in its two current bucketing generations, v2 and v3.

- v2 (openfeature-flagd-core 1.x, flagd Go >= 0.15, @openfeature/flagd-core 4.0.1): the key is
  the bucket-by string, or `flagKey + targetingKey` for the shorthand;
  bucket = (murmur3_x86_32(utf8(key), seed 0, unsigned) * totalWeight) >> 32.
- v3 (openfeature-flagd-core 2.0.0, pulled in by openfeature-provider-flagd 0.6.x): the same
  over the canonical CBOR encoding of the key (`[flagKey, targetingKey]` for the shorthand); any
  non-list first argument is a bucket-by value, and a zero total weight matches nothing.

The first variant whose cumulative weight exceeds the bucket wins. Weights are ints (not bools),
negative ones count as 0, and a total above MaxInt32 matches nothing. Everything that matches
nothing returns None, which the flag resolves to its default variant, as flagd does.

mmh3 5.3.1 crashes the interpreter on a str holding a lone surrogate, so keys are encoded here
first: a v2 key that is not valid Unicode raises UnencodableKey (the evaluation resolves to an
error, never a crash); v3 treats it as flagd-core 2.0.0 treats any unencodable key (None).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import mmh3

from providers.compiled.cbor import UnencodableKey, canonical_cbor, normalize_numbers

__all__ = [
    "GENERATIONS",
    "MAX_WEIGHT_SUM",
    "Generation",
    "UnencodableKey",
    "fractional",
    "fractional_operator",
    "hash_v2",
    "hash_v3",
    "parse_generation",
    "pick",
]

Generation = Literal["v2", "v3"]
GENERATIONS: tuple[Generation, ...] = ("v2", "v3")
MAX_WEIGHT_SUM = 2_147_483_647  # MaxInt32

#: How a flag set may name its generation in its metadata (`bucketing`).
_NAMES: dict[str, Generation] = {
    "v2": "v2",
    "flagd-fractional-v2": "v2",
    "v3": "v3",
    "flagd-fractional-v3": "v3",
}


def parse_generation(declared: Any) -> Generation:
    """The generation a flag set declares (`metadata.bucketing`); absent means v2 (today's)."""
    if declared is None:
        return "v2"
    generation = _NAMES.get(declared) if isinstance(declared, str) else None
    if generation is None:
        names = ", ".join(sorted(_NAMES))
        raise ValueError(f"unknown bucketing generation {declared!r} (known: {names})")
    return generation


def hash_v2(key: str) -> int:
    """murmur3_x86_32 of the key's UTF-8 bytes, seed 0, unsigned."""
    try:
        data = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnencodableKey("the fractional bucketing key is not valid Unicode") from exc
    return mmh3.hash(data, 0, False)  # positional: keyword parsing cost 40 ns of 100


def hash_v3(key: Any) -> int | None:
    """murmur3_x86_32 of the key's canonical CBOR encoding; None when it has none."""
    try:
        data = canonical_cbor(normalize_numbers(key))
    except (UnencodableKey, RecursionError):
        return None
    return mmh3.hash(data, 0, False)


def pick(hash_value: int, fractions: Sequence[Any], generation: Generation) -> Any:
    """The variant of the bucket `hash_value` falls in, by the (already evaluated) fractions."""
    variants: list[Any] = []
    weights: list[int] = []
    for fraction in fractions:
        if not isinstance(fraction, list | tuple) or not fraction or len(fraction) > 2:
            return None
        weight = 1
        if len(fraction) == 2:
            raw = fraction[1]
            if isinstance(raw, bool) or not isinstance(raw, int):
                return None
            weight = max(0, raw)
        variants.append(fraction[0])
        weights.append(weight)
    total = sum(weights)
    if total > MAX_WEIGHT_SUM or (generation == "v3" and total <= 0):
        return None
    bucket = (hash_value * total) >> 32
    end = 0
    for variant, weight in zip(variants, weights, strict=True):
        end += weight
        if bucket < end:
            return variant
    return None


def fractional(
    generation: Generation, flag_key: Any, targeting_key: Any, args: Sequence[Any]
) -> Any:
    """`{"fractional": args}` (args evaluated) for a flag and targeting key."""
    if not args:
        return None
    first = args[0]
    if generation == "v2":
        if isinstance(first, str):
            key, fractions = first, args[1:]
        else:
            if not targeting_key:
                return None
            key, fractions = flag_key + targeting_key, args
        if not key:
            return None
        return pick(hash_v2(key), fractions, "v2")
    if not isinstance(first, list | tuple):
        bucket_by, fractions = first, args[1:]
    else:
        if not isinstance(targeting_key, str) or not targeting_key:
            return None
        bucket_by, fractions = [flag_key, targeting_key], args
    if bucket_by is None:
        return None
    hash_value = hash_v3(bucket_by)
    if hash_value is None:
        return None
    return pick(hash_value, fractions, "v3")


def fractional_operator(generation: Generation) -> Any:
    """`fractional` as a panzi-json-logic operation (data, *args), for interpreted rules."""

    def operation(data: Any, *args: Any) -> Any:
        if not args:
            return None
        shorthand = (
            not isinstance(args[0], str)
            if generation == "v2"
            else isinstance(args[0], list | tuple)
        )
        if not shorthand:
            return fractional(generation, "", None, args)
        if generation == "v2":  # flagd-core 1.x reads the flag key first, 2.0.0 the targeting key
            flag_key = data.get("$flagd", {}).get("flagKey", "")
            targeting_key = data.get("targetingKey")
        else:
            targeting_key = data.get("targetingKey")
            if not isinstance(targeting_key, str) or not targeting_key:
                return None
            flag_key = data.get("$flagd", {}).get("flagKey", "")
        return fractional(generation, flag_key, targeting_key, args)

    return operation
