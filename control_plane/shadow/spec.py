"""What a routing variant declares about shadow traffic, and the checks that keep it sound.

A shadow is declared inside the routing variant whose requests it mirrors, next to `backend`
and `url` (flagd carries extra keys of object variants untouched; flag `metadata` cannot hold
it, since flagd allows only string, number and boolean metadata values):

    "stable": {"backend": "model-v1", "url": "http://127.0.0.1:9121",
               "shadows": [{"backend": "model-v3", "url": "http://127.0.0.1:9123",
                            "sample": 10}],
               "compare": {"ignoreFields": ["id"], "numberTolerance": 1e-6,
                           "redactFields": ["user.email"], "noiseSample": 20,
                           "noiseUrl": "http://127.0.0.1:9124"}}

`sample` is the percentage (0-100) of the variant's requests copied to that shadow.
`compare` (optional) applies to every shadow of the variant: `ignoreFields` are never compared,
`numberTolerance` is the absolute difference under which two numbers are equal (default 1e-9),
`redactFields` are replaced in diff examples, `noiseSample` is the percentage (default 10) of
mirrored requests also sent to the primary a second time (to `noiseUrl`, a second primary
instance, when given) for noise calibration. Field patterns are dotted paths with `[*]` or `*`
for any index or key (`choices[*].message.content`). `shadow_problems` says what is wrong;
`variant_shadows` parses a variant that has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.routing.backends import Backend, backend_problem

__all__ = [
    "COMPARE_KEY",
    "SHADOWS_KEY",
    "CompareRules",
    "ShadowTarget",
    "VariantShadows",
    "flag_shadows",
    "shadow_problems",
    "variant_shadows",
]

SHADOWS_KEY = "shadows"
COMPARE_KEY = "compare"
#: Shadows per variant: each one multiplies the variant's backend traffic.
MAX_SHADOWS = 4
MAX_FIELD_PATTERNS = 100
DEFAULT_TOLERANCE = 1e-9
DEFAULT_NOISE_SAMPLE = 10.0
_SHADOW_MEMBERS = frozenset({"backend", "url", "sample"})
_COMPARE_MEMBERS = frozenset(
    {"ignoreFields", "numberTolerance", "redactFields", "noiseSample", "noiseUrl"}
)


@dataclass(frozen=True, slots=True)
class ShadowTarget:
    """One candidate backend and the share of the variant's requests it gets a copy of."""

    backend: str
    url: str
    sample: float  # percent, 0-100


@dataclass(frozen=True, slots=True)
class CompareRules:
    ignore_fields: tuple[str, ...] = ()
    number_tolerance: float = DEFAULT_TOLERANCE
    redact_fields: tuple[str, ...] = ()
    noise_sample: float = DEFAULT_NOISE_SAMPLE
    noise_url: str | None = None


@dataclass(frozen=True, slots=True)
class VariantShadows:
    """A routing variant's shadows: the primary (the variant's own backend) and its copies."""

    flag: str
    variant: str
    primary: Backend
    targets: tuple[ShadowTarget, ...]
    compare: CompareRules


def _percent(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 100


def _patterns(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) <= MAX_FIELD_PATTERNS
        and all(isinstance(item, str) and 0 < len(item) <= 500 for item in value)
    )


