"""Peak and top-region box of maps: plateaus, constant maps, batches."""

import torch

from dualcam.maps.regions import TOP_REGION, bounding_box, peak, top_region


def test_the_peak_of_a_plateau_is_its_centre():
    maps = torch.zeros(2, 5, 7)
    maps[0, 1:4, 2:7] = 3.0  # a 3 x 5 plateau of tied maxima
    maps[1, 4, 0] = 1.0      # a single maximum in a corner
    assert peak(maps).tolist() == [[4.0, 2.0], [0.0, 4.0]]


def test_top_region_is_halfway_from_min_to_max_and_scale_free():
    m = torch.tensor([[[0.0, 4.9, 5.0, 10.0]]])
    assert TOP_REGION == 0.5
    assert top_region(m).tolist() == [[[False, False, True, True]]]
    assert torch.equal(top_region(m * 7 - 3), top_region(m))
    assert top_region(torch.full((1, 2, 3), 2.5)).all()  # a constant map: all of it


def test_bounding_box_is_inclusive_per_map():
    mask = torch.zeros(2, 6, 8, dtype=torch.bool)
    mask[0, 2, 3] = True
    mask[1, 1:5, 0] = True
    mask[1, 3, 6] = True
    assert bounding_box(mask).tolist() == [[3, 2, 3, 2], [0, 1, 6, 4]]
