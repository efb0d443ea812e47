"""Adjusted p-values for many comparisons at once (variants x metrics of one experiment).

With ten comparisons at alpha = 0.05, the chance that at least one "wins" by luck is up to 40%.
Holm's step-down method (the default) keeps the family-wise error rate at alpha and is uniformly
more powerful than Bonferroni; Benjamini-Hochberg keeps the false discovery rate (the expected
share of false wins among the wins) at alpha and is more powerful still when many effects are
real. Both are computed as adjusted p-values (compare each with alpha), as statsmodels'
`multipletests` does (`holm`, `fdr_bh`), which the tests check them against.

- S. Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Statistics 6, 1979.
- Y. Benjamini, Y. Hochberg, "Controlling the false discovery rate", JRSS B 57(1), 1995.
"""

from __future__ import annotations

from collections.abc import Sequence

from control_plane.errors import BadRequestInput

__all__ = ["CORRECTIONS", "DEFAULT_CORRECTION", "adjust", "benjamini_hochberg", "holm"]

#: Query names (`?correction=`) and what each controls.
CORRECTIONS = {
    "holm": "Holm (family-wise error rate)",
    "bh": "Benjamini-Hochberg (false discovery rate)",
}
DEFAULT_CORRECTION = "holm"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the order given."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg step-up adjusted p-values (q-values), in the order given."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i], reverse=True)
    adjusted = [0.0] * m
    running = 1.0
    for position, index in enumerate(order):
        rank = m - position  # 1-based rank from the smallest p-value
        running = min(running, p_values[index] * m / rank)
        adjusted[index] = min(1.0, running)
    return adjusted


def adjust(p_values: Sequence[float], method: str = DEFAULT_CORRECTION) -> list[float]:
    """Adjusted p-values by `method` ("holm" or "bh"); BadRequestInput for another name."""
    if method == "holm":
        return holm(p_values)
    if method == "bh":
        return benjamini_hochberg(p_values)
    raise BadRequestInput(
        f"correction {method!r} is unknown; use one of: {', '.join(CORRECTIONS)}",
        source="correction",
    )
