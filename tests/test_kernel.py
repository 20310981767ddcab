"""ADDK pinned to its formula, its direction, its alpha behaviour and every degenerate map."""

import numpy as np
import pytest
import torch

from dualcam.maps.kernel import (
    EXPONENT_KNEE,
    EXPONENT_SPAN,
    PEAK_FLOOR,
    addk,
    evidence,
    gated,
    get_kernel,
    normalize_by_peak,
    overlap,
    sharpen,
    unshared,
)


def paper_addk(x, xp, alpha):
    """The paper's formula, written out for maps with a positive peak."""
    return np.exp(alpha * (x / x.max() - xp / xp.max()))


def test_matches_hand_computed_values():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    xp = np.array([[2.0, 0.0], [1.0, 2.0]])
    # x / 4 = [.25 .5 .75 1], x' / 2 = [1 0 .5 1] -> diff [-.75 .5 .25 0]
    expected = np.exp(2.0 * np.array([[-0.75, 0.5], [0.25, 0.0]]))
    np.testing.assert_allclose(addk(x, xp, alpha=2.0), expected, rtol=1e-12)


def test_matches_formula_on_random_positive_peak_maps():
    rng = np.random.default_rng(0)
    x, xp = rng.normal(size=(2, 3, 7, 7)) + 1.0, rng.normal(size=(2, 3, 7, 7)) + 1.0
    out = addk(x, xp, alpha=5.0)
    for i in np.ndindex(2, 3):
        np.testing.assert_allclose(out[i], paper_addk(x[i], xp[i], 5.0), rtol=1e-10)


def test_directed_not_symmetric():
    x = np.array([[0.0, 1.0], [0.5, 0.2]])
    xp = np.array([[1.0, 0.0], [0.3, 0.9]])
    k, k_rev = addk(x, xp), addk(xp, x)
    assert not np.allclose(k, k_rev)
    np.testing.assert_allclose(k * k_rev, np.ones_like(k), rtol=1e-12)  # exp(d) * exp(-d)
    assert k[0, 1] > 1 > k[0, 0]  # high where expert 1 leads, low where expert 2 does


def test_identical_maps_give_ones():
    x = torch.rand(4, 6, 6) + 0.1
    torch.testing.assert_close(addk(x, x.clone(), alpha=50.0), torch.ones_like(x))


def test_max_is_per_map_not_per_batch():
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 5, 5)), rng.random((2, 5, 5))
    a[1] *= 1000.0  # a batch-wide max would flatten map 0
    batched = addk(a, b, alpha=5.0)
    for i in range(2):
        np.testing.assert_allclose(batched[i], addk(a[i], b[i], alpha=5.0), rtol=1e-12)


def test_scale_invariant_per_map():
    x, xp = torch.rand(7, 7) + 0.1, torch.rand(7, 7) + 0.1
    torch.testing.assert_close(addk(x, xp), addk(37.0 * x, 0.01 * xp))


def test_larger_alpha_concentrates_the_map():
    rng = np.random.default_rng(2)
    x, xp = rng.random((7, 7)), rng.random((7, 7))
    shares = []
    for alpha in (1.0, 5.0, 15.0, 50.0):
        k = addk(x, xp, alpha=alpha)
        shares.append(k.max() / k.sum())
    assert all(later > earlier for earlier, later in zip(shares, shares[1:]))
    assert shares[-1] > 0.5 > shares[0]
    # exp is monotonic: the ranking of cells never depends on alpha
    assert len({int(addk(x, xp, alpha=a).argmax()) for a in (1.0, 5.0, 50.0)}) == 1


def test_alpha_zero_is_flat():
    x, xp = torch.rand(3, 5, 5), torch.rand(3, 5, 5)
    torch.testing.assert_close(addk(x, xp, alpha=0.0), torch.ones(3, 5, 5))


