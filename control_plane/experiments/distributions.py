"""Normal, Student-t and chi-square distribution functions, from the math module alone.

The experiment report needs p-values and quantiles, and the service must not depend on SciPy
for three functions. The normal CDF comes from `math.erfc`; the Student-t CDF from the
regularized incomplete beta function (a continued fraction evaluated with Lentz's method);
the chi-square survival function from the regularized upper incomplete gamma function (its
power series below the mean, a continued fraction above). Quantiles invert the CDFs with a
safeguarded Newton iteration. Tests check every function against SciPy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = [
    "chi2_sf",
    "normal_cdf",
    "normal_ppf",
    "normal_sf",
    "regularized_beta",
    "regularized_gamma_q",
    "student_t_cdf",
    "student_t_ppf",
    "student_t_two_sided_p",
]

_EPS = 1e-15
_TINY = 1e-300
_MAX_ITERATIONS = 10_000
_SQRT2 = math.sqrt(2.0)


# -- normal ----------------------------------------------------------------------------------


def normal_cdf(x: float) -> float:
    """P(Z <= x) for a standard normal Z (erfc keeps precision in the lower tail)."""
    return 0.5 * math.erfc(-x / _SQRT2)


def normal_sf(x: float) -> float:
    """P(Z > x), precise in the upper tail."""
    return 0.5 * math.erfc(x / _SQRT2)


def _normal_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def normal_ppf(p: float) -> float:
    """The x with P(Z <= x) = p, for 0 < p < 1."""
    _check_probability(p)
    if p > 0.5:  # solve in the lower tail, where the CDF has full relative precision
        return -normal_ppf(1.0 - p)  # 1 - p is exact for p in [0.5, 1]
    return _invert(normal_cdf, _normal_pdf, p, -40.0, 0.0, -1.0)


# -- incomplete beta and Student t -----------------------------------------------------------


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if a <= 0 or b <= 0:
        raise ValueError("a and b must be positive")
    if not 0.0 <= x <= 1.0:
        raise ValueError("x must be within [0, 1]")
    if x in (0.0, 1.0):
        return x
    # The continued fraction converges fast for x below the mean a/(a+b); use the symmetry
    # I_x(a, b) = 1 - I_(1-x)(b, a) above it.
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - regularized_beta(b, a, 1.0 - x)
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    return math.exp(log_front) / a * _beta_fraction(a, b, x)


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction 1/(1+ d1/(1+ d2/(1+ ...))) of I_x(a, b), by Lentz's method."""
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, _MAX_ITERATIONS):
        # Even term d_2m, then odd term d_2m+1 of the fraction.
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            delta = c * d
            result *= delta
        if abs(delta - 1.0) < _EPS:
            return result
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def _t_parts(t: float, df: float) -> tuple[bool, float]:
    """(in the tails, value): away from 0, the two-sided tail I_x(df/2, 1/2) with
    x = df/(df+t^2); near 0, the central mass I_y(1/2, df/2) with y = t^2/(df+t^2). Whichever
    is the smaller quantity is computed directly, so neither loses digits to 1 - (almost 1)."""
    if df <= 0:
        raise ValueError("degrees of freedom must be positive")
    square = t * t
    x = df / (df + square)
    # The same switch point as regularized_beta's own: below it the tail is the small part.
    if x <= (df + 2.0) / (df + 5.0):
        return True, regularized_beta(df / 2.0, 0.5, x)
    return False, regularized_beta(0.5, df / 2.0, square / (df + square))


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom (df may be fractional)."""
    if math.isinf(t):
        return 0.0
    tails, value = _t_parts(t, df)
    return value if tails else 1.0 - value


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tails, value = _t_parts(t, df)
    if tails:
        return 1.0 - 0.5 * value if t > 0 else 0.5 * value
    return 0.5 + 0.5 * value if t > 0 else 0.5 - 0.5 * value


def _student_t_pdf(t: float, df: float) -> float:
    log_density = (
        math.lgamma((df + 1.0) / 2.0)
        - math.lgamma(df / 2.0)
        - 0.5 * math.log(df * math.pi)
        - (df + 1.0) / 2.0 * math.log1p(t * t / df)
    )
    return math.exp(log_density)


def student_t_ppf(p: float, df: float) -> float:
    """The t with P(T <= t) = p, for 0 < p < 1."""
    _check_probability(p)
    if df <= 0:
        raise ValueError("degrees of freedom must be positive")
    if p > 0.5:
        return -student_t_ppf(1.0 - p, df)
    if p == 0.5:
        return 0.0
    return _invert(
        lambda t: student_t_cdf(t, df),
        lambda t: _student_t_pdf(t, df),
        p,
        -1e12,
        0.0,
        normal_ppf(p),
    )


# -- incomplete gamma and chi-square ---------------------------------------------------------


def regularized_gamma_q(a: float, x: float) -> float:
    """Q(a, x) = Gamma(a, x) / Gamma(a), the regularized upper incomplete gamma function."""
    if a <= 0:
        raise ValueError("a must be positive")
    if x <= 0:
        return 1.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        # Power series of the lower function P(a, x); Q = 1 - P.
        term = total = 1.0 / a
        denominator = a
        for _ in range(_MAX_ITERATIONS):
            denominator += 1.0
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * _EPS:
                return max(0.0, 1.0 - math.exp(log_front) * total)
        raise ArithmeticError(f"incomplete gamma series did not converge for a={a}, x={x}")
    # Continued fraction of Q(a, x), by Lentz's method.
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    result = d
    for i in range(1, _MAX_ITERATIONS):
        numerator = -i * (i - a)
        b += 2.0
        d = numerator * d + b
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = b + numerator / c
        c = c if abs(c) > _TINY else _TINY
        delta = c * d
        result *= delta
        if abs(delta - 1.0) < _EPS:
            return math.exp(log_front) * result
    raise ArithmeticError(f"incomplete gamma fraction did not converge for a={a}, x={x}")


def chi2_sf(statistic: float, dof: int) -> float:
    """P(X >= statistic) for a chi-square variable with `dof` degrees of freedom."""
    if dof < 1:
        raise ValueError("degrees of freedom must be at least 1")
    return regularized_gamma_q(dof / 2.0, statistic / 2.0)


# -- helpers ---------------------------------------------------------------------------------


def _check_probability(p: float) -> None:
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be strictly between 0 and 1, not {p}")


def _invert(
    cdf: Callable[[float], float],
    pdf: Callable[[float], float],
    p: float,
    low: float,
    high: float,
    start: float,
) -> float:
    """Solve cdf(x) = p for an increasing cdf: Newton steps, bisection when one overshoots."""
    x = min(max(start, low), high)
    for _ in range(200):
        error = cdf(x) - p
        if error > 0:
            high = x
        else:
            low = x
        density = pdf(x)
        step = error / density if density > 0 else math.inf
        candidate = x - step
        if not low < candidate < high:
            candidate = (low + high) / 2.0  # Newton left the bracket: bisect instead
        if abs(candidate - x) <= 1e-14 * max(1.0, abs(x)):
            return candidate
        x = candidate
    return x
