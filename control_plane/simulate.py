"""`control-plane simulate`: how a flag splits N synthetic users, against its configured weights.

Each synthetic user gets a distinct targeting key (`user-0`, `user-1`, ...) plus the attributes of
the given headers, and is evaluated by the real flagd provider (in-process, fed by a FlagStore
over the flag directory): routing flags through the Decider, as the routing API would, others
through the OpenFeature client. The configured weights are read from the fractional rule the
targeting reaches for these users, found by running the flag's targeting with the pinned
evaluator's own JsonLogic operators, with `fractional` replaced by one that reports its (already
evaluated) weights. When every user reaches the same weights, a chi-square goodness-of-fit test
says whether the split matches them. With many users both passes take a while, so on a
terminal they show progress on stderr (cli_progress); piped, the output is only the report.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from json_logic import jsonLogic
from openfeature import api as openfeature_api
from openfeature.contrib.tools.flagd.core.targeting.targeting import OPERATORS
from openfeature.evaluation_context import EvaluationContext

from control_plane import bucketing_compare
from control_plane.cli_progress import Progress
from control_plane.errors import BadRequestInput, FlagNotFound, FlagValidationError
from control_plane.experiments.stats import goodness_of_fit
from control_plane.flagstore.issues import ValidationIssue
from control_plane.flagstore.store import FlagStore
from control_plane.routing.backends import routing_table
from control_plane.routing.context import ContextMapper
from control_plane.routing.decisions import Decider
from control_plane.settings import HeaderRule
from providers import source_fed_provider
from providers.compiled import Generation

__all__ = [
    "ConfiguredSplit",
    "SimulationResult",
    "chi_square_test",
    "configured_split",
    "format_result",
    "parse_headers",
    "run_simulate",
    "simulate",
]

_domains = itertools.count(1)


# -- chi-square ------------------------------------------------------------------------------

def chi_square_test(observed: Mapping[str, int], expected_shares: Mapping[str, float]
                    ) -> tuple[float, int, float]:
    """(statistic, degrees of freedom, p-value) of observed counts against expected shares:
    experiments.stats.goodness_of_fit (ValueError with fewer than two expected categories)."""
    fit = goodness_of_fit(observed, expected_shares)
    return fit.statistic, fit.dof, fit.p_value


# -- configured weights ----------------------------------------------------------------------

@dataclass(frozen=True)
class ConfiguredSplit:
    """What the flag's rule says these users should get."""

    #: "fractional" (static weights), "fixed" (one variant for everyone), or "varies".
    kind: str
    weights: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def shares(self) -> dict[str, float]:
        total = sum(self.weights.values())
        return {name: weight / total for name, weight in self.weights.items()} if total else {}


class _Reached(Exception):
    """Raised by the recording `fractional` operator to stop evaluation at the rule."""

    def __init__(self, weights: tuple[tuple[str, float], ...] | None) -> None:
        super().__init__("fractional reached")
        self.weights = weights


def _recording_fractional(data: Any, *args: Any) -> Any:
    buckets = list(args)
    if buckets and isinstance(buckets[0], str):
        buckets = buckets[1:]  # the optional bucketing-key expression (already evaluated)
    weights: list[tuple[str, float]] = []
    for bucket in buckets:
        if not isinstance(bucket, list) or not 1 <= len(bucket) <= 2:
            raise _Reached(None)
        weight = bucket[1] if len(bucket) == 2 else 1
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise _Reached(None)
        weights.append((str(bucket[0]), float(weight)))
    raise _Reached(tuple(weights))


_RECORDING_OPERATORS = {**OPERATORS, "fractional": _recording_fractional}


def _resolve_refs(node: Any, evaluators: Mapping[str, Any], depth: int = 0) -> Any:
    if depth > 32:
        return node
    if isinstance(node, dict):
        if set(node) == {"$ref"} and node["$ref"] in evaluators:
            return _resolve_refs(evaluators[node["$ref"]], evaluators, depth + 1)
        return {key: _resolve_refs(value, evaluators, depth + 1) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve_refs(item, evaluators, depth + 1) for item in node]
    return node


