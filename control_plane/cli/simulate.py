"""`control-plane simulate`: print how a flag splits N synthetic users (or who would move
between two bucketing generations). The work is control_plane.routing.simulation's; on a
terminal it shows progress on stderr, piped the output is only the report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

from control_plane.cli.common import positive_int, settings_from
from control_plane.cli.progress import Progress
from control_plane.errors import BadRequestInput, FlagNotFound, FlagValidationError
from control_plane.flagstore.issues import ValidationIssue
from control_plane.flagstore.store import FlagStore
from control_plane.routing import bucketing_compare
from control_plane.routing.simulation import SimulationResult, parse_headers, simulate
from control_plane.settings import HeaderRule
from providers.compiled import Generation

__all__ = ["add_simulate", "format_result", "run_simulate"]


def format_result(result: SimulationResult) -> str:
    """The report printed by `control-plane simulate`."""
    header_text = ", ".join(f"{k}={v}" for k, v in result.headers.items()) or "none"
    lines = [
        f"flag {result.flag_key} (flag set {result.flag_set_hash[:12]}): "
        f"{result.users} synthetic users, headers: {header_text}",
        "",
    ]
    configured = result.configured
    shares = configured.shares
    variants = list(dict.fromkeys([*configured.weights, *sorted(result.counts)]))
    width = max([len("variant"), *(len(v) for v in variants)])
    lines.append(f"{'variant':<{width}}  {'users':>8}  {'share':>7}  configured")
    for variant in variants:
        count = result.counts.get(variant, 0)
        share = count / result.users if result.users else 0.0
        if variant in configured.weights:
            weight = configured.weights[variant]
            rule = f"(weight {weight:g})" if configured.kind == "fractional" else "(by rule)"
            expected = f"{shares[variant]:7.2%}  {rule}"
        else:
            expected = f"{0:7.2%}"
        lines.append(f"{variant:<{width}}  {count:>8}  {share:7.2%}  {expected}")
    lines.append("")
    if configured.note:
        lines.append(f"configured split: {configured.note}")
    if result.errors:
        errors = ", ".join(f"{code} x{count}" for code, count in result.errors.most_common())
        lines.append(f"evaluation errors (the default variant was served): {errors}")
    if result.chi_square is not None:
        statistic, dof, p_value = result.chi_square
        verdict = (
            "consistent with the configured weights"
            if p_value >= 0.01
            else "NOT consistent with the configured weights"
        )
        lines.append(
            f"chi-square {statistic:.4f}, {dof} degree{'s' if dof != 1 else ''} of "
            f"freedom, p = {p_value:.4g} ({verdict} at the 1% level)"
        )
    elif configured.kind != "fractional":
        lines.append("no goodness-of-fit test: the rule has no single fractional split here")
    return "\n".join(lines)


def run_simulate(
    flags_dir: Path,
    flag_key: str,
    users: int,
    header_pairs: list[str],
    rules: tuple[HeaderRule, ...],
    *,
    key_prefix: str = "user-",
    out: TextIO | None = None,
    err: TextIO | None = None,
    compare_bucketing: tuple[Generation, Generation] | None = None,
) -> int:
    """`control-plane simulate`: print the report; return the exit status (1 flags, 2 usage).

    With `compare_bucketing` (FROM, TO) it reports who would move between those fractional
    bucketing generations instead (control_plane.routing.bucketing_compare).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    if users < 1:
        print("control-plane simulate: --users must be at least 1", file=err)
        return 2
    try:
        headers, attributes = parse_headers(header_pairs, rules)
    except BadRequestInput as exc:
        print(f"control-plane simulate: {exc.detail}", file=err)
        return 2
    if not flags_dir.is_dir():
        print(f"control-plane simulate: flag directory {flags_dir} does not exist", file=err)
        return 2
    store = FlagStore(flags_dir)
    try:
        store.reload()
    except FlagValidationError as exc:
        print(f"control-plane simulate: the flags in {flags_dir} are invalid:", file=err)
        for issue in exc.issues:
            formatted = (
                issue.format(str(flags_dir / issue.file) if issue.file else None)
                if isinstance(issue, ValidationIssue)
                else str(issue)
            )
            print(f"  {formatted}", file=err)
        return 1
    if compare_bucketing is not None:
        try:
            comparison = bucketing_compare.compare_bucketing(
                store.current,
                flag_key,
                users,
                attributes,
                *compare_bucketing,
                key_prefix=key_prefix,
            )
        except FlagNotFound as exc:
            print(f"control-plane simulate: {exc.detail}", file=err)
            return 1
        print(bucketing_compare.format_comparison(comparison), file=out)
        return 0
    progress = Progress(f"evaluating {flag_key}", users, unit="users", stream=err)
    started = time.monotonic()
    try:
        with progress:
            result = simulate(
                store,
                flag_key,
                users,
                headers,
                attributes,
                key_prefix=key_prefix,
                progress=progress,
            )
            elapsed = time.monotonic() - started
            progress.close(f"simulated {users:,} users in {elapsed:.1f}s")
    except FlagNotFound as exc:
        print(f"control-plane simulate: {exc.detail}", file=err)
        return 1
    print(format_result(result), file=out)
    return 0


def _simulate(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    compare = tuple(args.compare_bucketing) if args.compare_bucketing else None
    return run_simulate(
        settings.flags_dir,
        args.flag,
        args.users,
        args.header or [],
        settings.header_rules,
        key_prefix=args.key_prefix,
        compare_bucketing=compare,
    )


def add_simulate(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    simulate_parser = commands.add_parser(
        "simulate",
        help="evaluate a flag for N synthetic users and compare the split",
        description="Evaluate FLAG for N synthetic users (targeting keys user-0, user-1, ...) "
        "with the given request headers, through the flagd provider, and print "
        "the variant split beside the configured weights with a chi-square "
        "goodness-of-fit p-value.",
    )
    simulate_parser.add_argument("flag", metavar="FLAG", help="flag key, e.g. ab-test-router")
    simulate_parser.add_argument(
        "--users", type=positive_int, required=True, help="number of synthetic users"
    )
    simulate_parser.add_argument(
        "--header",
        action="append",
        metavar="NAME=VALUE",
        help="a request header every user sends (repeatable), e.g. --header x-region=cn",
    )
    simulate_parser.add_argument(
        "--flags",
        dest="flags_dir",
        type=Path,
        help="flag directory (default: CP_FLAGS_DIR or ./flags)",
    )
    simulate_parser.add_argument(
        "--key-prefix",
        default="user-",
        help="prefix of the synthetic targeting keys (default user-)",
    )
    simulate_parser.add_argument(
        "--compare-bucketing",
        nargs=2,
        metavar=("FROM", "TO"),
        choices=["v2", "v3"],
        help="instead, list who would move from one fractional bucketing generation to the "
        "other (counts per from->to variant, sample targeting keys), e.g. "
        "--compare-bucketing v2 v3",
    )
    simulate_parser.set_defaults(command=_simulate)