def shadow_problems(variant: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """(path under the variant, message) for every problem of its `shadows` and `compare`."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    shadows = variant.get(SHADOWS_KEY)
    compare = variant.get(COMPARE_KEY)
    if shadows is None and compare is None:
        return problems
    if shadows is not None and not isinstance(shadows, list):
        problems.append(
            (
                (SHADOWS_KEY,),
                "'shadows' must be a list of "
                '{"backend": NAME, "url": URL, "sample": PERCENT} objects',
            )
        )
        shadows = []
    shadows = shadows or []
    if len(shadows) > MAX_SHADOWS:
        problems.append(
            (
                (SHADOWS_KEY,),
                f"at most {MAX_SHADOWS} shadows per variant (each "
                "one adds a backend call per sampled request)",
            )
        )
    seen: set[str] = set()
    for index, shadow in enumerate(shadows):
        where: tuple[str | int, ...] = (SHADOWS_KEY, index)
        if not isinstance(shadow, dict):
            problems.append(
                (where, 'a shadow must be {"backend": NAME, "url": URL, "sample": PERCENT}')
            )
            continue
        unknown = sorted(set(shadow) - _SHADOW_MEMBERS)
        if unknown:
            problems.append(
                (
                    (*where, unknown[0]),
                    f"unknown shadow member {unknown[0]!r}; a shadow has backend, url and sample",
                )
            )
        problem = backend_problem(shadow)
        if problem is not None:
            problems.append((where, f"shadow: {problem}"))
        elif shadow["url"].rstrip("/") == str(variant.get("url", "")).rstrip("/"):
            problems.append(
                (
                    (*where, "url"),
                    "the shadow's url is the variant's own URL; a shadow must be another backend",
                )
            )
        name = shadow.get("backend")
        if isinstance(name, str):
            if name in seen:
                problems.append(
                    (
                        (*where, "backend"),
                        f"backend {name!r} shadows this variant twice; declare it once",
                    )
                )
            seen.add(name)
        if not _percent(shadow.get("sample")):
            problems.append(
                (
                    (*where, "sample"),
                    "'sample' must be a number from 0 to 100 "
                    "(the percentage of this variant's requests copied)",
                )
            )
    if compare is not None:
        problems.extend(_compare_problems(compare))
    return problems


def _compare_problems(compare: Any) -> list[tuple[tuple[str | int, ...], str]]:
    if not isinstance(compare, dict):
        return [
            (
                (COMPARE_KEY,),
                "'compare' must be an object (ignoreFields, numberTolerance, "
                "redactFields, noiseSample, noiseUrl)",
            )
        ]
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for member in sorted(set(compare) - _COMPARE_MEMBERS):
        problems.append(
            (
                (COMPARE_KEY, member),
                f"unknown compare member {member!r}; the "
                f"members are {', '.join(sorted(_COMPARE_MEMBERS))}",
            )
        )
    for member in ("ignoreFields", "redactFields"):
        if member in compare and not _patterns(compare[member]):
            problems.append(
                (
                    (COMPARE_KEY, member),
                    f"{member!r} must be a list of at most "
                    f'{MAX_FIELD_PATTERNS} field paths such as "choices[*].id"',
                )
            )
    tolerance = compare.get("numberTolerance", DEFAULT_TOLERANCE)
    if (
        not isinstance(tolerance, (int, float))
        or isinstance(tolerance, bool)
        or not 0 <= tolerance < float("inf")
    ):
        problems.append(
            ((COMPARE_KEY, "numberTolerance"), "'numberTolerance' must be a non-negative number")
        )
    if "noiseSample" in compare and not _percent(compare["noiseSample"]):
        problems.append(
            (
                (COMPARE_KEY, "noiseSample"),
                "'noiseSample' must be a number from "
                "0 to 100 (the percentage of mirrored requests sent to the primary "
                "twice)",
            )
        )
    if "noiseUrl" in compare:
        problem = backend_problem({"backend": "noise", "url": compare["noiseUrl"]})
        if problem is not None:
            problems.append(((COMPARE_KEY, "noiseUrl"), f"noiseUrl: {problem}"))
    return problems


def variant_shadows(flag_key: str, variant: str, value: Mapping[str, Any]) -> VariantShadows | None:
    """The variant's shadows, or None when it declares none (or they are not valid)."""
    shadows = value.get(SHADOWS_KEY)
    if not shadows or shadow_problems(value) or backend_problem(value) is not None:
        return None
    compare = value.get(COMPARE_KEY) or {}
    noise_url = compare.get("noiseUrl")
    return VariantShadows(
        flag=flag_key,
        variant=variant,
        primary=Backend(value["backend"], value["url"].rstrip("/")),
        targets=tuple(
            ShadowTarget(item["backend"], item["url"].rstrip("/"), float(item["sample"]))
            for item in shadows
        ),
        compare=CompareRules(
            ignore_fields=tuple(compare.get("ignoreFields", ())),
            number_tolerance=float(compare.get("numberTolerance", DEFAULT_TOLERANCE)),
            redact_fields=tuple(compare.get("redactFields", ())),
            noise_sample=float(compare.get("noiseSample", DEFAULT_NOISE_SAMPLE)),
            noise_url=noise_url.rstrip("/") if isinstance(noise_url, str) else None,
        ),
    )


def flag_shadows(flag_key: str, flag: Mapping[str, Any]) -> dict[str, VariantShadows]:
    """variant -> its shadows, for the variants of `flag` that declare any."""
    variants = flag.get("variants")
    if not isinstance(variants, Mapping):
        return {}
    found: dict[str, VariantShadows] = {}
    for name, value in variants.items():
        if isinstance(value, Mapping):
            parsed = variant_shadows(flag_key, name, value)
            if parsed is not None:
                found[name] = parsed
    return found