def configured_split(flag: Mapping[str, Any], flag_key: str, evaluators: Mapping[str, Any],
                     contexts: list[tuple[str, dict[str, Any]]],
                     progress: Progress | None = None) -> ConfiguredSplit:
    """The split the flag's targeting configures for these (targeting key, attributes) pairs."""
    default = flag.get("defaultVariant")
    if flag.get("state") == "DISABLED":
        return ConfiguredSplit("fixed", {str(default): 1.0}, "the flag is DISABLED")
    targeting = _resolve_refs(flag.get("targeting") or {}, evaluators)
    if not targeting:
        return ConfiguredSplit("fixed", {str(default): 1.0}, "no targeting: the default variant")
    outcomes: set[Any] = set()
    now = int(time.time())
    for index, (targeting_key, attributes) in enumerate(contexts, 1):
        if progress is not None:
            progress.update(index)
        data = {**attributes, "targetingKey": targeting_key,
                "$flagd": {"flagKey": flag_key, "timestamp": now}}
        try:
            result = jsonLogic(targeting, data, _RECORDING_OPERATORS)
        except _Reached as reached:
            outcomes.add(("fractional", reached.weights))
        except Exception:  # the evaluator would fail too: the default is served
            outcomes.add(("fixed", default))
        else:
            variants = flag.get("variants", {})
            outcomes.add(("fixed", result if isinstance(result, str) and result in variants
                          else default))
        if len(outcomes) > 1:
            return ConfiguredSplit("varies", note="the targeting gives these users different "
                                                  "rules, so there is no single configured split")
    kind, detail = outcomes.pop()
    if kind == "fixed":
        return ConfiguredSplit("fixed", {str(detail): 1.0},
                               f"the targeting sends every such user to {detail}")
    if detail is None:
        return ConfiguredSplit("varies", note="the fractional rule's weights are not numbers")
    weights: dict[str, float] = {}
    for variant, weight in detail:
        weights[variant] = weights.get(variant, 0.0) + weight
    if sum(weights.values()) <= 0:
        return ConfiguredSplit("varies", note="the fractional weights add up to zero")
    return ConfiguredSplit("fractional", weights)


# -- the simulation --------------------------------------------------------------------------

@dataclass
class SimulationResult:
    flag_key: str
    users: int
    flag_set_hash: str
    headers: dict[str, str]
    counts: Counter[str]
    errors: Counter[str]
    configured: ConfiguredSplit
    chi_square: tuple[float, int, float] | None = None


def parse_headers(pairs: list[str], rules: tuple[HeaderRule, ...]
                  ) -> tuple[dict[str, str], dict[str, Any]]:
    """`["x-region=cn"]` -> (headers, context attributes), by the service's header mapping.

    Raises BadRequestInput naming the header (its `source`) for a malformed pair, an unmapped
    header, the targeting-key header (simulate varies it itself) or a value its rule refuses.
    """
    headers: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            raise BadRequestInput(f"--header {pair!r} must look like NAME=VALUE",
                                  source=name or pair)
        headers[name] = value
    by_header = {rule.header: rule for rule in rules}
    for name in headers:
        rule = by_header.get(name)
        if rule is None:
            mapped = ", ".join(sorted(by_header))
            raise BadRequestInput(f"header {name} is not mapped to an evaluation context "
                                  f"attribute (mapped headers: {mapped})", source=name)
        if rule.attribute == "targetingKey":
            raise BadRequestInput(f"header {name} sets the targeting key, which simulate varies "
                                  "per synthetic user; leave it out", source=name)
    # A simulation shows what a request with these headers would get, pins included (the
    # operator asking is no client steering itself), so no rule needs a tester token here.
    unpinned = [rule.model_copy(update={"tester_only": False}) for rule in rules]
    attributes = ContextMapper(unpinned).from_headers(headers).attributes
    return headers, attributes


