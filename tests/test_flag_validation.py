"""The flag validator: official schema fixtures, our own bad inputs, the testkit corpus, the CLI.

The official flagd schemas and their fixtures ship in tests/fixtures/flagd-schemas (Apache-2.0,
LICENSE kept), so their tests run everywhere; the flagd testbed corpus lives in the workplace's
shared folder beside the repository, and its tests skip with a reason when it is absent.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext

from control_plane.cli import main as cli_main
from control_plane.errors import FlagValidationError
from control_plane.flagstore import ValidationIssue, validate_contents, validate_document
from control_plane.flagstore import validate_flag as validate_one_flag
from control_plane.flagstore.loader import load_directory, validate_path
from control_plane.flagstore.targeting_rules import check_targeting
from flags import FLAGS_DIR

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SCHEMA_FIXTURES = FIXTURES / "flagd-schemas" / "fixtures"
TESTKIT = SHARED / "flagd-testbed" / "testkit-flags.json"
BAD = FIXTURES / "bad_flags"
GOOD = FIXTURES / "good_flags"

needs_shared = pytest.mark.skipif(
    not TESTKIT.is_file(),
    reason=f"the flagd testbed corpus is not at {TESTKIT} (the workplace's shared folder sits "
    "beside the repository only on this project's machines)",
)


def _fixtures(kind: str, verdict: str) -> list[Path]:
    folder = SCHEMA_FIXTURES / kind / verdict
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def _ids(paths: list[Path]) -> list[str]:
    return [path.name for path in paths]


@pytest.mark.parametrize(
    "path", _fixtures("flags", "positive"), ids=_ids(_fixtures("flags", "positive"))
)
def test_official_positive_flag_fixture_is_accepted(path: Path) -> None:
    """Every positive fixture of the official flags schema validates with no error."""
    result = validate_contents({path.name: path.read_bytes()})
    assert result.errors == [], [issue.format() for issue in result.errors]
    assert result.flags


@pytest.mark.parametrize(
    "path", _fixtures("flags", "negative"), ids=_ids(_fixtures("flags", "negative"))
)
def test_official_negative_flag_fixture_is_refused(path: Path) -> None:
    """Every negative fixture of the official flags schema is refused, naming file and path."""
    result = validate_contents({path.name: path.read_bytes()})
    assert result.errors, f"{path.name} was accepted"
    for issue in result.errors:
        assert issue.file == path.name
        assert issue.path.startswith("$")
        assert issue.line is not None


@pytest.mark.parametrize(
    "path", _fixtures("targeting", "positive"), ids=_ids(_fixtures("targeting", "positive"))
)
def test_official_positive_targeting_fixture_is_accepted(path: Path) -> None:
    """Every positive fixture of the official targeting schema passes the rule checks."""
    issues: list[ValidationIssue] = []
    check_targeting(json.loads(path.read_text()), ("targeting",), issues)
    assert [issue for issue in issues if issue.is_error] == []


@pytest.mark.parametrize(
    "path", _fixtures("targeting", "negative"), ids=_ids(_fixtures("targeting", "negative"))
)
def test_official_negative_targeting_fixture_is_refused(path: Path) -> None:
    """Every negative fixture of the official targeting schema fails the rule checks."""
    issues: list[ValidationIssue] = []
    check_targeting(json.loads(path.read_text()), ("targeting",), issues)
    assert [issue for issue in issues if issue.is_error], f"{path.name} was accepted"


def test_official_fixture_lists_are_not_empty() -> None:
    """The parametrised fixture tests above really ran over the shipped files."""
    assert (FIXTURES / "flagd-schemas" / "LICENSE").is_file()
    assert len(_fixtures("flags", "positive")) >= 5
    assert len(_fixtures("flags", "negative")) >= 5


# -- our own bad inputs: each names the file, where, and what is wrong --------------------

#: fixture -> (file named in the issue, JSON path, line or None, words the message must hold)
BAD_CASES: dict[str, tuple[str, str, int | None, tuple[str, ...]]] = {
    "syntax-trailing-comma.flagd.json": (
        "syntax-trailing-comma.flagd.json",
        "$",
        7,
        ("invalid JSON", "trailing comma"),
    ),
    "syntax-half-written.flagd.json": (
        "syntax-half-written.flagd.json",
        "$",
        5,
        ("invalid JSON", "unfinished edit"),
    ),
    "syntax-bad-indent.flagd.yaml": (
        "syntax-bad-indent.flagd.yaml",
        "$",
        6,
        ("invalid YAML", "indentation"),
    ),
    "empty.flagd.json": ("empty.flagd.json", "$", None, ("empty",)),
    "not-utf8.flagd.json": ("not-utf8.flagd.json", "$", None, ("not UTF-8",)),
    "duplicate-key-same-file.flagd.json": (
        "duplicate-key-same-file.flagd.json",
        "$.flags.checkout",
        8,
        ("appears twice",),
    ),
    "yaml-duplicate-key.flagd.yaml": (
        "yaml-duplicate-key.flagd.yaml",
        "$.flags.checkout.defaultVariant",
        8,
        ("appears twice",),
    ),
    "duplicate-flag-across-files": (
        "b-team.flagd.yaml",
        "$.flags.checkout",
        7,
        ("'checkout'", "a-team.flagd.json:3", "once per flag set"),
    ),
    "evaluator-conflict": (
        "b.flagd.json",
        "$.$evaluators.is-staff",
        11,
        ("a.flagd.json:4", "differently"),
    ),
    "default-variant-missing.flagd.json": (
        "default-variant-missing.flagd.json",
        "$.flags.ab-test-router.defaultVariant",
        9,
        ("'model-c'", "model-a, model-b", "set it to null"),
    ),
    "targeting-unknown-variant.flagd.json": (
        "targeting-unknown-variant.flagd.json",
        "$.flags.region-router.targeting.if[1]",
        11,
        ("'china'", "no variant"),
    ),
    "fractional-unknown-bucket.flagd.json": (
        "fractional-unknown-bucket.flagd.json",
        "$.flags.ab-test-router.targeting.fractional[1][0]",
        13,
        ("'model-B'", "no variant"),
    ),
    "fractional-negative-weight.flagd.json": (
        "fractional-negative-weight.flagd.json",
        "$.flags.canary-router.targeting.fractional[0][1]",
        12,
        ("-10", "negative"),
    ),
    "fractional-decimal-weight.flagd.json": (
        "fractional-decimal-weight.flagd.json",
        "$.flags.canary-router.targeting.fractional[0][1]",
        12,
        ("12.5", "whole number"),
    ),
    "fractional-all-zero.flagd.json": (
        "fractional-all-zero.flagd.json",
        "$.flags.canary-router.targeting.fractional",
        11,
        ("every weight is 0", "positive weight"),
    ),
    "ref-missing-evaluator.flagd.json": (
        "ref-missing-evaluator.flagd.json",
        "$.flags.beta.targeting.if[0]",
        7,
        ("'is-staf'", "did you mean 'is-staff'"),
    ),
    "evaluator-refers-evaluator.flagd.json": (
        "evaluator-refers-evaluator.flagd.json",
        "$.$evaluators.is-beta-staff.and[0]",
        12,
        ("'is-staff'", "one level"),
    ),
    "routing-missing-backend.flagd.json": (
        "routing-missing-backend.flagd.json",
        "$.flags.pinned-router.variants.v2",
        7,
        ("'backend'", "routing variant"),
    ),
    "routing-bad-url.flagd.json": (
        "routing-bad-url.flagd.json",
        "$.flags.pinned-router.variants.v2",
        7,
        ("127.0.0.1:9132", "http://"),
    ),
    "routing-by-metadata.flagd.yaml": (
        "routing-by-metadata.flagd.yaml",
        "$.flags.embedder-router.variants.small",
        7,
        ("routing variant", "object"),
    ),
    "unknown-operator.flagd.json": (
        "unknown-operator.flagd.json",
        "$.flags.ab-test-router.targeting.fractionnal",
        8,
        ("unknown operator", "did you mean 'fractional'"),
    ),
    "wrong-arity.flagd.json": (
        "wrong-arity.flagd.json",
        '$.flags.region-router.targeting.if[0]["=="]',
        8,
        ("exactly 2 operands", "got 3"),
    ),
    "mixed-variant-types.flagd.yaml": (
        "mixed-variant-types.flagd.yaml",
        "$.flags.max-results.variants",
        5,
        ("mix types", "same type"),
    ),
    "unknown-flag-member.flagd.json": (
        "unknown-flag-member.flagd.json",
        "$.flags.checkout.description",
        5,
        ("unknown flag member", "metadata"),
    ),
    "missing-state.flagd.json": (
        "missing-state.flagd.json",
        "$.flags.checkout",
        3,
        ('no "state"',),
    ),
    "flags-array-without-daemon-schema.flagd.json": (
        "flags-array-without-daemon-schema.flagd.json",
        "$.flags",
        3,
        ("array form",),
    ),
    "boolean-result-without-variant.flagd.json": (
        "boolean-result-without-variant.flagd.json",
        "$.flags.beta.targeting",
        7,
        ("true or false", "'true' or 'false'"),
    ),
    "semver-bad-version.flagd.json": (
        "semver-bad-version.flagd.json",
        "$.flags.new-sdk.targeting.if[0].sem_ver[2]",
        7,
        ("'2.0.0.1'", "MAJOR.MINOR.PATCH"),
    ),
    "var-unknown-flagd-property.flagd.json": (
        "var-unknown-flagd-property.flagd.json",
        '$.flags.beta.targeting.if[0]["=="][0].var',
        7,
        ("$flagd.key", "$flagd.flagKey"),
    ),
}


#: Bad inputs that are warnings, not refusals: a branch that returns an unknown variant may
#: never be taken (flagd answers an error only when it is), so it does not block the flag.
WARNING_ONLY = frozenset(
    {
        "targeting-unknown-variant.flagd.json",
        "fractional-unknown-bucket.flagd.json",
        "boolean-result-without-variant.flagd.json",
    }
)


def test_every_bad_fixture_has_an_expectation() -> None:
    """The table above covers exactly the files in tests/fixtures/bad_flags."""
    assert sorted(path.name for path in BAD.iterdir()) == sorted(BAD_CASES)


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_fixture_is_refused_with_file_path_line_and_reason(name: str) -> None:
    """Each bad input is refused with an issue naming its file, JSON path, line and the fix."""
    file, path, line, words = BAD_CASES[name]
    result = validate_path(BAD / name)
    assert result.ok is (name in WARNING_ONLY)
    found = result.warnings if name in WARNING_ONLY else result.errors
    matching = [issue for issue in found if issue.file == file and issue.path == path]
    assert matching, [issue.format() for issue in result.errors]
    issue = matching[0]
    assert issue.line == line
    for word in words:
        assert word in issue.message, issue.message
    json.dumps(issue.to_dict())  # JSON-ready for the API


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_fixture_makes_the_loader_raise_with_the_issues(name: str, tmp_path: Path) -> None:
    """Loading a directory holding the bad input raises FlagValidationError carrying the issues."""
    source = BAD / name
    if source.is_dir():
        shutil.copytree(source, tmp_path / "flags")
    else:
        (tmp_path / "flags").mkdir()
        shutil.copy(source, tmp_path / "flags" / name)
    if name in WARNING_ONLY:
        assert load_directory(tmp_path / "flags").warnings
        return
    with pytest.raises(FlagValidationError) as raised:
        load_directory(tmp_path / "flags")
    issues = raised.value.issues
    assert issues
    assert all(isinstance(issue, ValidationIssue) for issue in issues)
    assert BAD_CASES[name][0] in raised.value.detail


# -- good inputs --------------------------------------------------------------------------


def test_shipped_flags_are_valid() -> None:
    """The flags shipped in flags/ validate with no error and no warning."""
    result = validate_path(FLAGS_DIR)
    assert result.issues == ()
    assert {"ab-test-router", "canary-router", "pinned-router", "region-router"} <= set(
        result.flags
    )


def test_good_directory_merges_json_yaml_and_daemon_array_files() -> None:
    """JSON, YAML and array-form files merge; hidden and non-flag files are ignored."""
    result = validate_path(GOOD)
    assert result.issues == ()
    assert result.files == (
        "daemon-array.flagd.json",
        "features.flagd.yaml",
        "routing.flagd.json",
        "shared.flagd.yml",
    )
    assert result.sources == {
        "canary-router": "routing.flagd.json",
        "pinned-router": "routing.flagd.json",
        "new-checkout": "features.flagd.yaml",
        "search-mode": "features.flagd.yaml",
        "max-results": "daemon-array.flagd.json",
    }
    assert "key" not in result.flags["max-results"]
    # YAML 1.2 rules: `on`/`off` are variant names, not booleans.
    assert result.flags["new-checkout"]["variants"] == {"on": True, "off": False}
    assert result.flags["new-checkout"]["defaultVariant"] == "off"


def test_merged_good_flags_evaluate_in_the_official_flagd_evaluator() -> None:
    """The merged set (an evaluator from one file used by flags of two others) runs in flagd."""
    result = validate_path(GOOD)
    core = FlagdCore()
    core.set_flags({"flags": result.flags, "$evaluators": result.evaluators})
    tester = EvaluationContext("u1", {"email": "ann@testers.example.com"})
    other = EvaluationContext("u2", {"email": "bob@example.com", "app-version": "2.0.0"})
    assert core.resolve_boolean_value("new-checkout", False, tester).value is True
    assert core.resolve_boolean_value("new-checkout", True, other).value is False
    assert core.resolve_object_value("canary-router", {}, tester).variant == "canary"
    assert core.resolve_integer_value("max-results", 0, other).value == 10


def test_validate_flag_checks_one_flag_in_isolation() -> None:
    """validate_flag reports a single flag's problems, with `$ref`s checked against evaluators."""
    flag = {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "on",
        "targeting": {"if": [{"$ref": "staff"}, "on", "of"]},
    }
    without = validate_one_flag("f", flag)
    assert [issue.path for issue in without] == ["$.flags.f.targeting.if[2]"]
    with_refs = validate_one_flag("f", flag, {"other": {"==": [1, 1]}})
    assert {issue.path for issue in with_refs} == {
        "$.flags.f.targeting.if[0]",
        "$.flags.f.targeting.if[2]",
    }
    assert (
        validate_one_flag(
            "f", {**flag, "targeting": {"if": [{"$ref": "staff"}, "on"]}}, {"staff": {"==": [1, 1]}}
        )
        == []
    )