@pytest.mark.parametrize("fill", [0.0, 3.0, -2.0])
def test_constant_and_zero_maps_are_finite(fill):
    c = torch.full((2, 4, 4), fill)
    other = torch.rand(2, 4, 4) + 0.1
    for out in (addk(c, other), addk(other, c), addk(c, c)):
        assert torch.isfinite(out).all()
    torch.testing.assert_close(addk(c, c), torch.ones(2, 4, 4))


def test_zero_map_contributes_nothing():
    other = torch.rand(5, 5) + 0.1
    zero = torch.zeros(5, 5)
    # K(x, 0) = exp(alpha * x / max x): CAM1 sharpened alone
    torch.testing.assert_close(addk(other, zero, alpha=5.0), torch.exp(5.0 * other / other.max()))


def test_all_negative_map_keeps_order_and_bounds():
    neg = -torch.rand(6, 6) - 0.5
    n = normalize_by_peak(neg)
    assert (n <= 0).all() and (n >= -1.0 / PEAK_FLOOR - 1e-5).all()
    # order kept: the least negative cell stays the largest
    assert int(n.argmax()) == int(neg.argmax())
    out = addk(torch.rand(6, 6) + 0.1, neg, alpha=100.0)
    assert torch.isfinite(out).all()


def test_tiny_positive_peak_does_not_blow_up():
    x = -torch.rand(7, 7) - 1.0
    x[3, 3] = 1e-30  # a peak that is a rounding error next to the troughs
    n = normalize_by_peak(x)
    assert n.min() >= -1.0 / PEAK_FLOOR - 1e-5


def test_finite_in_float32_up_to_alpha_100_on_extreme_maps():
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(size=(8, 7, 7)) * 1e6, dtype=torch.float32)
    xp = torch.tensor(-rng.normal(size=(8, 7, 7)) * 1e6, dtype=torch.float32)
    for alpha in (5.0, 50.0, 100.0):
        out = addk(x, xp, alpha=alpha)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert out.max() <= np.exp(EXPONENT_KNEE + EXPONENT_SPAN) * 1.0001


def test_saturation_keeps_order_and_is_exact_below_the_knee():
    x = torch.linspace(0.1, 1.0, 49).reshape(7, 7)
    xp = torch.linspace(1.0, -0.5, 49).reshape(7, 7)  # diff spans [-0.9, 1.5] after normalization
    out = addk(x, xp, alpha=100.0).flatten()
    assert (out[1:] > out[:-1]).all()  # strictly increasing: saturation never ties two cells
    exponent = 100.0 * (x / x.max() - xp / xp.max())
    exact = exponent <= EXPONENT_KNEE
    torch.testing.assert_close(addk(x, xp, alpha=100.0)[exact], torch.exp(exponent[exact]))


