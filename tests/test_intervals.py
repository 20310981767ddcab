"""The t interval and the stated differences, pinned against hand computations and t tables."""

import math

import pytest

from dualcam.reports.intervals import Interval, difference, format_interval, t_interval, t_quantile


@pytest.mark.parametrize(("df", "expected"), [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (10, 2.228),
                                              (30, 2.042)])
def test_t_quantile_matches_the_tables_at_95_percent(df, expected):
    assert t_quantile(df) == pytest.approx(expected, abs=5e-4)


def test_t_quantile_at_other_levels_and_refusals():
    assert t_quantile(2, 0.90) == pytest.approx(2.920, abs=5e-4)
    assert t_quantile(5, 0.99) == pytest.approx(4.032, abs=5e-4)
    with pytest.raises(ValueError, match="degrees of freedom must be an integer >= 1, got 0"):
        t_quantile(0)
    with pytest.raises(ValueError, match="level must be in"):
        t_quantile(2, 1.0)


def test_t_interval_by_hand():
    # 0.5, 0.6, 0.7: mean 0.6, s = 0.1, half-width 4.3027 * 0.1 / sqrt(3) = 0.24841
    found = t_interval([0.5, 0.6, 0.7])
    assert found is not None and found.n == 3
    assert (found.mean, found.low, found.high) == pytest.approx((0.6, 0.6 - 0.24841, 0.6 + 0.24841), abs=1e-5)
    assert format_interval(found) == "0.60 [0.35, 0.85]"


def test_missing_values_are_left_out_and_said():
    assert t_interval([None, math.nan]) is None and format_interval(None) == "–"
    one = t_interval([0.25, None, math.nan])
    assert one == Interval(0.25, None, None, 1) and format_interval(one, of=3) == "0.25 (1 seed)"
    two = t_interval([1.0, 3.0, None])  # s = sqrt(2), half-width 12.706 * sqrt(2) / sqrt(2)
    assert two is not None and format_interval(two, of=3) == "2.00 [-10.71, 14.71] (2 seeds)"
    assert format_interval(t_interval([0.0, 0.0, 0.0]), of=3) == "0.00 [0.00, 0.00]"


def test_a_difference_is_stated_only_when_the_intervals_are_apart():
    apart = difference([0.5, 0.6, 0.7], [0.1, 0.15, 0.2])
    assert apart is not None and apart.stated and apart.agreeing == 3
    assert apart.describe() == "higher by 0.45 (3/3 seeds)"
    # the same mean difference, but the intervals overlap; one seed goes the other way
    close = difference([0.5, 0.9, 0.1], [0.1, 0.15, 0.2])
    assert close is not None and not close.stated and close.agreeing == 2
    assert close.describe() == "none stated (2/3 seeds higher)"
    lower = difference([0.0, 0.0, 0.05], [0.5, 0.6, 0.55])
    assert lower is not None and lower.describe() == "lower by 0.53 (3/3 seeds)"
    assert difference([0.2, 0.2], [0.2, 0.2]).describe() == "none stated (mean difference 0)"
    single = difference([0.9, None], [0.1, 0.1])  # one seed has both values: no interval, nothing stated
    assert single is not None and single.describe() == "none stated (1/1 seeds higher)"
    assert difference([None], [0.1]) is None
    with pytest.raises(ValueError, match="one value per seed on each side, got 2 and 1"):
        difference([0.1, 0.2], [0.1])
