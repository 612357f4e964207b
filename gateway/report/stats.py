"""Small statistics for `effgate report`: proportions with intervals, tests, percentiles.

Wilson's score interval for one acceptance rate, Newcombe's hybrid score interval for the
difference of two (method 10 in Newcombe 1998), and a two-sided two-proportion z-test. All
are plain closed forms, so the report needs no scipy.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n; (nan, nan) when n == 0."""
    if n <= 0:
        return math.nan, math.nan
    phat = k / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float, float]:
    """p2 - p1 with its 95% interval (Newcombe's hybrid score method)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    diff = p2 - p1
    low = diff - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    high = diff + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    return diff, low, high


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of the pooled z-test for p1 == p2."""
    pooled = (k1 + k2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if var <= 0:
        return 1.0
    z = abs(k1 / n1 - k2 / n2) / math.sqrt(var)
    return math.erfc(z / math.sqrt(2))


def percentiles(values: NDArray[np.float64], qs: tuple[float, ...]) -> tuple[float | None, ...]:
    """Linear-interpolated percentiles (numpy's default) of the finite values; None if none."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return tuple(None for _ in qs)
    return tuple(float(v) for v in np.percentile(finite, qs))


def ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def round_up(value: float, step: float = 0.01) -> float:
    """Round up to the grid (bars move in whole points); tolerant of float noise."""
    return round(math.ceil(round(value / step, 6)) * step, 4)