def test_validate_document_reports_without_a_file() -> None:
    """validate_document checks a parsed document (as the admin API holds it) standalone."""
    issues = validate_document({"flags": {"f": {"state": "ON", "variants": {"a": 1}}}}, file="api")
    assert [(issue.file, issue.path) for issue in issues] == [("api", "$.flags.f.state")]


def test_refs_through_evaluators_check_the_returned_variant_names() -> None:
    """A variant name returned by an evaluator is checked for each flag that uses it."""
    document = {
        "flags": {
            "f": {
                "state": "ENABLED",
                "variants": {"gold": 1, "basic": 0},
                "targeting": {"$ref": "tier"},
            }
        },
        "$evaluators": {"tier": {"if": [{"var": "vip"}, "gold", "silver"]}},
    }
    issues = validate_document(document)
    assert len(issues) == 1
    assert issues[0].path == "$.flags.f.targeting"
    assert "'silver'" in issues[0].message
    assert "'tier'" in issues[0].message


def test_dynamic_weights_and_dynamic_variants_are_accepted() -> None:
    """Weights and variant names computed from the context are fine (not statically known)."""
    flag = {
        "state": "ENABLED",
        "variants": {"a": "a", "b": "b"},
        "defaultVariant": "a",
        "targeting": {
            "fractional": [
                [{"var": "pick"}, {"var": "w"}],
                ["b", {"-": [100, {"var": "w"}]}],
                ["a", 0],
            ]
        },
    }
    assert validate_one_flag("f", flag) == []


