"""Welch's t-test and the t distribution (tuilm/sweep/stats.py) against values computed independently.

Reference values were computed once with mpmath 1.3.0 (30 digits: mpmath.betainc(df/2, 1/2, 0, df/(df+t^2),
regularized=True) for the tail, mpmath.findroot for quantiles), a different implementation from the one tested;
the quantiles match the usual textbook t tables (2.228 for 97.5% at 10 degrees of freedom, 2.015 for 95% at 5).
The closed forms for 1 and 2 degrees of freedom are exact.
"""

from __future__ import annotations

import math

import pytest

from tuilm.sweep.stats import t_cdf, t_ppf, welch

MPMATH_CDF = [  # (t, df, P(T <= t))
    (0.5, 3, 0.67427601757592445),
    (2.0, 4.5, 0.94587104640943748),
    (-1.3, 7.2, 0.11683460391731774),
    (3.1, 12, 0.99540500181080433),
    (0.05, 2.2, 0.51785180012611092),
    (6.0, 30, 0.99999930286156164),
]


@pytest.mark.parametrize(("t", "df", "expected"), MPMATH_CDF)
def test_t_cdf_matches_mpmath(t, df, expected):
    assert t_cdf(t, df) == pytest.approx(expected, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("t", [-7.0, -1.0, -0.2, 0.0, 0.3, 1.0, 4.0])
def test_t_cdf_closed_forms(t):
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)  # Cauchy
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [(0.975, 10, 2.2281388519862742), (0.95, 5, 2.0150483733330235), (0.975, 3.37, 2.9936265196099026)],
)
def test_t_quantile_matches_mpmath(p, df, expected):
    assert t_ppf(p, df) == pytest.approx(expected, rel=1e-9)
    assert t_ppf(1 - p, df) == pytest.approx(-expected, rel=1e-9)


def test_welch_matches_an_independent_computation():
    # Three seeds against four (bits/char): every number below from mpmath at 30 digits, as the module docstring says.
    a, b = [2.1996, 2.2017, 2.1731], [2.1502, 2.1689, 2.1444, 2.1611]
    two = welch(a, b)
    assert two.diff == pytest.approx(-0.035316666666667107, rel=1e-9)
    assert two.t == pytest.approx(-3.2969495036710561, rel=1e-9)
    assert two.df == pytest.approx(3.3864198976179728, rel=1e-9)
    assert two.p == pytest.approx(0.038399938649877967, rel=1e-7)
    assert (two.low, two.high) == pytest.approx((-0.067308390004521164, -0.0033249433288130502), rel=1e-7)
    less = welch(a, b, "less")  # H1: b scores lower
    assert less.p == pytest.approx(0.019199969324938984, rel=1e-7) and less.low == -math.inf
    assert welch(a, b, "greater").p == pytest.approx(1 - 0.019199969324938984, rel=1e-7)


def test_welch_refuses_what_it_cannot_test():
    with pytest.raises(ValueError, match="two runs or more"):
        welch([2.1], [2.0, 2.2])
    with pytest.raises(ValueError, match="no spread"):
        welch([2.0, 2.0], [2.0, 2.0])
