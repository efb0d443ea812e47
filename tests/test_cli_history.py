"""`control-plane history` and `control-plane simulate`: the version table, read-only database
checks, the simulated split (checked against an independent bucketing computation) and the
chi-square p-value (checked against scipy)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import db_support
import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from servers import free_port

from control_plane import cli
from control_plane.db import Database, repository
from control_plane.db.migrate import upgrade
from control_plane.experiments.distributions import chi2_sf as chi_square_sf
from control_plane.flagstore.db_recorder import DatabaseRecorder
from control_plane.flagstore.editor import FlagEditor
from control_plane.flagstore.store import FlagStore
from control_plane.routing.simulation import chi_square_test
from flags import AB_TEST_ROUTER, CANARY_ROUTER, REGION_ROUTER

database_url = db_support.database_url
empty_database = db_support.empty_database
database = db_support.database


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# -- history ---------------------------------------------------------------------------------


@pytest.fixture
def recorded(database: Database, database_url: str, flags_dir: Path) -> str:
    """A database holding three versions: the shipped flags, an API edit, a rollback."""
    store = FlagStore(flags_dir, recorder=DatabaseRecorder(database))
    first = store.reload()
    editor = FlagEditor(store)
    definition = json.loads(json.dumps(first.flags[AB_TEST_ROUTER]))
    definition["targeting"]["fractional"][0][1] = 70
    definition["targeting"]["fractional"][1][1] = 30
    editor.put_flag(AB_TEST_ROUTER, definition, actor="ops", message="more model-a")
    with database.session() as session:
        document = repository.get_version(session=session, version=first.version).document
    editor.restore(document, actor="root", message="rollback to version 1")
    return database_url


def test_history_prints_versions_newest_first_with_diffs(
    recorded: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table lists every version with source, actor and message, and the changed paths."""
    status, out, _ = _run(["history", "--database-url", recorded], capsys)
    assert status == 0
    rows = [line.split() for line in out.splitlines() if re.match(r"^\s+\d+\s+\d{4}-", line)]
    assert [(r[0], r[3], r[4]) for r in rows] == [
        ("3", "rollback", "root"),
        ("2", "api", "ops"),
        ("1", "file", "file-watcher"),
    ]
    assert f"~ {AB_TEST_ROUTER} /targeting/fractional/0/1: 50 -> 70" in out
    assert f"~ {AB_TEST_ROUTER} /targeting/fractional/0/1: 70 -> 50" in out
    assert "more model-a" in out
    assert f"+ {CANARY_ROUTER} added (routing.flagd.json)" in out


