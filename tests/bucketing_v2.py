"""An independent model of flagd's "v2" fractional bucketing, to pin what our evaluator does.

v2 (openfeature-flagd-core 1.x, flagd Go >= 0.15, @openfeature/flagd-core 4.0.1):
bucket = (murmur3_x86_32(utf8(flagKey + targetingKey), seed 0, unsigned) * totalWeight) >> 32,
then the first variant whose cumulative weight exceeds the bucket wins.
"""

from __future__ import annotations

__all__ = ["murmur3_x86_32", "v2_variant"]

_C1, _C2, _MASK = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF


def _rotl(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (32 - shift))) & _MASK


def murmur3_x86_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86 32-bit, unsigned result (public-domain algorithm by Austin Appleby)."""
    h = seed & _MASK
    blocks = len(data) // 4
    for index in range(blocks):
        k = int.from_bytes(data[index * 4 : index * 4 + 4], "little")
        k = _rotl((k * _C1) & _MASK, 15)
        h ^= (k * _C2) & _MASK
        h = (_rotl(h, 13) * 5 + 0xE6546B64) & _MASK
    tail = data[blocks * 4 :]
    k = 0
    for shift, byte in enumerate(tail):
        k |= byte << (8 * shift)
    if tail:
        k = _rotl((k * _C1) & _MASK, 15)
        h ^= (k * _C2) & _MASK
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    h ^= h >> 16
    return h


def v2_variant(flag_key: str, targeting_key: str, buckets: list[tuple[str, int]]) -> str:
    total = sum(weight for _, weight in buckets)
    point = (murmur3_x86_32((flag_key + targeting_key).encode()) * total) >> 32
    cumulative = 0
    for variant, weight in buckets:
        cumulative += weight
        if point < cumulative:
            return variant
    raise AssertionError("unreachable: the point is below the total weight")