# -- the flagd testbed corpus --------------------------------------------------------------

#: The testkit flags our validator refuses, and the words of the reason.
TESTKIT_REFUSED = {
    "ref-to-nonexistent-evaluator-flag": "names no evaluator",
    "fractional-zero-weights-flag": "every weight is 0",
    "fractional-negative-weight-flag": "negative",
    "starts-with-wrong-args-flag": "exactly 2 operands",
    "ends-with-wrong-args-flag": "exactly 2 operands",
    "semver-wrong-args-flag": "exactly 3 operands",
    "semver-invalid-operator-flag": "sem_ver compares with one of",
}


@pytest.mark.skipif(not TESTKIT.is_file(), reason=f"no flagd testbed corpus at {TESTKIT}")
def test_testkit_flags_refused_are_exactly_the_deliberately_broken_ones() -> None:
    """Of the flagd testbed corpus, only the deliberately broken flags are refused, and why."""
    document = json.loads(TESTKIT.read_text())
    evaluators = document["$evaluators"]
    refused: dict[str, list[ValidationIssue]] = {}
    for key, definition in document["flags"].items():
        errors = [
            issue for issue in validate_one_flag(key, definition, evaluators) if issue.is_error
        ]
        if errors:
            refused[key] = errors
    assert sorted(refused) == sorted(TESTKIT_REFUSED)
    for key, words in TESTKIT_REFUSED.items():
        assert any(words in issue.message for issue in refused[key]), refused[key]
    # Every flag we accept loads into the official evaluator.
    accepted = {key: value for key, value in document["flags"].items() if key not in refused}
    FlagdCore().set_flags({"flags": accepted, "$evaluators": evaluators})


