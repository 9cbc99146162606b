"""Seeds folded into numbers: Welch's t-test and its confidence interval, in the standard library alone.

Student's t distribution function through the regularized incomplete beta function, evaluated with math.lgamma
and the continued fraction of Numerical Recipes (Press et al., 3rd ed., section 6.4, `betacf`, modified Lentz);
the quantile by bisection on it. tests/test_stats.py checks both against values computed with scipy.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

ALTERNATIVES = ("two-sided", "less", "greater")  # the hypothesis about mean(b) - mean(a) against 0


def _betacf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):  # the continued fraction converges fast here; use the symmetry otherwise
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (> 0, not necessarily whole) degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The t with P(T <= t) = p, by bisection (t_cdf is monotone)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > p:
        lo *= 2.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Welch:
    """Welch's unequal-variances t-test of mean(b) - mean(a)."""

    diff: float  # mean(b) - mean(a)
    low: float  # the confidence interval of diff (one-sided tests: one end infinite)
    high: float
    t: float
    df: float
    p: float
    alternative: str
    confidence: float


def welch(a: list[float], b: list[float], alternative: str = "two-sided", confidence: float = 0.95) -> Welch:
    """ValueError unless each side has two values or more: one run says nothing about the seed noise."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's t-test needs two runs or more on each side, got {len(a)} and {len(b)}")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(b) - statistics.fmean(a)
    se = math.sqrt(va + vb)
    if se == 0.0:
        raise ValueError("every run on both sides scored the same: no spread to test against")
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = diff / se
    if alternative == "two-sided":
        p = 2.0 * (1.0 - t_cdf(abs(t), df))
        half = t_ppf(0.5 + confidence / 2.0, df) * se
        low, high = diff - half, diff + half
    elif alternative == "less":  # H1: mean(b) < mean(a)
        p = t_cdf(t, df)
        low, high = -math.inf, diff + t_ppf(confidence, df) * se
    else:
        p = 1.0 - t_cdf(t, df)
        low, high = diff - t_ppf(confidence, df) * se, math.inf
    return Welch(diff, low, high, t, df, min(1.0, p), alternative, confidence)


def describe(values: list[float]) -> tuple[float, float | None, int]:
    """(mean, sample standard deviation or None for one value, n)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)
