"""flagd compatibility of the flag store (issue 14): partial acceptance, metadata, flag sets.

Evaluations go through the official flagd provider (in-process, fed by the store), so what is
checked is what every decision and OFREP answer sees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from distribution_support import client_for, write_document

from control_plane.distribution.selector import Selector, SelectorNotFound
from control_plane.errors import FlagValidationError
from control_plane.flagstore import FlagStore
from control_plane.flagstore.flagset import FACTS_MEMBER, VERSION_KEY
from providers import source_fed_provider


def _flag(default: str = "on", **extra: Any) -> dict[str, Any]:
    return {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": default,
        **extra,
    }


BROKEN = _flag(targeting={"fractional": [["on", -5], ["off", 50]]})


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    path = tmp_path / "flags"
    path.mkdir()
    return path


def test_an_invalid_flag_keeps_its_last_good_definition_and_the_rest_goes_live(
    directory: Path,
) -> None:
    """An edit with one invalid flag: the others go live, the invalid one keeps serving its
    last good definition, a new invalid flag stays absent, and status says which and why."""
    write_document(
        directory, "a.flagd.json", {"flags": {"keep": _flag("on"), "other": _flag("on")}}
    )
    store = FlagStore(directory)
    store.reload()
    write_document(
        directory,
        "a.flagd.json",
        {"flags": {"keep": BROKEN, "other": _flag("off"), "new-broken": BROKEN}},
    )
    flag_set = store.reload()
    assert flag_set.version == 2
    assert flag_set.flags["other"]["defaultVariant"] == "off"
    assert flag_set.flags["keep"] == _flag("on")
    assert "new-broken" not in flag_set.flags
    status = store.status()
    assert status["state"] == "partial"
    refused = {item["flag"]: item for item in status["refused"]}
    assert refused["keep"]["serving"] == "previous"
    assert refused["new-broken"]["serving"] == "absent"
    assert "negative" in refused["keep"]["issues"][0]["message"]
    assert store.stats.reloads_failed == 0


def test_a_file_that_cannot_be_parsed_keeps_its_flags_while_other_files_go_live(
    directory: Path,
) -> None:
    """A half-written file keeps its last good flags; another file's edit still goes live."""
    write_document(directory, "a.flagd.json", {"flags": {"alpha": _flag("on")}})
    write_document(directory, "b.flagd.json", {"flags": {"beta": _flag("on")}})
    store = FlagStore(directory)
    store.reload()
    (directory / "a.flagd.json").write_text('{"flags": {"alpha": ')
    write_document(directory, "b.flagd.json", {"flags": {"beta": _flag("off")}})
    flag_set = store.reload()
    assert flag_set.flags["alpha"] == _flag("on")
    assert flag_set.flags["beta"]["defaultVariant"] == "off"
    assert [(item.file, item.key, item.serving) for item in store.refused] == [
        ("a.flagd.json", None, "previous")
    ]


def test_strict_mode_refuses_the_whole_edit(directory: Path) -> None:
    """With strict=True (CP_FLAGS_STRICT) one invalid flag refuses the edit: nothing changes."""
    write_document(directory, "a.flagd.json", {"flags": {"other": _flag("on")}})
    store = FlagStore(directory, strict=True)
    store.reload()
    write_document(directory, "a.flagd.json", {"flags": {"other": _flag("off"), "x": BROKEN}})
    with pytest.raises(FlagValidationError):
        store.reload()
    assert store.current.flags["other"]["defaultVariant"] == "on"
    assert store.status()["state"] == "error"


def test_nothing_valid_at_startup_is_still_refused(directory: Path) -> None:
    """With no flag set serving and no valid flag at all, the store stays unloaded."""
    write_document(directory, "a.flagd.json", {"flags": {"x": BROKEN}})
    store = FlagStore(directory)
    with pytest.raises(FlagValidationError):
        store.reload()
    assert not store.loaded


def test_unreachable_unknown_variant_is_a_warning_not_a_refusal(directory: Path) -> None:
    """A branch returning a variant that does not exist is a warning; the flag serves."""
    flag = _flag(targeting={"if": [{"==": [{"var": "x"}, 1]}, "missing", "on"]})
    write_document(directory, "a.flagd.json", {"flags": {"f": flag}})
    store = FlagStore(directory)
    assert "f" in store.reload().flags
    assert store.status()["state"] == "ok"
    assert any("missing" in issue["message"] for issue in store.status()["issues"])


