"""The validator against the official flagd schema (issue 14 item 5), on the shipped copy.

Everything the official schema refuses is refused by ours; what it accepts and ours refuses is
refused by a listed semantic rule (see DESIGN/compatibility notes), never by accident.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from control_plane.flagstore import validate_contents

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema runs the official schema")
referencing = pytest.importorskip("referencing")
pytest.importorskip("referencing.jsonschema")

SCHEMAS = Path(__file__).resolve().parent / "fixtures" / "flagd-schemas"


def _validator() -> Any:
    resources = []
    for name in ("flags.json", "targeting.json"):
        contents = json.loads((SCHEMAS / name).read_text())
        resources.append(
            (
                contents["$id"],
                referencing.Resource.from_contents(
                    contents, default_specification=referencing.jsonschema.DRAFT7
                ),
            )
        )
    registry = referencing.Registry().with_resources(resources)
    # flags.json's root is a $ref, beside which draft 7 ignores its $id: refer to it by URI.
    return jsonschema.Draft7Validator({"$ref": resources[0][0]}, registry=registry)


OFFICIAL = _validator()
#: Documents declaring flagd's daemon schema (flagd.json) may list flags as an array.
DAEMON = jsonschema.Draft7Validator(
    {"$ref": "https://flagd.dev/schema/v0/flags.json#/definitions/flagdConfig"},
    registry=OFFICIAL._registry,
)


def _official_accepts(document: Any) -> bool:
    schema = document.get("$schema", "") if isinstance(document, dict) else ""
    daemon = isinstance(schema, str) and schema.rstrip("/").endswith("flagd.json")
    return bool((DAEMON if daemon else OFFICIAL).is_valid(document))


def _ours_accepts(document: Any) -> bool:
    return validate_contents({"doc.flagd.json": json.dumps(document).encode()}).ok


def _flag(targeting: Any) -> dict[str, Any]:
    return {
        "flags": {
            "f": {
                "state": "ENABLED",
                "variants": {"hit": "hit", "miss": "miss"},
                "defaultVariant": "miss",
                "targeting": targeting,
            }
        }
    }


@pytest.mark.parametrize(
    "path",
    sorted((SCHEMAS / "fixtures" / "flags").rglob("*.json")),
    ids=lambda path: f"{path.parent.name}/{path.name}",
)
def test_what_the_official_schema_refuses_is_refused(path: Path) -> None:
    """Each official flags fixture the official schema refuses, our validator refuses too."""
    document = json.loads(path.read_text())
    if not _official_accepts(document):
        assert not _ours_accepts(document), path.name


@pytest.mark.parametrize(
    "rule",
    [
        {"if": [{}, "hit", "miss"]},  # Python read {} as true ("hit"), Node as false ("miss")
        {"and": [{}, True]},
        {"==": [{}, {}]},
    ],
)
def test_an_empty_object_as_a_rule_is_refused_like_the_schema_does(rule: Any) -> None:
    """`{}` inside a rule: the official schema refuses it, so does ours (top-level {} is fine)."""
    assert not OFFICIAL.is_valid(_flag(rule))
    assert not _ours_accepts(_flag(rule))
    assert OFFICIAL.is_valid(_flag({}))
    assert _ours_accepts(_flag({}))


GENERATED_RULES: list[Any] = [
    {"if": [{"==": [{"var": "x"}, 1]}, "hit", "miss"]},
    {"if": [{"in": ["a", {"var": "s"}]}, "hit", None]},
    {"fractional": [["hit", 1], ["miss", 1]]},
    {"fractional": [{"var": "k"}, ["hit", 50], ["miss", 50]]},
    {"if": [{"starts_with": [{"var": "e"}, "a"]}, "hit", "miss"]},
    {"if": [{"sem_ver": [{"var": "v"}, ">=", "1.0.0"]}, "hit", "miss"]},
    {"if": [{"!": {"var": "x"}}, "hit", "miss"]},
    {"if": [{"missing": ["a"]}, "miss", "hit"]},
    {"cat": ["h", "it"]},
]


@pytest.mark.parametrize("rule", GENERATED_RULES, ids=range(len(GENERATED_RULES)))
def test_what_the_official_schema_accepts_is_accepted(rule: Any) -> None:
    """Ordinary rules the official schema accepts are accepted by ours (no semantic rule hit)."""
    assert OFFICIAL.is_valid(_flag(rule))
    assert _ours_accepts(_flag(rule))
