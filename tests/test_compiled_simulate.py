"""`control-plane simulate FLAG --compare-bucketing v2 v3`: who a bucketing change moves."""

from __future__ import annotations

import io
import re

import pytest
from bucketing_v2 import v2_variant

from control_plane.cli import main
from control_plane.cli.simulate import run_simulate
from control_plane.settings import DEFAULT_HEADER_RULES
from flags import AB_TEST_ROUTER, FLAGS_DIR, REGION_ROUTER


def test_compare_bucketing_lists_movers_per_variant_pair_with_samples() -> None:
    """Counts per from->to pair add up with the stayers; samples really moved (v2 side checked)."""
    out, err = io.StringIO(), io.StringIO()
    status = run_simulate(
        FLAGS_DIR,
        AB_TEST_ROUTER,
        400,
        [],
        DEFAULT_HEADER_RULES,
        out=out,
        err=err,
        compare_bucketing=("v2", "v3"),
    )
    report = out.getvalue()
    assert status == 0, err.getvalue()
    moved, stayed = map(int, re.search(r"(\d+) would move .* (\d+) stay", report).groups())
    assert moved + stayed == 400
    assert moved > 100
    rows = re.findall(r"^(model-\w) +(model-\w) +(\d+)  (.+)$", report, re.MULTILINE)
    assert sum(int(count) for _, _, count, _ in rows) == moved
    buckets = [("model-a", 50), ("model-b", 50)]
    for before, after, _, samples in rows:
        assert before != after
        for key in samples.split(", "):
            assert v2_variant(AB_TEST_ROUTER, key, buckets) == before


def test_compare_bucketing_on_a_flag_without_fractional_moves_nobody() -> None:
    """A label-targeted flag does not depend on the bucketing generation."""
    out = io.StringIO()
    assert (
        run_simulate(
            FLAGS_DIR,
            REGION_ROUTER,
            50,
            ["x-region=cn"],
            DEFAULT_HEADER_RULES,
            out=out,
            compare_bucketing=("v2", "v3"),
        )
        == 0
    )
    assert "nobody moves" in out.getvalue()


def test_compare_bucketing_from_the_command_line() -> None:
    """The CLI takes --compare-bucketing FROM TO and refuses unknown generations."""
    assert (
        main(
            [
                "simulate",
                AB_TEST_ROUTER,
                "--users",
                "20",
                "--flags",
                str(FLAGS_DIR),
                "--compare-bucketing",
                "v3",
                "v2",
            ]
        )
        == 0
    )
    with pytest.raises(SystemExit) as refused:
        main(["simulate", AB_TEST_ROUTER, "--users", "20", "--compare-bucketing", "v2", "v9"])
    assert refused.value.code == 2
