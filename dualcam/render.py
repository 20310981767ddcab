"""Heatmaps drawn over X-rays, for people to look at."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Anchors of a perceptually ordered dark-to-bright colormap (close to matplotlib's "inferno").
_ANCHORS = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]],
    dtype=np.float32,
) / 255.0


def colorize(values: np.ndarray) -> np.ndarray:
    """Map (H, W) values in [0, 1] to (H, W, 3) RGB in [0, 1]."""
    pos = np.clip(values, 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (pos - lo)[..., None]
    return _ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac


def overlay(image: np.ndarray, heatmap: np.ndarray, opacity: float = 0.45) -> Image.Image:
    """The image in gray with ``heatmap`` (same H, W) min-max scaled and blended on top.

    Only the picture is scaled: stored heatmaps stay raw.
    """
    gray = image.mean(axis=2) if image.ndim == 3 else image
    lo, hi = float(heatmap.min()), float(heatmap.max())
    scaled = (heatmap - lo) / (hi - lo) if hi > lo else np.zeros_like(heatmap)
    rgb = (1 - opacity) * np.repeat(gray[..., None], 3, axis=2) + opacity * colorize(scaled)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))
