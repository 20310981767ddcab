"""Deterministic chest-X-ray-like images, for demos, tests and benchmarks with no data at hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_xray(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) float32 in [0, 1]: two dark lung fields, a bright mediastinum, noise and a
    random bright opacity inside one lung."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = 0.55 + 0.1 * rng.standard_normal() * (yy - 0.5)
    for cx in (0.3, 0.7):
        lung = ((xx - cx) / 0.17) ** 2 + ((yy - 0.5) / 0.33) ** 2 < 1
        image = np.where(lung, image - 0.3, image)
    ox, oy = rng.choice([0.3, 0.7]) + rng.uniform(-0.06, 0.06), rng.uniform(0.3, 0.7)
    radius = rng.uniform(0.04, 0.09)
    image = image + 0.35 * np.exp(-(((xx - ox) ** 2 + (yy - oy) ** 2) / (2 * radius**2)))
    image = image + 0.04 * rng.standard_normal((size, size))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def write_synthetic_xrays(out_dir: str | Path, n: int, size: int = 256, seed: int = 0) -> list[Path]:
    """Write ``n`` 8-bit grayscale PNGs ``synthetic-XXXXX.png`` under ``out_dir``; same seed, same files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = out / f"synthetic-{i:05d}.png"
        Image.fromarray((synthetic_xray(size, rng) * 255).round().astype(np.uint8)).save(path)
        paths.append(path)
    return paths