def test_evaluation_metadata_is_file_metadata_overlaid_by_the_flags_own(directory: Path) -> None:
    """As flagd (testbed metadata.feature): file metadata merged under the flag's own; a flag
    with no metadata in a file without metadata evaluates to empty metadata."""
    write_document(
        directory,
        "set.flagd.json",
        {
            "metadata": {"string": "b", "integer": 2, "flag-set-string": "c"},
            "flags": {
                "combined": _flag(metadata={"string": "a", "integer": 1}),
                "only-set": _flag(),
            },
        },
    )
    write_document(directory, "plain.flagd.json", {"flags": {"plain": _flag()}})
    store = FlagStore(directory)
    store.reload()
    client = client_for(source_fed_provider(store), "compat-metadata")
    metadata = {
        key: dict(client.get_boolean_details(key, False).flag_metadata)
        for key in ("combined", "only-set", "plain")
    }
    for found in metadata.values():
        assert not any(key.startswith("flagSet") and key != "flag-set-string" for key in found)
    assert {key: value for key, value in metadata["combined"].items() if key != VERSION_KEY} == {
        "string": "a",
        "integer": 1,
        "flag-set-string": "c",
    }
    assert {key: value for key, value in metadata["only-set"].items() if key != VERSION_KEY} == {
        "string": "b",
        "integer": 2,
        "flag-set-string": "c",
    }
    assert {key: value for key, value in metadata["plain"].items() if key != VERSION_KEY} == {}
    document = store.current.to_flagd()
    assert "metadata" not in document
    assert document[FACTS_MEMBER]["flagSetVersion"] == store.current.version
    assert VERSION_KEY not in json.dumps(document)


def test_two_flag_sets_may_share_a_key_and_selectors_pick_each(directory: Path) -> None:
    """Keys are scoped per flag set (file-level flagSetId): the same key in two sets loads, the
    default view serves the default set's, and flagSetId / source selectors pick each set."""
    write_document(directory, "default.flagd.json", {"flags": {"checkout": _flag("on")}})
    write_document(
        directory,
        "payments.flagd.json",
        {
            "metadata": {"flagSetId": "payments"},
            "flags": {"checkout": _flag("off"), "refunds": _flag("on")},
        },
    )
    write_document(
        directory,
        "web.flagd.json",
        {"metadata": {"flagSetId": "web"}, "flags": {"checkout": _flag("off")}},
    )
    store = FlagStore(directory)
    flag_set = store.reload()
    assert store.status()["state"] == "ok"
    assert flag_set.flags["checkout"]["defaultVariant"] == "on"
    assert "refunds" in flag_set.flags  # unique to one named set: in the default view too
    payments = Selector.parse("flagSetId=payments").document(flag_set)
    assert sorted(payments["flags"]) == ["checkout", "refunds"]
    assert payments["flags"]["checkout"]["defaultVariant"] == "off"
    assert payments["flags"]["checkout"]["metadata"] == {"flagSetId": "payments"}
    for text in (
        "source=/etc/flagd/web.flagd.json",
        "file:web.flagd.json",
        "web",
        "source=web.flagd.json,flagSetId=web",
    ):
        assert list(Selector.parse(text).document(flag_set)["flags"]) == ["checkout"], text


@pytest.mark.parametrize("text", ["flagSetId=nope", "source=missing.flagd.json", "missing"])
def test_a_selector_naming_nothing_is_an_error_not_an_empty_set(directory: Path, text: str) -> None:
    """A selector naming an unknown flag set or file raises SelectorNotFound, naming it."""
    write_document(directory, "a.flagd.json", {"flags": {"alpha": _flag()}})
    store = FlagStore(directory)
    with pytest.raises(SelectorNotFound) as raised:
        Selector.parse(text).document(store.reload())
    assert text.rsplit("=", 1)[-1].removesuffix(".flagd.json") in raised.value.detail


def test_a_key_twice_in_one_set_is_refused_but_not_across_sets(directory: Path) -> None:
    """The array form may repeat a key in different sets; twice in one set, both definitions
    are refused (neither wins by position)."""
    flags = [
        {"key": "k", **_flag("on"), "metadata": {"flagSetId": "a"}},
        {"key": "k", **_flag("off"), "metadata": {"flagSetId": "b"}},
        {"key": "k", **_flag("off"), "metadata": {"flagSetId": "b"}},
    ]
    write_document(
        directory,
        "arr.flagd.json",
        {"$schema": "https://flagd.dev/schema/v0/flagd.json", "flags": flags},
    )
    store = FlagStore(directory)
    flag_set = store.reload()
    assert set(flag_set.sets) == {"a"}
    assert [(item.key, item.flag_set_id) for item in store.refused] == [("k", "b"), ("k", "b")]
