"""Canonical CBOR (RFC 8949 length-first map keys, shortest floats) of JSON-like values.

flagd's v3 fractional bucketing hashes the canonical CBOR encoding of the bucketing key, as
openfeature-flagd-core 2.0.0 gets it from `cbor2.dumps(value, canonical=True)` after turning
whole floats into integers. This encoder writes the same bytes for every value a JSON document
or an evaluation context holds (None, bool, int of any size, float, str, list/tuple, dict), so
the project needs no cbor2; a golden test pins it against cbor2's own output.
"""

from __future__ import annotations

import math
import struct
from typing import Any

__all__ = ["UnencodableKey", "canonical_cbor", "head", "normalize_numbers"]

_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1
_BIG = 2**64


class UnencodableKey(ValueError):
    """The value has no CBOR encoding here (a lone surrogate, a date, a custom object)."""


def normalize_numbers(value: Any) -> Any:
    """Whole floats within [-2^63, 2^64 - 1] become ints, recursively (tuples become lists)."""
    if isinstance(value, dict):
        return {key: normalize_numbers(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [normalize_numbers(item) for item in value]
    if isinstance(value, float) and value.is_integer() and _INT64_MIN <= value <= _UINT64_MAX:
        return int(value)
    return value


def head(major: int, length: int) -> bytes:
    """The head of a CBOR data item: major type and length (or value), shortest form."""
    major <<= 5
    if length < 24:
        return bytes((major | length,))
    if length < 256:
        return struct.pack(">BB", major | 24, length)
    if length < 65536:
        return struct.pack(">BH", major | 25, length)
    if length < 4294967296:
        return struct.pack(">BL", major | 26, length)
    return struct.pack(">BQ", major | 27, length)


def _float(value: float) -> bytes:
    if math.isnan(value):
        return b"\xf9\x7e\x00"
    if math.isinf(value):
        return b"\xf9\x7c\x00" if value > 0 else b"\xf9\xfc\x00"
    encoded = struct.pack(">Bd", 0xFB, value)
    for form, tag in ((">Bf", 0xFA), (">Be", 0xF9)):
        try:
            shorter = struct.pack(form, tag, value)
        except OverflowError:
            break
        if struct.unpack(form, shorter)[1] != value:
            break
        encoded = shorter
    return encoded


def _int(value: int) -> bytes:
    if value >= _BIG or value < -_BIG:
        tag = 2 if value >= 0 else 3
        magnitude = value if value >= 0 else -value - 1
        payload = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "big")
        return head(6, tag) + head(2, len(payload)) + payload
    if value >= 0:
        return head(0, value)
    return head(1, -(value + 1))


def _encode(value: Any, out: list[bytes], depth: int) -> None:
    if depth > 512:
        raise UnencodableKey("the bucketing key nests too deeply")
    kind = type(value)
    if kind is str:
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UnencodableKey("the bucketing key is not valid Unicode") from exc
        out.append(head(3, len(data)))
        out.append(data)
    elif kind is bool:
        out.append(b"\xf5" if value else b"\xf4")
    elif kind is int:
        out.append(_int(value))
    elif kind is float:
        out.append(_float(value))
    elif value is None:
        out.append(b"\xf6")
    elif kind is list or kind is tuple:
        out.append(head(4, len(value)))
        for item in value:
            _encode(item, out, depth + 1)
    elif kind is dict:
        entries = []
        for key, item in value.items():
            encoded_key: list[bytes] = []
            _encode(key, encoded_key, depth + 1)
            key_bytes = b"".join(encoded_key)
            entries.append(((len(key_bytes), key_bytes), item))
        entries.sort(key=lambda entry: entry[0])
        out.append(head(5, len(entries)))
        for (_, key_bytes), item in entries:
            out.append(key_bytes)
            _encode(item, out, depth + 1)
    else:
        raise UnencodableKey(f"a bucketing key of type {kind.__name__} has no CBOR encoding here")


def canonical_cbor(value: Any) -> bytes:
    """The canonical CBOR bytes of `value` (call `normalize_numbers` first, as flagd does)."""
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)
