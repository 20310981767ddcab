"""How well a map points at a known box (pure torch, no I/O): the demo's localization measures.

Maps are (B, H, W) at image resolution (upsampled first), boxes (B, 4) integer (x, y, w, h) in
image pixels, covering columns x..x+w-1 and rows y..y+h-1.

* **Pointing game**: the map's peak (the centre of its tied maxima, ``regions.peak``) lies in the
  box. Pixel i spans [i - 0.5, i + 0.5], so a centre between two pixels of the box counts.
* **Energy in box**: the share of the map's positive mass inside the box, after ReLU; a map with no
  positive mass holds no energy anywhere, so it scores 0. A uniform map scores the box's share
  of the image.
* **IoU**: intersection over union of the map's top region (``regions.top_region``: where it is at
  least halfway from its minimum to its maximum) with the box.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dualcam import regions
from dualcam.cam import upsample


def box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 4) (x, y, w, h) -> (B, H, W) bool masks."""
    h, w = size
    ys, xs = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    x, y, bw, bh = (boxes[:, i, None, None] for i in range(4))
    return (xs >= x) & (xs < x + bw) & (ys >= y) & (ys < y + bh)


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the peak of each map falls in its box."""
    x, y = regions.peak(maps).unbind(1)
    bx, by, bw, bh = boxes.to(x.dtype).unbind(1)
    return (x >= bx - 0.5) & (x <= bx + bw - 0.5) & (y >= by - 0.5) & (y <= by + bh - 0.5)


def energy_in_box(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(B,) float in [0, 1]: share of each ReLU'd map's mass inside its box (0 without mass)."""
    mass = maps.clamp_min(0)
    total = mass.sum(dim=(1, 2))
    inside = (mass * box_masks(boxes, maps.shape[1:])).sum(dim=(1, 2))
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(total))


def iou(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(B,) float in [0, 1]: IoU of each map's top region with its box."""
    region, box = regions.top_region(maps), box_masks(boxes, maps.shape[1:])
    union = (region | box).sum(dim=(1, 2)).clamp_min(1)
    return (region & box).sum(dim=(1, 2)) / union


def pooled_box(boxes: torch.Tensor, size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """(B, h, w): each true box averaged down to the CAM grid, the best map at that resolution.

    Upsampled like a CAM, it shows what the grid alone costs the measures.
    """
    masks = box_masks(boxes, size).float()[:, None]
    return F.adaptive_avg_pool2d(masks, grid)[:, 0]


def uniform(grid: tuple[int, int], batch: int) -> torch.Tensor:
    """(B, h, w) ones: the map that knows nothing."""
    return torch.ones(batch, *grid)


def cam_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) Pearson correlation of two (B, h, w) maps over their cells; NaN where one is constant."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    denominator = (a.norm(dim=1) * b.norm(dim=1))
    return torch.where(denominator > 0, (a * b).sum(dim=1) / denominator, torch.full_like(denominator, float("nan")))


def measure(maps: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Pointing game, energy and IoU of (B, h, w) grid maps upsampled to ``size``, per image."""
    full = upsample(maps.float(), size)
    return {"pointing": pointing_game(full, boxes).float(), "energy": energy_in_box(full, boxes), "iou": iou(full, boxes)}
