"""How well a map points at known regions (pure torch, no I/O): the demo's localization measures.

Maps are (B, H, W) at image resolution (upsampled first). A target is the union of one or more
boxes per image (an image may hold several lesions of one kind), as a (B, H, W) bool mask.

* **Pointing game**: the map's peak (the centre of its tied maxima, ``regions.peak``) lies in the
  target. Pixel i spans [i - 0.5, i + 0.5], so a centre between two pixels counts when either is
  in the target.
* **Energy in box**: the share of the map's positive mass inside the target, after ReLU
  (``regions.mass_share``); a map with no positive mass scores 0, a uniform map the target's
  share of the image.
* **IoU**: intersection over union of the map's top region (``regions.top_region``: where it is at
  least halfway from its minimum to its maximum) with the target.

And how alike two maps are, whatever their scale: ``cam_correlation``, the Pearson correlation of
two CAMs over the grid cells (CAM1 against CAM2 in ``evaluation``; an expert's old and new version
in ``drift_measures``). A map is constant when its std is at most ``CONSTANT_STD`` of its largest magnitude
(all-zero included): two constant maps correlate at 1 (neither prefers a place), one at 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dualcam.maps import regions
from dualcam.maps.cam import upsample
from dualcam.maps.regions import Box

CONSTANT_STD = 1e-6
"""Relative std at or below which a map counts as constant in ``cam_correlation``."""


def box_masks(boxes: Sequence[Sequence[Box]], size: tuple[int, int]) -> torch.Tensor:
    """Per image, the union of its (x, y, w, h) boxes -> (B, H, W) bool."""
    h, w = size
    masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for i, image_boxes in enumerate(boxes):
        for x, y, bw, bh in image_boxes:
            masks[i, max(y, 0):max(y + bh, 0), max(x, 0):max(x + bw, 0)] = True
    return masks


def pointing_game(maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the peak of each map falls in its target."""
    h, w = maps.shape[1:]
    x, y = regions.peak(maps).unbind(1)
    hit = torch.zeros(len(maps), dtype=torch.bool)
    # the pixel holding the centre; both pixels when it lies on their shared edge
    for col in ((x + 0.5).floor(), (x - 0.5).ceil()):
        for row in ((y + 0.5).floor(), (y - 0.5).ceil()):
            c, r = col.long().clamp(0, w - 1), row.long().clamp(0, h - 1)
            hit |= targets[torch.arange(len(maps)), r, c]
    return hit


def energy_in_box(maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) float in [0, 1]: share of each ReLU'd map's mass inside its target (0 without mass)."""
    return regions.mass_share(maps, targets)


def iou(maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) float in [0, 1]: IoU of each map's top region with its target."""
    region = regions.top_region(maps)
    union = (region | targets).sum(dim=(1, 2)).clamp_min(1)
    return (region & targets).sum(dim=(1, 2)) / union


def pooled(targets: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h, w): each target averaged down to the CAM grid, the best map at that resolution.

    Upsampled like a CAM, it shows what the grid alone costs the measures.
    """
    return F.adaptive_avg_pool2d(targets.float()[:, None], grid)[:, 0]


def measure(maps: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pointing game, energy and IoU of (B, h, w) grid maps upsampled to the targets' (H, W), per image."""
    full = upsample(maps.float(), (targets.shape[1], targets.shape[2]))
    return {"pointing": pointing_game(full, targets).float(), "energy": energy_in_box(full, targets),
            "iou": iou(full, targets)}


def cam_correlation(maps1: torch.Tensor, maps2: torch.Tensor) -> torch.Tensor:
    """(B, h, w) maps -> (B,) Pearson correlation over the cells; constant maps as in the module docstring."""
    a, b = maps1.flatten(1).double(), maps2.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    norm_a, norm_b = a.norm(dim=1), b.norm(dim=1)
    flat_a = _is_constant(maps1.flatten(1).double(), norm_a)
    flat_b = _is_constant(maps2.flatten(1).double(), norm_b)
    r = (a * b).sum(1) / (norm_a * norm_b).clamp_min(torch.finfo(torch.float64).tiny)
    r = torch.where(flat_a | flat_b, (flat_a & flat_b).double(), r.clamp(-1.0, 1.0))
    return r.to(maps1.dtype)


def _is_constant(flat: torch.Tensor, centred_norm: torch.Tensor) -> torch.Tensor:
    std = centred_norm / flat.shape[1] ** 0.5
    return std <= CONSTANT_STD * flat.abs().amax(dim=1)
