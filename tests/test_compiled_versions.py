"""Compiled flags across flag-set versions, and the provider fed by the project's FlagStore."""

from __future__ import annotations

import json
from pathlib import Path

from openfeature import api as openfeature_api
from openfeature.evaluation_context import EvaluationContext

from control_plane.flagstore import FlagStore
from providers import StaticFlagSource, source_fed_provider
from providers.compiled import CompiledFlagSet, CompiledProvider


def flag(region: str) -> dict[str, object]:
    return {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"if": [{"==": [{"var": "region"}, region]}, "on", "off"]},
    }


def test_unchanged_flags_keep_their_compiled_rule_across_versions() -> None:
    """A new version recompiles only the flags whose definition changed."""
    first = CompiledFlagSet.from_document(
        {"flags": {"a": flag("cn"), "b": flag("us")}, "metadata": {"flagSetVersion": 1}}
    )
    second = CompiledFlagSet.from_document(
        {"flags": {"a": flag("cn"), "b": flag("eu")}, "metadata": {"flagSetVersion": 2}}, first
    )
    assert second.reused == 1
    assert second._compiled["a"].rule is first._compiled["a"].rule
    assert second._compiled["b"].rule is not first._compiled["b"].rule
    assert second.evaluate("a", "u", {"region": "cn"}).metadata == {"flagSetVersion": 2}
    assert second.evaluate("b", "u", {"region": "eu"}).variant == "on"
    assert second.changed_keys(first) == ["b"]


def test_a_changed_bucketing_generation_recompiles() -> None:
    """Switching a flag set from v2 to v3 recompiles its fractional flags."""
    document = {
        "flags": {
            "f": {
                "state": "ENABLED",
                "variants": {"a": 1, "b": 2},
                "targeting": {"fractional": [["a"], ["b"]]},
            }
        }
    }
    v2 = CompiledFlagSet.from_document(document)
    v3 = CompiledFlagSet.from_document({**document, "metadata": {"bucketing": "v3"}}, v2)
    assert v3.reused == 0


def test_a_refused_document_keeps_the_previous_flags_serving() -> None:
    """A document flagd-core would refuse leaves the provider on its last good flag set."""
    source = StaticFlagSource({"flags": {"a": flag("cn")}})
    provider = CompiledProvider(source)
    provider.initialize(EvaluationContext())
    source.publish({"flags": {"a": {**flag("cn"), "state": "SOMETIMES"}}})
    details = provider.resolve_boolean_details("a", False, EvaluationContext("u", {"region": "cn"}))
    assert (details.value, details.variant) == (True, "on")
    provider.shutdown()


def test_provider_follows_the_flag_store(tmp_path: Path) -> None:
    """Fed by a FlagStore, the provider serves each new version through the OpenFeature client."""
    (tmp_path / "a.flagd.json").write_text(json.dumps({"flags": {"region-flag": flag("cn")}}))
    store = FlagStore(tmp_path)
    store.reload()
    openfeature_api.set_provider_and_wait(CompiledProvider(store), domain="compiled-store")
    client = openfeature_api.get_client("compiled-store")
    context = EvaluationContext("u", {"region": "us"})
    assert client.get_boolean_details("region-flag", False, context).value is False
    (tmp_path / "a.flagd.json").write_text(json.dumps({"flags": {"region-flag": flag("us")}}))
    store.reload()
    details = client.get_boolean_details("region-flag", False, context)
    assert (details.value, details.reason) == (True, "TARGETING_MATCH")
    official = source_fed_provider(store)
    official.initialize(EvaluationContext())
    assert (
        details.flag_metadata
        == official.resolve_boolean_details("region-flag", False, context).flag_metadata
    )
    official.shutdown()
    assert client.get_string_details("region-flag", "x", context).error_code == "TYPE_MISMATCH"


def test_an_edit_of_one_flag_through_the_store_recompiles_only_that_flag(tmp_path: Path) -> None:
    """The store's stamped documents carry the version in the flag-set metadata, not in each
    flag: an edit of one flag of many leaves every other flag's compiled targeting in use, and
    every evaluation still reports the version that answered."""
    from control_plane.flagstore.flagset import VERSION_KEY

    path = tmp_path / "many.flagd.json"
    flags = {f"flag-{index}": flag("cn") for index in range(50)}
    path.write_text(json.dumps({"flags": flags}))
    store = FlagStore(tmp_path)
    first_set = store.reload()
    first = CompiledFlagSet.from_document(first_set.to_flagd(stamped=True))
    path.write_text(json.dumps({"flags": {**flags, "flag-7": flag("us")}}))
    second_set = store.reload()
    second = CompiledFlagSet.from_document(second_set.to_flagd(stamped=True), first)
    assert second.reused == 49
    assert second.changed_keys(first) == ["flag-7"]
    assert second_set.version == first_set.version + 1
    for key in ("flag-7", "flag-8"):
        assert second.evaluate(key, "u", {"region": "us"}).metadata == {
            VERSION_KEY: second_set.version
        }
    assert second.evaluate("flag-7", "u", {"region": "us"}).variant == "on"