# -- the CLI ----------------------------------------------------------------------------


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        status = cli_main(["validate", *args])
    finally:
        sys.stdout, sys.stderr = old
    return status, out.getvalue(), err.getvalue()


def test_cli_validate_prints_file_line_col_path_message_and_exits_1(tmp_path: Path) -> None:
    """`control-plane validate DIR` prints each issue as file:line:col: path: message, exit 1."""
    shutil.copytree(BAD / "duplicate-flag-across-files", tmp_path / "flags")
    shutil.copy(BAD / "fractional-negative-weight.flagd.json", tmp_path / "flags")
    status, out, err = run_cli(str(tmp_path / "flags"))
    assert status == 1
    lines = out.splitlines()
    assert lines == [
        f"{tmp_path / 'flags' / 'a-team.flagd.json'}:3:17: $.flags.checkout: flag 'checkout' is "
        "also defined in b-team.flagd.yaml; a flag key may be defined once per flag set, so "
        "remove or rename one of them (or give one a different flagSetId)",
        f"{tmp_path / 'flags' / 'b-team.flagd.yaml'}:7:5: $.flags.checkout: flag 'checkout' is "
        "also defined in a-team.flagd.json:3; a flag key may be defined once per flag set, so "
        "remove or rename one of them (or give one a different flagSetId)",
        f"{tmp_path / 'flags' / 'fractional-negative-weight.flagd.json'}:12:22: "
        "$.flags.canary-router.targeting.fractional[0][1]: weight -10 is negative; weights are "
        "whole numbers >= 0 (0 sends no traffic to this bucket)",
    ]
    assert "3 errors" in err


