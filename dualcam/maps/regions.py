"""Where a map points: its peak and the box around its top region (pure torch, batched).

Used for the summary columns of scoring results and for localization metrics. Maps are
upsampled first, so ties are common on plateaus (a saturated kernel, a flat CAM): the peak is the
centre of all tied maxima, not whichever ``argmax`` happens to return first.
"""

from __future__ import annotations

import torch

Box = tuple[int, int, int, int]
"""(x, y, w, h) in image pixels: columns x..x+w-1, rows y..y+h-1."""

TOP_REGION = 0.5
"""The top region of a map is where it reaches at least halfway from its minimum to its maximum,
``(m - min) / (max - min) >= 0.5``. Scale-free, so raw CAMs and kernel values are treated alike;
a constant map's top region is the whole map."""


def peak(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) maps -> (B, 2) float (x, y) centres of their tied maxima, in pixel units."""
    flat = maps.flatten(1)
    tied = (flat == flat.max(dim=1, keepdim=True).values).reshape(maps.shape).float()
    return _centroid(tied)


def top_region(maps: torch.Tensor, fraction: float = TOP_REGION) -> torch.Tensor:
    """(B, H, W) bool: where each map is at least ``fraction`` of the way from its min to its max."""
    flat = maps.flatten(1)
    lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    span = (hi - lo).clamp_min(torch.finfo(maps.dtype).tiny)
    return ((flat - lo) / span >= fraction).reshape(maps.shape) | (hi == lo).reshape(-1, 1, 1)


def mass_share(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(B, H, W) maps, (B, H, W) bool -> (B,) share of each map's positive mass inside ``region``
    (0 for a map with no positive mass)."""
    positive = maps.clamp_min(0)
    total = positive.sum(dim=(1, 2))
    inside = (positive * region).sum(dim=(1, 2))
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(total))


def bounding_box(mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool, each with at least one True -> (B, 4) long (x0, y0, x1, y1), inclusive."""
    cols, rows = mask.any(dim=1), mask.any(dim=2)
    x = torch.arange(mask.shape[2], device=mask.device)
    y = torch.arange(mask.shape[1], device=mask.device)
    big = max(mask.shape[1:])
    x0 = torch.where(cols, x, big).min(dim=1).values
    x1 = torch.where(cols, x, -1).max(dim=1).values
    y0 = torch.where(rows, y, big).min(dim=1).values
    y1 = torch.where(rows, y, -1).max(dim=1).values
    return torch.stack([x0, y0, x1, y1], dim=1)


def _centroid(weights: torch.Tensor) -> torch.Tensor:
    h, w = weights.shape[-2:]
    total = weights.sum(dim=(1, 2))
    x = (weights.sum(dim=1) * torch.arange(w, device=weights.device)).sum(dim=1) / total
    y = (weights.sum(dim=2) * torch.arange(h, device=weights.device)).sum(dim=1) / total
    return torch.stack([x, y], dim=1)