def test_types_devices_and_leading_dims():
    x, xp = np.random.rand(2, 3, 4, 5, 5), np.random.rand(2, 3, 4, 5, 5)
    out = addk(x, xp)
    assert isinstance(out, np.ndarray) and out.shape == x.shape
    t = addk(torch.from_numpy(x).half(), torch.from_numpy(xp).half())
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == x.shape
    np.testing.assert_allclose(addk(x.astype(np.float32), xp.astype(np.float32)), out, rtol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises(bad):
    x = np.ones((4, 4))
    x[1, 2] = bad
    with pytest.raises(ValueError, match="x holds NaN or infinite"):
        addk(x, np.ones((4, 4)))
    with pytest.raises(ValueError, match="x_prime holds NaN or infinite"):
        addk(np.ones((4, 4)), x)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="same shape"):
        addk(np.ones((4, 4)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="two dims"):
        addk(np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="alpha"):
        addk(np.ones((4, 4)), np.ones((4, 4)), alpha=float("nan"))


def test_sharpen_is_exp_of_peak_normalized_map():
    x = np.array([[1.0, 2.0], [-1.0, 4.0]])
    np.testing.assert_allclose(sharpen(x, 3.0), np.exp(3.0 * x / 4.0), rtol=1e-12)


def test_gated_keeps_cam1_support_and_reweights_by_addk():
    x = np.array([[0.0, 2.0], [-1.0, 4.0]])
    xp = np.array([[1.0, 1.0], [0.5, 0.2]])
    expected = np.clip(x, 0, None) / 4.0 * paper_addk(x, xp, 2.0)
    np.testing.assert_allclose(gated(x, xp, 2.0), expected, rtol=1e-12)
    assert gated(x, xp, 2.0)[1, 0] == 0  # no positive evidence in CAM1, nothing kept


def test_gated_of_a_map_without_positive_values_is_zero():
    x = -np.ones((3, 3))
    assert not gated(x, np.ones((3, 3)), 5.0).any()
    ones, zeros = torch.ones(3, 3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)
    assert torch.equal(gated(torch.tensor(x), ones, 5.0), zeros)


def test_kernels_by_name():
    assert get_kernel("addk") is addk and get_kernel("gated") is gated and get_kernel("unshared") is unshared
    with pytest.raises(ValueError, match="unknown kernel 'nope'.*addk, gated, unshared"):
        get_kernel("nope")


def test_evidence_is_the_positive_part_over_its_peak():
    x = torch.tensor([[[4.0, 2.0], [1.0, -1.0]], [[-1.0, -2.0], [-3.0, -4.0]]], dtype=torch.float64)
    expected = torch.tensor([[[1.0, 0.5], [0.25, 0.0]], [[0.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    assert torch.equal(evidence(x), expected)


def test_overlap_on_hand_made_maps():
    x = np.array([[4.0, 2.0], [1.0, -1.0]])   # ReLU mass 7; evidence [1, .5; .25, 0]
    xp = np.array([[1.0, 2.0], [0.5, 3.0]])   # evidence [1/3, 2/3; 1/6, 1]
    # expert 2 claims the cells (0, 1) and (1, 1): CAM1 mass 2 + 0 of 7
    assert overlap(x, xp) == 2.0 / 7.0
    # the other way round: ReLU(x') mass 6.5; x claims (0, 0) (1 >= 1/3) and (1, 0) (1/4 >= 1/6): 1 + 0.5
    assert overlap(xp, x) == 1.5 / 6.5
    # a tie counts as claimed: both maps peak in the same cell, nothing else of CAM1's is claimed
    assert overlap(np.array([[2.0, 1.0], [0.0, 0.0]]), np.array([[5.0, 0.0], [0.0, 0.0]])) == 2.0 / 3.0


def test_overlap_limits():
    x = torch.rand(3, 6, 6, dtype=torch.float64) - 0.2
    assert torch.equal(overlap(x, x.clone()), torch.ones(3, dtype=torch.float64))  # all of it claimed
    assert torch.equal(overlap(x, 7.3 * x), torch.ones(3, dtype=torch.float64))  # scale-free, rounding aside
    assert torch.equal(overlap(x.float(), 0.37 * x.float()), torch.ones(3))
    none = -torch.rand(3, 6, 6, dtype=torch.float64)
    assert torch.equal(overlap(x, none), torch.zeros(3, dtype=torch.float64))  # expert 2 claims nothing
    assert torch.equal(overlap(none, x), torch.zeros(3, dtype=torch.float64))  # no evidence of expert 1's to share
    assert torch.equal(overlap(torch.zeros(6, 6), torch.zeros(6, 6)), torch.tensor(0.0))


def test_overlap_range_shapes_and_types():
    rng = np.random.default_rng(4)
    x, xp = rng.normal(size=(2, 50, 7, 7)), rng.normal(size=(2, 50, 7, 7))
    out = overlap(x, xp)
    assert isinstance(out, np.ndarray) and out.shape == (2, 50)
    assert (out >= 0).all() and (out <= 1).all() and 0 < out.mean() < 1
    t = overlap(torch.from_numpy(x).half(), torch.from_numpy(xp).half())
    assert t.dtype == torch.float32 and t.shape == (2, 50)
    for i in np.ndindex(2, 50):  # per map, never per batch
        assert overlap(x[i], xp[i]) == out[i]
    with pytest.raises(ValueError, match="overlap: maps must have the same shape"):
        overlap(np.ones((4, 4)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="overlap: x_prime holds NaN"):
        overlap(np.ones((4, 4)), np.full((4, 4), np.nan))


def test_unshared_on_hand_made_maps():
    x = np.array([[4.0, 3.0], [1.0, -1.0]])   # evidence [1, .75; .25, 0]
    xp = np.array([[2.0, 0.0], [0.0, -5.0]])  # expert 2 claims CAM1's peak only: evidence [1, 0; 0, 0]
    # strongest unclaimed evidence t = .75; exponent x/4 - t * min(e, e') = [1 - .75, .75; .25, -.25]
    np.testing.assert_allclose(unshared(x, xp, 2.0), np.exp(2.0 * np.array([[0.25, 0.75], [0.25, -0.25]])), rtol=1e-12)
    assert unshared(x, xp, 2.0).argmax() == 1  # the claimed peak gave way to CAM1's own evidence
    assert sharpen(x, 2.0).argmax() == 0


def test_unshared_falls_back_to_cam1_where_nothing_is_unclaimed():
    x = torch.rand(4, 6, 6, dtype=torch.float64) - 0.3
    raised = torch.maximum(x, 0.5 * x.amax((-2, -1), keepdim=True))  # same peak, more claimed elsewhere
    for claims_all in (x.clone(), 8.0 * x, raised):
        assert (evidence(claims_all) >= evidence(x)).all()
        torch.testing.assert_close(unshared(x, claims_all, 5.0), sharpen(x, 5.0), rtol=0, atol=0)
    # a second map with no positive value claims nothing: CAM1 sharpened, as addk(x, 0)
    claims_nothing = -torch.rand(4, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(unshared(x, claims_nothing, 5.0), sharpen(x, 5.0), rtol=0, atol=0)
    torch.testing.assert_close(unshared(x, 7.3 * x, 15.0), sharpen(x, 15.0))  # rounding aside


def test_unshared_only_takes_out_and_by_at_most_alpha_times_t():
    rng = np.random.default_rng(5)
    x, xp = rng.normal(size=(200, 6, 6)), rng.normal(size=(200, 6, 6))
    k, ref = unshared(x, xp, 5.0), sharpen(x, 5.0)
    e, e_prime = evidence(torch.tensor(x)).numpy(), evidence(torch.tensor(xp)).numpy()
    t = np.clip(e - e_prime, 0, None).max(axis=(1, 2), keepdims=True)
    assert (k <= ref * (1 + 1e-12)).all()  # never above CAM1 sharpened
    assert (k >= ref * np.exp(-5.0 * t) * (1 - 1e-12)).all()
    unclaimed = np.broadcast_to(e_prime == 0, k.shape)
    np.testing.assert_allclose(k[unclaimed], ref[unclaimed], rtol=1e-12)
    assert (k < ref * (1 - 1e-9)).any()  # and it does take out somewhere


def test_unshared_guards_like_addk():
    big = torch.tensor(np.random.default_rng(6).normal(size=(8, 7, 7)) * 1e6, dtype=torch.float32)
    out = unshared(big, -big, 100.0)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    np.testing.assert_array_equal(unshared(-np.ones((3, 3)), np.ones((3, 3)), 5.0), sharpen(-np.ones((3, 3)), 5.0))
    with pytest.raises(ValueError, match="unshared: x holds NaN"):
        unshared(np.full((4, 4), np.inf), np.ones((4, 4)))
    with pytest.raises(ValueError, match="unshared: alpha"):
        unshared(np.ones((4, 4)), np.ones((4, 4)), alpha=-1.0)
