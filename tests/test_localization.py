"""The localization measures and the CAM correlation on hand-made maps with known answers."""

import math

import numpy as np
import pytest
import torch

from dualcam.maps import localization as loc


def _box(x, y, w, h, size=(4, 4)):
    return loc.box_masks([[(x, y, w, h)]], size)


def test_box_masks_cover_exactly_the_union_of_the_boxes():
    mask = loc.box_masks([[(2, 1, 3, 2), (0, 4, 1, 1)], []], (5, 6))
    expected = np.zeros((2, 5, 6), bool)
    expected[0, 1:3, 2:5] = expected[0, 4, 0] = True
    np.testing.assert_array_equal(mask.numpy(), expected)


def test_pointing_game_uses_the_centre_of_tied_maxima():
    maps = torch.zeros(3, 10, 10)
    maps[0, 7, 5] = 1  # peak at x 5, y 7
    maps[1, 7, 1] = 1  # outside
    maps[2, 4, 2] = maps[2, 4, 6] = 1  # two tied maxima: their centre (4, 4) is in the box
    targets = loc.box_masks([[(4, 3, 3, 5)]] * 3, (10, 10))
    assert loc.pointing_game(maps, targets).tolist() == [True, False, True]


def test_pointing_game_hits_any_of_several_boxes():
    maps = torch.zeros(1, 10, 10)
    maps[0, 8, 8] = 1
    assert not loc.pointing_game(maps, loc.box_masks([[(0, 0, 3, 3)]], (10, 10))).item()
    assert loc.pointing_game(maps, loc.box_masks([[(0, 0, 3, 3), (7, 7, 2, 2)]], (10, 10))).item()


def test_pointing_game_counts_a_centre_on_the_box_edge():
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0] = maps[0, 0, 1] = 1  # centre x = 0.5, between pixel 0 (outside) and 1 (inside)
    assert loc.pointing_game(maps, _box(1, 0, 2, 2)).item()
    assert not loc.pointing_game(maps, _box(2, 0, 2, 2)).item()
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0], maps[0, 0, 1], maps[0, 0, 3] = 1, 1, 1  # centre x = 4 / 3, in pixel 1 only
    assert loc.pointing_game(maps, _box(1, 0, 1, 1)).item()
    assert not loc.pointing_game(maps, _box(2, 0, 1, 1)).item()


def test_energy_in_box_after_relu():
    m = torch.zeros(1, 4, 4)
    m[0, 0, 0], m[0, 0, 1], m[0, 3, 3], m[0, 2, 2] = 2.0, 1.0, 1.0, -5.0
    assert loc.energy_in_box(m, _box(0, 0, 2, 1)).item() == 0.75
    assert loc.energy_in_box(m, loc.box_masks([[(0, 0, 2, 1), (3, 3, 1, 1)]], (4, 4))).item() == 1.0
    assert loc.energy_in_box(-torch.ones(1, 4, 4), _box(0, 0, 2, 2)).item() == 0  # no positive mass, no energy
    assert math.isclose(loc.energy_in_box(torch.ones(1, 4, 4), _box(0, 0, 2, 2)).item(), 4 / 16, rel_tol=1e-6)


def test_iou_of_the_top_region():
    m = torch.zeros(1, 6, 6)
    m[0, 0:2, 0:2] = 1.0  # top region: 4 pixels
    assert loc.iou(m, _box(0, 0, 2, 2, (6, 6))).item() == 1.0
    assert math.isclose(loc.iou(m, _box(1, 0, 2, 2, (6, 6))).item(), 2 / 6, rel_tol=1e-6)
    assert math.isclose(loc.iou(torch.ones(1, 6, 6), _box(0, 0, 3, 2, (6, 6))).item(), 6 / 36, rel_tol=1e-6)  # all top


def test_pooled_box_is_the_box_on_the_grid():
    pooled = loc.pooled(loc.box_masks([[(10, 20, 20, 10)], [(5, 0, 10, 10)]], (60, 60)), (6, 6))
    expected = np.zeros((6, 6))
    expected[2, 1:3] = 1
    np.testing.assert_allclose(pooled[0].numpy(), expected)
    assert math.isclose(pooled[1, 0, 0].item(), 0.5) and math.isclose(pooled[1, 0, 1].item(), 0.5)


def test_measure_of_the_pooled_box_points_inside_it():
    targets = loc.box_masks([[(10, 20, 20, 10)]], (60, 60))
    result = loc.measure(loc.pooled(targets, (6, 6)), targets)
    assert result["pointing"].item() == 1.0
    assert 0.5 < result["energy"].item() < 1.0  # bilinear upsampling spreads some mass outside
    assert result["iou"].item() > 0.5


def test_cam_correlation_known_values():
    a, b = torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)
    a[0, 0, 0] = b[0, 0, 1] = 1.0
    assert loc.cam_correlation(a, b).item() == pytest.approx(-1 / 3)  # centred: (3, -1, -1, -1) . (-1, 3, -1, -1)
    ramp = torch.arange(16.0).reshape(1, 4, 4)
    assert loc.cam_correlation(ramp, 3 * ramp - 7).item() == pytest.approx(1.0)  # scale-free
    assert loc.cam_correlation(ramp, -ramp).item() == pytest.approx(-1.0)
    assert loc.cam_correlation(ramp, ramp).item() == pytest.approx(1.0)


def test_cam_correlation_of_constant_maps():
    ramp = torch.arange(16.0).reshape(1, 4, 4)
    flat, zero = torch.full((1, 4, 4), 2.5), torch.zeros(1, 4, 4)
    assert loc.cam_correlation(flat, zero).item() == 1.0  # neither prefers a place
    assert loc.cam_correlation(zero, zero).item() == 1.0
    assert loc.cam_correlation(flat, ramp).item() == 0.0
    assert loc.cam_correlation(ramp, flat + 1e-7 * ramp).item() == 0.0  # within rounding of constant
    batch = loc.cam_correlation(torch.cat([ramp, flat]), torch.cat([ramp, ramp]))
    assert batch.tolist() == pytest.approx([1.0, 0.0])
