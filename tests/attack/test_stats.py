"""Wilson score interval against published values and its defining properties."""

from __future__ import annotations

import math

import pytest

from irr_ray.core.stats import wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857, Table I (method 3, Wilson score)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        # symmetric case and the boundaries
        (50, 100, 0.4038, 0.5962),
        (100, 100, 0.9630, 1.0),
    ],
)
def test_wilson_matches_published_values(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


def test_wilson_is_the_score_test_inversion() -> None:
    """Both bounds p solve |k/n − p| = z·sqrt(p(1 − p)/n) (the score test at level z)."""
    z = 1.96
    for k, n in [(3, 17), (40, 41), (12, 1000)]:
        for p in wilson_interval(k, n, z):
            assert abs(k / n - p) == pytest.approx(z * math.sqrt(p * (1 - p) / n), rel=1e-9)


def test_wilson_edge_cases() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 100)[0] == 0.0
    assert wilson_interval(100, 100)[1] == 1.0
    narrow, wide = wilson_interval(30, 100, z=1.0), wilson_interval(30, 100, z=2.576)
    assert wide[0] < narrow[0] < 0.3 < narrow[1] < wide[1]
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(5, 3)
