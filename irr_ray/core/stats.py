"""Confidence intervals: binomial ones for refusal rates, and Student-t ones for a mean over seeds.

A refusal rate is k refusals out of n judged prompts. The Wilson score interval (Wilson, 1927)
inverts the normal test of p̂ = k/n around the true p, so it stays inside [0, 1] and keeps its
coverage near 0 and 1, where refusal rates of aligned models live (the Wald interval collapses to
a point there). For z the standard-normal quantile (1.96 for 95%):

    centre    = (p̂ + z²/(2n)) / (1 + z²/n)
    half-width = z · sqrt(p̂(1 − p̂)/n + z²/(4n²)) / (1 + z²/n)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MeanInterval", "mean_interval", "wilson_interval"]


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% (z = 1.96) Wilson score interval ``(low, high)`` for ``k`` successes in ``n`` trials.

    ``n = 0`` carries no information and returns ``(0.0, 1.0)``.
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if z <= 0:
        raise ValueError(f"wilson_interval needs z > 0, got {z}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # In exact arithmetic k = 0 gives low = 0 and k = n gives high = 1; pin them against round-off.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class MeanInterval:
    """The mean of ``n`` values and its 95% interval (``low``/``high`` None when ``n < 2``)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    def contains(self, value: float) -> bool:
        """``value`` lies in the interval (for ``n < 2``: equals the one value)."""
        if self.low is None or self.high is None:
            return math.isclose(self.mean, value, abs_tol=1e-9)
        return self.low - 1e-9 <= value <= self.high + 1e-9

    def label(self, digits: int = 2) -> str:
        """``0.98 [0.95, 1.00]`` (``0.98 (n=1)`` without an interval)."""
        if self.low is None or self.high is None:
            return f"{self.mean:.{digits}f} (n={self.n})"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> MeanInterval:
    """Mean of ``values`` (e.g. one per seed) with its Student-t interval.

    For n values with sample standard deviation s, the interval is
    ``mean ± t_{(1+confidence)/2, n−1} · s / sqrt(n)`` (Student, 1908): the seeds are few, so the
    normal quantile would be too narrow. Equal values give a zero-width interval; ``n = 1`` gives
    none (``low``/``high`` None) — one seed says nothing about the spread across seeds.
    """
    from scipy.stats import t as student_t

    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_interval needs at least one value")
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return MeanInterval(mean, None, None, n)
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    half = float(student_t.ppf((1 + confidence) / 2, n - 1)) * math.sqrt(var / n)
    return MeanInterval(mean, mean - half, mean + half, n)
