"""Means with t intervals over seeds, and differences stated only when those intervals are apart.

``make experiment`` runs each regime once per seed; a table cell is then the mean over seeds with
a 95% Student t interval (N - 1 degrees of freedom). With three seeds that interval is wide (the
quantile is 4.303), which is the point: it shows how little three runs pin down. The t quantile
is computed exactly here (Abramowitz and Stegun 26.7.3-4 for integer degrees of freedom, then
bisection), so no statistics package is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

LEVEL = 0.95


def t_coverage(t: float, df: int) -> float:
    """P(|T| <= t) for Student's T with ``df`` (integer >= 1) degrees of freedom, in closed form."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    term, total = 1.0, 1.0
    if df % 2:  # odd: (2/pi)(theta + sin cos (1 + 2/3 cos^2 + 2.4/3.5 cos^4 + ...)), the sum empty for df 1
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0))
    for k in range(1, df // 2):  # even: sin (1 + 1/2 cos^2 + 1.3/2.4 cos^4 + ...)
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The t with P(|T| <= t) = ``level``: the half-width of a ``level`` interval in standard errors."""
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom must be an integer >= 1, got {df!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    low, high = 0.0, 1.0
    while t_coverage(high, df) < level:
        high *= 2
    for _ in range(100):  # bisection: the coverage rises monotonically with t
        middle = (low + high) / 2
        low, high = (middle, high) if t_coverage(middle, df) < level else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class Interval:
    """A mean over seeds and its t interval; ``low`` and ``high`` are None with fewer than two values."""

    mean: float
    low: float | None
    high: float | None
    n: int


def t_interval(values: Sequence[float | None], level: float = LEVEL) -> Interval | None:
    """The mean of the finite ``values`` (None and NaN are left out: a measure a seed could not
    take) with its t interval, mean +- t(n-1) s / sqrt(n); None when no value is finite."""
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return None
    n = len(kept)
    mean = sum(kept) / n
    if n < 2:
        return Interval(mean, None, None, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1))
    half = t_quantile(n - 1, level) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def format_interval(interval: Interval | None, of: int | None = None) -> str:
    """``0.62 [0.48, 0.76]``; the mean alone from one value, "–" from none, and ``(2 seeds)``
    appended when fewer than ``of`` seeds had a value (``(1 seed)``)."""
    if interval is None:
        return "–"
    text = f"{interval.mean:.2f}"
    if interval.low is not None and interval.high is not None:
        text += f" [{interval.low:.2f}, {interval.high:.2f}]"
    if of is not None and interval.n < of:
        text += f" ({interval.n} seed{'' if interval.n == 1 else 's'})"
    return text


@dataclass(frozen=True)
class Difference:
    """``a`` against ``b`` over the same seeds: stated only when their intervals do not overlap."""

    mean: float
    stated: bool
    agreeing: int
    seeds: int

    def describe(self) -> str:
        """``higher by 0.42 (3/3 seeds)`` when stated, else ``none stated (2/3 seeds higher)``."""
        if self.mean == 0:
            return "none stated (mean difference 0)"
        direction = "higher" if self.mean > 0 else "lower"
        if self.stated:
            return f"{direction} by {abs(self.mean):.2f} ({self.agreeing}/{self.seeds} seeds)"
        return f"none stated ({self.agreeing}/{self.seeds} seeds {direction})"


def difference(a: Sequence[float | None], b: Sequence[float | None], level: float = LEVEL) -> Difference | None:
    """Is ``a`` above or below ``b``, seed by seed (``a[i]`` and ``b[i]`` from the same seed)?
    Stated when the two t intervals do not overlap; ``agreeing`` counts the seeds whose own
    difference has the sign of the mean difference (a tie agrees with neither). None when no seed
    has both values."""
    if len(a) != len(b):
        raise ValueError(f"difference needs one value per seed on each side, got {len(a)} and {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and math.isfinite(x - y)]
    if not pairs:
        return None
    deltas = [x - y for x, y in pairs]
    mean = sum(deltas) / len(deltas)
    one, two = t_interval([x for x, _ in pairs], level), t_interval([y for _, y in pairs], level)
    assert one is not None and two is not None
    stated = mean != 0 and _apart(one, two)
    agreeing = sum(1 for d in deltas if d * mean > 0)
    return Difference(mean, stated, agreeing, len(pairs))


def _apart(one: Interval, two: Interval) -> bool:
    """Do the intervals not overlap? Single values (no interval) are never apart."""
    if one.low is None or one.high is None or two.low is None or two.high is None:
        return False
    return one.high < two.low or two.high < one.low