def test_cli_validate_valid_directory_prints_a_summary_and_exits_0() -> None:
    """A valid directory gives exit status 0 and one summary line."""
    status, out, _ = run_cli(str(GOOD))
    assert status == 0
    assert out.splitlines() == [f"{GOOD}: ok: 5 flags and 1 evaluator in 4 files, 0 warnings"]


def test_cli_validate_single_file_and_missing_path(tmp_path: Path) -> None:
    """A single file is validated on its own; a missing path is exit status 2."""
    status, out, _ = run_cli(str(BAD / "syntax-trailing-comma.flagd.json"))
    assert status == 1
    assert out.startswith(f"{BAD / 'syntax-trailing-comma.flagd.json'}:7:5: $: invalid JSON")
    status, _, err = run_cli(str(tmp_path / "nope"))
    assert status == 2
    assert "no such file or directory" in err


def test_cli_validate_defaults_to_the_configured_flag_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without PATH, validate reads CP_FLAGS_DIR."""
    shutil.copytree(BAD / "evaluator-conflict", tmp_path / "flags")
    monkeypatch.setenv("CP_FLAGS_DIR", str(tmp_path / "flags"))
    status, out, _ = run_cli()
    assert status == 1
    assert "b.flagd.json:11:17: $.$evaluators.is-staff:" in out


def test_console_script_validate_runs_as_a_process() -> None:
    """The installed `control-plane` script validates (as CI would run it)."""
    script = Path(sys.executable).with_name("control-plane")
    command: list[Any] = (
        [str(script)] if script.exists() else [sys.executable, "-m", "control_plane.cli"]
    )
    done = subprocess.run(
        [*command, "validate", str(BAD / "routing-bad-url.flagd.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "routing-bad-url.flagd.json:7:15: $.flags.pinned-router.variants.v2:" in done.stdout