def simulate(store: FlagStore, flag_key: str, users: int, headers: Mapping[str, str],
             attributes: Mapping[str, Any], *, key_prefix: str = "user-",
             progress: Progress | None = None) -> SimulationResult:
    """Evaluate `users` synthetic users through the flagd provider fed by `store`.

    `progress` (optional) is told each user done, in two phases: evaluating, then reading the
    configured split.
    """
    flag_set = store.current
    flag = flag_set.flags.get(flag_key)
    if flag is None:
        known = ", ".join(sorted(flag_set.flags)) or "none"
        raise FlagNotFound(f"no flag named {flag_key!r} (flags: {known})")
    provider = source_fed_provider(store)
    domain = f"simulate-{next(_domains)}"
    openfeature_api.set_provider_and_wait(provider, domain=domain)
    client = openfeature_api.get_client(domain)
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    contexts = [(f"{key_prefix}{index}", dict(attributes)) for index in range(users)]
    if progress is not None:
        progress.phase(f"evaluating {flag_key}", users)
    update = progress.update if progress is not None else None
    try:
        if routing_table(flag) is not None:
            decider = Decider(client, store)
            for index, (targeting_key, context) in enumerate(contexts, 1):
                if update is not None:
                    update(index)
                decision = decider.decide(flag_key, targeting_key, context)
                counts[decision.variant] += 1
                if decision.error_code:
                    errors[decision.error_code] += 1
        else:
            evaluate = _typed_evaluation(client, flag)
            for index, (targeting_key, context) in enumerate(contexts, 1):
                if update is not None:
                    update(index)
                details = evaluate(flag_key, EvaluationContext(targeting_key, context))
                counts[details.variant or "(no variant)"] += 1
                if details.error_code is not None:
                    errors[str(details.error_code.value)] += 1
    finally:
        provider.shutdown()
    if progress is not None:
        progress.phase("reading the configured split", users)
    configured = configured_split(flag, flag_key, flag_set.evaluators, contexts, progress)
    result = SimulationResult(flag_key=flag_key, users=users,
                              flag_set_hash=flag_set.content_hash,
                              headers=dict(headers), counts=counts, errors=errors,
                              configured=configured)
    if configured.kind == "fractional" and len(configured.weights) >= 2:
        result.chi_square = chi_square_test(counts, configured.shares)
    return result


def _typed_evaluation(client: Any, flag: Mapping[str, Any]) -> Any:
    """The OpenFeature client method matching the flag's variant values."""
    values = list((flag.get("variants") or {}).values())

    def of(method: Any) -> Any:
        return lambda key, context: method(key, _default_for(values), context)

    if values and all(isinstance(v, bool) for v in values):
        return of(client.get_boolean_details)
    if values and all(isinstance(v, str) for v in values):
        return of(client.get_string_details)
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return of(client.get_integer_details)
    if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return of(client.get_float_details)
    return of(client.get_object_details)


def _default_for(values: list[Any]) -> Any:
    sample = values[0] if values else {}
    if isinstance(sample, bool):
        return False
    if isinstance(sample, str):
        return ""
    if isinstance(sample, int):
        return 0
    if isinstance(sample, float):
        return 0.0
    return {}


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
        verdict = ("consistent with the configured weights" if p_value >= 0.01
                   else "NOT consistent with the configured weights")
        lines.append(f"chi-square {statistic:.4f}, {dof} degree{'s' if dof != 1 else ''} of "
                     f"freedom, p = {p_value:.4g} ({verdict} at the 1% level)")
    elif configured.kind != "fractional":
        lines.append("no goodness-of-fit test: the rule has no single fractional split here")
    return "\n".join(lines)


def run_simulate(flags_dir: Path, flag_key: str, users: int, header_pairs: list[str],
                 rules: tuple[HeaderRule, ...], *, key_prefix: str = "user-",
                 out: TextIO | None = None, err: TextIO | None = None,
                 compare_bucketing: tuple[Generation, Generation] | None = None) -> int:
    """`control-plane simulate`: print the report; return the exit status (1 flags, 2 usage).

    With `compare_bucketing` (FROM, TO) it reports who would move between those fractional
    bucketing generations instead (control_plane.bucketing_compare).
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
            formatted = issue.format(str(flags_dir / issue.file) if issue.file else None) \
                if isinstance(issue, ValidationIssue) else str(issue)
            print(f"  {formatted}", file=err)
        return 1
    if compare_bucketing is not None:
        try:
            comparison = bucketing_compare.compare_bucketing(
                store.current, flag_key, users, attributes, *compare_bucketing,
                key_prefix=key_prefix)
        except FlagNotFound as exc:
            print(f"control-plane simulate: {exc.detail}", file=err)
            return 1
        print(bucketing_compare.format_comparison(comparison), file=out)
        return 0
    progress = Progress(f"evaluating {flag_key}", users, unit="users", stream=err)
    started = time.monotonic()
    try:
        with progress:
            result = simulate(store, flag_key, users, headers, attributes,
                              key_prefix=key_prefix, progress=progress)
            elapsed = time.monotonic() - started
            progress.close(f"simulated {users:,} users in {elapsed:.1f}s")
    except FlagNotFound as exc:
        print(f"control-plane simulate: {exc.detail}", file=err)
        return 1
    print(format_result(result), file=out)
    return 0
