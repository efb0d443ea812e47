"""Simulation: how a flag splits N synthetic users, against its configured weights.

Each synthetic user gets a distinct targeting key (`user-0`, `user-1`, ...) plus the attributes of
the given headers, and is evaluated by the real flagd provider (in-process, fed by a FlagStore
over the flag directory): routing flags through the Decider, as the routing API would, others
through the OpenFeature client. The configured weights come from control_plane.flagstore.splits;
when every user reaches the same weights, a chi-square goodness-of-fit test
(experiments.stats) says whether the split matches them. `control-plane simulate`
(control_plane.cli.simulate) prints the result.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from openfeature import api as openfeature_api
from openfeature.evaluation_context import EvaluationContext

from control_plane.errors import BadRequestInput, FlagNotFound
from control_plane.experiments.stats import goodness_of_fit
from control_plane.flagstore.splits import ConfiguredSplit, ProgressSink, configured_split
from control_plane.flagstore.store import FlagStore
from control_plane.routing.backends import routing_table
from control_plane.routing.context import ContextMapper
from control_plane.routing.decisions import Decider
from control_plane.settings import HeaderRule
from providers import source_fed_provider

__all__ = [
    "SimulationResult",
    "chi_square_test",
    "parse_headers",
    "simulate",
]

_domains = itertools.count(1)


# -- chi-square ------------------------------------------------------------------------------


def chi_square_test(
    observed: Mapping[str, int], expected_shares: Mapping[str, float]
) -> tuple[float, int, float]:
    """(statistic, degrees of freedom, p-value) of observed counts against expected shares:
    experiments.stats.goodness_of_fit (ValueError with fewer than two expected categories)."""
    fit = goodness_of_fit(observed, expected_shares)
    return fit.statistic, fit.dof, fit.p_value


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


def parse_headers(
    pairs: list[str], rules: tuple[HeaderRule, ...]
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
            raise BadRequestInput(
                f"--header {pair!r} must look like NAME=VALUE", source=name or pair
            )
        headers[name] = value
    by_header = {rule.header: rule for rule in rules}
    for name in headers:
        rule = by_header.get(name)
        if rule is None:
            mapped = ", ".join(sorted(by_header))
            raise BadRequestInput(
                f"header {name} is not mapped to an evaluation context "
                f"attribute (mapped headers: {mapped})",
                source=name,
            )
        if rule.attribute == "targetingKey":
            raise BadRequestInput(
                f"header {name} sets the targeting key, which simulate varies "
                "per synthetic user; leave it out",
                source=name,
            )
    # A simulation shows what a request with these headers would get, pins included (the
    # operator asking is no client steering itself), so no rule needs a tester token here.
    unpinned = [rule.model_copy(update={"tester_only": False}) for rule in rules]
    attributes = ContextMapper(unpinned).from_headers(headers).attributes
    return headers, attributes


def simulate(
    store: FlagStore,
    flag_key: str,
    users: int,
    headers: Mapping[str, str],
    attributes: Mapping[str, Any],
    *,
    key_prefix: str = "user-",
    progress: ProgressSink | None = None,
) -> SimulationResult:
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
    result = SimulationResult(
        flag_key=flag_key,
        users=users,
        flag_set_hash=flag_set.content_hash,
        headers=dict(headers),
        counts=counts,
        errors=errors,
        configured=configured,
    )
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
