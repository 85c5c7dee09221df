"""Binomial confidence intervals for refusal rates.

A refusal rate is k refusals out of n judged prompts. The Wilson score interval (Wilson, 1927)
inverts the normal test of p̂ = k/n around the true p, so it stays inside [0, 1] and keeps its
coverage near 0 and 1, where refusal rates of aligned models live (the Wald interval collapses to
a point there). For z the standard-normal quantile (1.96 for 95%):

    centre    = (p̂ + z²/(2n)) / (1 + z²/n)
    half-width = z · sqrt(p̂(1 − p̂)/n + z²/(4n²)) / (1 + z²/n)
"""

from __future__ import annotations

import math

__all__ = ["wilson_interval"]


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
