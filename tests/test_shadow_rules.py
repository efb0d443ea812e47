"""Shadow declarations are validated like any flag member (file, line, what to change), and the
diff engine compares the way the report says (tolerance, arrays by index, ignore, text)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from control_plane.flagstore.validate import validate_contents
from control_plane.shadow.diff import Answer, diff_answers, diff_json
from control_plane.shadow.fields import Patterns
from control_plane.shadow.noise import is_noisy
from control_plane.shadow.spec import flag_shadows


def _file(stable_extra: dict[str, Any]) -> bytes:
    stable = {"backend": "model-v1", "url": "http://127.0.0.1:9121", **stable_extra}
    flag = {"state": "ENABLED", "variants": {"stable": stable}, "defaultVariant": "stable"}
    return json.dumps({"flags": {"router": flag}}, indent=2).encode()


GOOD = {"backend": "model-v3", "url": "http://127.0.0.1:9123", "sample": 10}


@pytest.mark.parametrize(
    ("extra", "path", "words"),
    [
        ({"shadows": {"backend": "x"}}, "$.flags.router.variants.stable.shadows", "must be a list"),
        (
            {"shadows": [{**GOOD, "url": "ftp://x"}]},
            "$.flags.router.variants.stable.shadows[0]",
            "http:// or https://",
        ),
        (
            {"shadows": [{**GOOD, "sample": 101}]},
            "$.flags.router.variants.stable.shadows[0].sample",
            "from 0 to 100",
        ),
        (
            {"shadows": [{**GOOD, "sample": True}]},
            "$.flags.router.variants.stable.shadows[0].sample",
            "from 0 to 100",
        ),
        ({"shadows": [GOOD, GOOD]}, "$.flags.router.variants.stable.shadows[1].backend", "twice"),
        (
            {"shadows": [{**GOOD, "url": "http://127.0.0.1:9121"}]},
            "$.flags.router.variants.stable.shadows[0].url",
            "variant's own URL",
        ),
        (
            {"shadows": [{**GOOD, "weight": 1}]},
            "$.flags.router.variants.stable.shadows[0].weight",
            "unknown shadow member",
        ),
        (
            {"shadows": [GOOD], "compare": {"numberTolerance": -1}},
            "$.flags.router.variants.stable.compare.numberTolerance",
            "non-negative",
        ),
        (
            {"shadows": [GOOD], "compare": {"ignoreFields": "id"}},
            "$.flags.router.variants.stable.compare.ignoreFields",
            "list",
        ),
        (
            {"shadows": [GOOD], "compare": {"noiseUrl": "nope"}},
            "$.flags.router.variants.stable.compare.noiseUrl",
            "noiseUrl",
        ),
    ],
)
def test_bad_shadow_is_refused_with_path_line_and_reason(
    extra: dict[str, Any], path: str, words: str
) -> None:
    """Each malformed shadow declaration is an error at its JSON path, with a line number."""
    result = validate_contents({"shadow.flagd.json": _file(extra)})
    assert not result.ok
    issue = next(i for i in result.errors if i.path == path)
    assert words in issue.message
    assert issue.file == "shadow.flagd.json"
    assert issue.line is not None


def test_valid_shadow_is_accepted_and_parsed() -> None:
    """A valid declaration passes and parses into the plan the mirror uses."""
    extra = {"shadows": [GOOD], "compare": {"ignoreFields": ["id"], "noiseSample": 20}}
    result = validate_contents({"shadow.flagd.json": _file(extra)})
    assert result.ok, result.errors
    plan = flag_shadows("router", result.flags["router"])["stable"]
    assert plan.primary.name == "model-v1"
    assert [(t.backend, t.sample) for t in plan.targets] == [("model-v3", 10.0)]
    assert plan.compare.ignore_fields == ("id",)
    assert plan.compare.noise_sample == 20


def test_json_diff_rules() -> None:
    """Numbers within the tolerance are equal, arrays compare by index, booleans are not
    numbers, ignored subtrees are skipped and a missing key is one difference."""
    a = {"n": 1.0, "xs": [1, 2, 3], "flag": True, "meta": {"t": 1, "u": 2}, "gone": 1}
    b = {"n": 1.0 + 1e-9, "xs": [1, 3], "flag": 1, "meta": {"t": 9, "u": 9}}
    found = diff_json(a, b, tolerance=1e-6, ignore=Patterns(["meta.t"]))
    assert set(found) == {"xs[1]", "xs[2]", "flag", "meta.u", "gone"}
    assert (
        diff_json(
            [{"id": 1}, {"id": 2}], [{"id": 5}, {"id": 6}], tolerance=0, ignore=Patterns(["[*].id"])
        )
        == {}
    )


def test_text_bodies_compare_as_one_field() -> None:
    """Non-JSON answers are equal or differ as the one field $body."""
    same = diff_answers(
        Answer(200, 0.1, b"hello"), Answer(200, 0.1, b"hello"), tolerance=0, ignore=Patterns(())
    )
    other = diff_answers(
        Answer(200, 0.1, b"hello"), Answer(200, 0.1, b"bye"), tolerance=0, ignore=Patterns(())
    )
    assert (same.mode, same.fields) == ("text", {})
    assert list(other.fields) == ["$body"]


def test_noise_rule_follows_diffy_thresholds() -> None:
    """A field is noise when two primaries differ on it about as often as the candidate does."""
    assert is_noisy(1.0, 1.0, 10)
    assert is_noisy(0.5, 0.45, 9)
    assert not is_noisy(1.0, 0.0, 0)
    assert not is_noisy(1.0, 0.1, 1)