def test_history_limit_and_json(recorded: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--limit shows the newest N and says how many exist; --json is machine-readable."""
    status, out, _ = _run(
        ["history", "--database-url", recorded, "--limit", "1", "--no-diff"], capsys
    )
    assert status == 0
    assert "(1 of 3 versions; --limit 3 shows all)" in out
    assert "->" not in out
    status, out, _ = _run(["history", "--database-url", recorded, "--json"], capsys)
    document = json.loads(out)
    assert document["total"] == 3
    assert [item["source"] for item in document["items"]] == ["rollback", "api", "file"]


def test_history_without_a_database_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing SQLite file is reported (exit 1) and not created."""
    path = tmp_path / "missing.db"
    status, _, err = _run(["history", "--database-url", f"sqlite:///{path}"], capsys)
    assert status == 1
    assert f"no database file {path}" in err
    assert not path.exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("garbage", "the database URL is not usable: Could not parse"),
        ("nosuchdb://host/db", "the database URL is not usable: Can't load plugin"),
        ("postgresql+psycopg://postgres:hunter2@127.0.0.1:{port}/test", "Connection refused"),
    ],
)
def test_history_with_an_unusable_database_url(
    url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed URL or an unreachable server is one message (password masked), exit 1."""
    url = url.format(port=free_port())
    status, _, err = _run(["history", "--database-url", url], capsys)
    assert status == 1
    assert message in err
    assert "hunter2" not in err
    assert "Traceback" not in err


def test_history_of_an_unmigrated_database(
    empty_database: Database, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database without our tables is reported, not migrated by a read-only command."""
    with empty_database.engine.begin():
        pass  # SQLite creates the file on first connect
    status, _, err = _run(["history", "--database-url", database_url], capsys)
    assert status == 1
    assert "holds no control plane tables" in err


def test_history_of_an_old_schema(
    empty_database: Database, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database at an older revision names both revisions and how to upgrade."""
    upgrade(empty_database.engine, "0001")
    status, _, err = _run(["history", "--database-url", database_url], capsys)
    assert status == 1
    assert "revision 0001" in err
    assert "control-plane serve" in err


def test_history_console_script_reads_database_url(recorded: str) -> None:
    """The installed `control-plane history` reads DATABASE_URL from the environment."""
    env = {**os.environ, "DATABASE_URL": recorded}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "control-plane"), "history", "--limit", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "rollback" in done.stdout


# -- chi-square ------------------------------------------------------------------------------


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 5, 7, 10, 25, 60, 150])
def test_chi_square_sf_matches_scipy(dof: int) -> None:
    """Our survival function agrees with scipy over small, typical and extreme statistics."""
    for statistic in (
        1e-6,
        0.01,
        0.5,
        1,
        2.7,
        dof - 1 + 0.5,
        dof,
        dof + 3,
        2 * dof + 10,
        80,
        300,
        1000,
    ):
        ours = chi_square_sf(statistic, dof)
        expected = float(stats.chi2.sf(statistic, dof))
        assert ours == pytest.approx(expected, rel=1e-9, abs=1e-300), (statistic, dof)


@settings(max_examples=300, deadline=None)
@given(
    statistic=st.floats(min_value=0, max_value=500, allow_nan=False),
    dof=st.integers(min_value=1, max_value=200),
)
def test_chi_square_sf_property(statistic: float, dof: int) -> None:
    """For any statistic and degrees of freedom the p-value equals scipy's to 1e-9."""
    expected = float(stats.chi2.sf(statistic, dof))
    assert chi_square_sf(statistic, dof) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_chi_square_test_matches_scipy_chisquare() -> None:
    """The goodness-of-fit statistic and p-value equal scipy.stats.chisquare's."""
    observed = {"a": 480, "b": 310, "c": 210}
    shares = {"a": 0.5, "b": 0.3, "c": 0.2}
    statistic, dof, p_value = chi_square_test(observed, shares)
    reference = stats.chisquare([480, 310, 210], [500, 300, 200])
    assert dof == 2
    assert statistic == pytest.approx(float(reference.statistic), rel=1e-12)
    assert p_value == pytest.approx(float(reference.pvalue), rel=1e-9)
    assert chi_square_test({"a": 5, "z": 1}, {"a": 0.5, "b": 0.5})[2] == 0.0


# -- simulate --------------------------------------------------------------------------------


def _v2_bucket(flag_key: str, targeting_key: str, weights: list[tuple[str, int]]) -> str:
    """flagd fractional v2, computed independently: murmur3(flagKey+key) * total >> 32."""
    total = sum(weight for _, weight in weights)
    bucket = (mmh3.hash(flag_key + targeting_key, signed=False) * total) >> 32
    edge = 0
    for variant, weight in weights:
        edge += weight
        if bucket < edge:
            return variant
    raise AssertionError("bucket outside the weights")


def _table(out: str) -> dict[str, tuple[int, str]]:
    """variant -> (users, configured column) from the simulate report."""
    rows: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        match = re.match(r"^(\S+)\s+(\d+)\s+[\d.]+%\s+(.*)$", line)
        if match:
            rows[match.group(1)] = (int(match.group(2)), match.group(3).strip())
    return rows


def _p_value(out: str) -> float:
    match = re.search(r"p = ([0-9.e+-]+)", out)
    assert match, out
    return float(match.group(1))


def test_simulate_ab_split_matches_independent_bucketing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The 50/50 A/B split per variant equals flagd v2 bucketing of the same keys, with scipy's
    chi-square p-value beside the configured weights."""
    users = 3000
    status, out, err = _run(["simulate", AB_TEST_ROUTER, "--users", str(users)], capsys)
    assert status == 0, err
    table = _table(out)
    weights = [("model-a", 50), ("model-b", 50)]
    expected = {name: 0 for name, _ in weights}
    for index in range(users):
        expected[_v2_bucket(AB_TEST_ROUTER, f"user-{index}", weights)] += 1
    assert {name: count for name, (count, _) in table.items()} == expected
    assert table["model-a"][1] == "50.00%  (weight 50)"
    reference = stats.chisquare([expected["model-a"], expected["model-b"]], [users / 2, users / 2])
    assert _p_value(out) == pytest.approx(float(reference.pvalue), rel=1e-3)


def test_simulate_dynamic_weight_from_a_header(capsys: pytest.CaptureFixture[str]) -> None:
    """x-canary-weight=30 makes the canary rule's weights 30/70, read after the header applies."""
    users = 2000
    status, out, err = _run(
        ["simulate", CANARY_ROUTER, "--users", str(users), "--header", "x-canary-weight=30"], capsys
    )
    assert status == 0, err
    table = _table(out)
    weights = [("canary", 30), ("stable", 70)]
    expected = {"canary": 0, "stable": 0}
    for index in range(users):
        expected[_v2_bucket(CANARY_ROUTER, f"user-{index}", weights)] += 1
    assert {name: count for name, (count, _) in table.items()} == expected
    assert table["canary"][1] == "30.00%  (weight 30)"
    assert table["stable"][1] == "70.00%  (weight 70)"
    assert "x-canary-weight=30" in out


def test_simulate_rule_without_a_split(capsys: pytest.CaptureFixture[str]) -> None:
    """A label rule sends everyone one way: shown as such, with no goodness-of-fit test."""
    status, out, _ = _run(
        ["simulate", REGION_ROUTER, "--users", "50", "--header", "x-region=cn"], capsys
    )
    assert status == 0
    assert _table(out) == {"cn": (50, "100.00%  (by rule)")}
    assert "no goodness-of-fit test" in out
    assert "p =" not in out


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("x-canary-weight=300", "header x-canary-weight must be at most 100, got 300"),
        ("x-canary-weight=lots", "header x-canary-weight must be an integer"),
        ("nonsense", "--header 'nonsense' must look like NAME=VALUE"),
        ("x-unknown=1", "header x-unknown is not mapped"),
        ("x-user-id=bob", "header x-user-id sets the targeting key"),
    ],
)
def test_simulate_bad_header_names_it(
    header: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad --header is one clear message naming the header, exit status 2, no traceback."""
    status, out, err = _run(
        ["simulate", CANARY_ROUTER, "--users", "10", "--header", header], capsys
    )
    assert status == 2
    assert message in err
    assert "Traceback" not in err + out


def test_simulate_unknown_flag_and_bad_users(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown flag lists the known ones (exit 1); --users 0 is a usage error."""
    status, _, err = _run(["simulate", "no-such-flag", "--users", "10"], capsys)
    assert status == 1
    assert "no flag named 'no-such-flag'" in err
    assert AB_TEST_ROUTER in err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["simulate", AB_TEST_ROUTER, "--users", "0"])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_simulate_invalid_flags_report_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Invalid flag files are listed as file:line messages (exit 1)."""
    (tmp_path / "bad.flagd.json").write_text('{\n  "flags": {\n    "x": {,\n  }\n}\n')
    status, _, err = _run(["simulate", "x", "--users", "5", "--flags", str(tmp_path)], capsys)
    assert status == 1
    assert f"{tmp_path / 'bad.flagd.json'}:3:" in err


def _write_flags(
    directory: Path, flags: dict[str, Any], evaluators: dict[str, Any] | None = None
) -> None:
    document: dict[str, Any] = {"flags": flags}
    if evaluators:
        document["$evaluators"] = evaluators
    (directory / "sim.flagd.json").write_text(json.dumps(document))


def test_simulate_non_routing_flag_with_shared_evaluator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A boolean flag whose split sits in a $ref evaluator is evaluated and its weights read."""
    _write_flags(
        tmp_path,
        {
            "dark-mode": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": {"$ref": "quarter"},
            }
        },
        evaluators={"quarter": {"fractional": [["on", 25], ["off", 75]]}},
    )
    users = 1200
    status, out, err = _run(
        ["simulate", "dark-mode", "--users", str(users), "--flags", str(tmp_path)], capsys
    )
    assert status == 0, err
    expected = {"on": 0, "off": 0}
    for index in range(users):
        expected[_v2_bucket("dark-mode", f"user-{index}", [("on", 25), ("off", 75)])] += 1
    table = _table(out)
    assert {name: count for name, (count, _) in table.items()} == expected
    assert table["on"][1] == "25.00%  (weight 25)"
    assert "p =" in out


def test_simulate_rule_that_varies_per_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """When users reach different splits, no single configured split or p-value is claimed."""
    _write_flags(
        tmp_path,
        {
            "mixed": {
                "state": "ENABLED",
                "variants": {"a": "A", "b": "B"},
                "defaultVariant": "a",
                "targeting": {
                    "if": [
                        {"starts_with": [{"var": "targetingKey"}, "user-1"]},
                        {"fractional": [["a", 90], ["b", 10]]},
                        {"fractional": [["a", 10], ["b", 90]]},
                    ]
                },
            }
        },
    )
    status, out, _ = _run(["simulate", "mixed", "--users", "200", "--flags", str(tmp_path)], capsys)
    assert status == 0
    assert "different rules" in out
    assert "p =" not in out
    assert sum(count for count, _ in _table(out).values()) == 200
