"""Deterministic chest-X-ray-like images, for demos, tests and benchmarks with no data at hand.

``write_overlap_dataset`` builds the paper's situation with known answers: class C1 holds a shared
feature S and its own feature F1, class C2 holds S and its own F2, normal images hold neither.
Every class has the same background, texture and distractors, so no class is told apart by
anything but its features, and the boxes file says where each feature was drawn. A ``Scenario``
sets how large and bright the features are (``SCENARIOS``): in ``overlap`` S is a faint disc,
dimmer than the marks; in ``salient-shared`` it is larger and brighter than F1, the situation in
which an expert trained against normal images leans on the shared feature.

=========  ====================================  =====================================
feature    drawn as                              stands for
=========  ====================================  =====================================
S          a blurred bright disc                 consolidation, common to both findings
F1         a thin bright ring                    the class of interest's own sign (C1)
F2         a thin bright cross                   the overlapping class's own sign (C2)
=========  ====================================  =====================================
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from PIL import Image

from dualcam.io import storage
from dualcam.io.labelled import BOX_COLUMNS, SPLIT_FRACTIONS, SPLITS

OVERLAP_CLASSES = ("C1", "C2", "normal")
CLASS_FEATURES = {"C1": ("S", "F1"), "C2": ("S", "F2"), "normal": ()}
MANIFEST_FILE = "manifest.csv"
BOXES_FILE = "boxes.csv"

_DISTRACTORS = (3, 6)
LUNG_FIELDS = ((0.3, 0.5, 0.17, 0.33), (0.7, 0.5, 0.17, 0.33))
"""The two dark lung fields as ellipses (centre x, centre y, half-width, half-height), in image fractions."""


def synthetic_xray(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) float32 in [0, 1]: two dark lung fields, a bright mediastinum, noise and a
    random bright opacity inside one lung."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = _chest(xx, yy, rng)
    ox, oy = rng.choice([0.3, 0.7]) + rng.uniform(-0.06, 0.06), rng.uniform(0.3, 0.7)
    radius = rng.uniform(0.04, 0.09)
    image = image + 0.35 * np.exp(-(((xx - ox) ** 2 + (yy - oy) ** 2) / (2 * radius**2)))
    image = image + 0.04 * rng.standard_normal((size, size))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _chest(xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = 0.55 + 0.1 * rng.standard_normal() * (yy - 0.5)
    return np.where(lung_mask(xx, yy), image - 0.3, image)


def lung_mask(xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Where (xx, yy), in image fractions, falls inside a lung field."""
    return np.logical_or.reduce([((xx - cx) / hw) ** 2 + ((yy - cy) / hh) ** 2 < 1 for cx, cy, hw, hh in LUNG_FIELDS])


def write_synthetic_xrays(out_dir: str | Path, n: int, size: int = 256, seed: int = 0) -> list[Path]:
    """Write ``n`` 8-bit grayscale PNGs ``synthetic-XXXXX.png`` under ``out_dir``; same seed, same files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = out / f"synthetic-{i:05d}.png"
        Image.fromarray(_to_uint8(synthetic_xray(size, rng))).save(path)
        paths.append(path)
    return paths


# --- The class-overlap scenario ----------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    """How large and bright the features are drawn. Radii are fractions of the image side, drawn
    per image from their range; gains are intensities added to a background in [0, 1]."""

    name: str
    description: str
    s_radius: tuple[float, float]
    s_gain: float
    mark_radius: tuple[float, float] = (0.06, 0.075)
    """Radius of the F1 ring and half-length of the F2 cross's arms."""
    mark_width: float = 0.028
    mark_gain: float = 0.38


SCENARIOS = {s.name: s for s in (
    Scenario("overlap", "S a faint blurred disc, dimmer than the marks F1 and F2", (0.085, 0.11), 0.30),
    Scenario("salient-shared", "S a large bright blurred disc, larger and brighter than F1", (0.12, 0.15), 0.55),
)}
DEFAULT_SCENARIO = "overlap"


def get_scenario(name: str) -> Scenario:
    """The scenario called ``name``; ValueError naming the known ones otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None


@dataclass(frozen=True)
class Feature:
    """Where one feature was drawn, in image pixels: columns x..x+w-1, rows y..y+h-1."""

    kind: str
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class OverlapDataset:
    """What ``write_overlap_dataset`` wrote: the manifest (uri, label, split) and the boxes file."""

    manifest: str
    boxes: str
    images: int
    scenario: str = DEFAULT_SCENARIO


def overlap_image(label: str, size: int, rng: np.random.Generator,
                  drawn: Scenario = SCENARIOS[DEFAULT_SCENARIO]) -> tuple[np.ndarray, list[Feature]]:
    """One (size, size) float32 image in [0, 1] of class ``label`` and the boxes of its features,
    drawn as the scenario ``drawn`` says.

    Features sit inside the lung fields and never overlap each other; distractors (small blobs,
    squares and bars, in every class) never touch a feature's box.
    """
    if label not in CLASS_FEATURES:
        raise ValueError(f"label must be one of {', '.join(OVERLAP_CLASSES)}, got {label!r}")
    if size < 48:
        raise ValueError(f"size must be at least 48 pixels for the features to be drawn, got {size}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    image = _chest(xx / size, yy / size, rng) + _texture(size, rng)
    boxes: list[Feature] = []
    for kind in CLASS_FEATURES[label]:
        cx, cy, radius = _place(drawn.s_radius if kind == "S" else drawn.mark_radius, kind, size, boxes, rng)
        distance = np.hypot(xx - cx, yy - cy)
        if kind == "S":
            image += drawn.s_gain * _smoothstep(radius + 0.02 * size, radius - 0.02 * size, distance)
            half = radius + 0.02 * size
        else:
            width = drawn.mark_width * size
            if kind == "F1":
                image += drawn.mark_gain * _smoothstep(width / 2 + 0.5, width / 2 - 0.5, np.abs(distance - radius))
            else:
                bar = np.minimum(np.abs(xx - cx), np.abs(yy - cy))
                inside = np.maximum(np.abs(xx - cx), np.abs(yy - cy)) <= radius + width / 2
                image += drawn.mark_gain * inside * _smoothstep(width / 2 + 0.5, width / 2 - 0.5, bar)
            half = radius + width / 2
        boxes.append(_box(kind, cx, cy, half, size))
    image = _distractors(image, xx, yy, boxes, rng)
    image += 0.03 * rng.standard_normal((size, size))
    return np.clip(image, 0.0, 1.0).astype(np.float32), boxes


def _texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency mottling, so flat regions are never trivially flat."""
    coarse = Image.fromarray(rng.standard_normal((12, 12)).astype(np.float32))
    return 0.05 * np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def _smoothstep(outer: float, inner: float, d: np.ndarray) -> np.ndarray:
    """1 where d <= inner, 0 where d >= outer, smooth between: anti-aliased shapes."""
    t = np.clip((outer - d) / max(outer - inner, 1e-6), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _place(radii: tuple[float, float], kind: str, size: int, taken: list[Feature],
           rng: np.random.Generator) -> tuple[float, float, float]:
    """A centre inside a lung field and a radius in ``radii`` (fractions of the side), clear of the
    boxes already taken."""
    low, high = radii
    for _ in range(200):
        radius = rng.uniform(low, high) * size
        cx = (rng.choice([f[0] for f in LUNG_FIELDS]) + rng.uniform(-0.06, 0.06)) * size
        cy = rng.uniform(0.3, 0.7) * size
        box = _box(kind, cx, cy, radius + 0.03 * size, size)
        if not any(_overlap(box, other) for other in taken):
            return cx, cy, radius
    raise RuntimeError(f"could not place {kind} clear of {len(taken)} other features at {size} px")


def _box(kind: str, cx: float, cy: float, half: float, size: int) -> Feature:
    x0, y0 = max(int(np.floor(cx - half)), 0), max(int(np.floor(cy - half)), 0)
    x1, y1 = min(int(np.ceil(cx + half)), size), min(int(np.ceil(cy + half)), size)
    return Feature(kind, x0, y0, x1 - x0, y1 - y0)


def _overlap(a: Feature, b: Feature) -> bool:
    return a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h


def _distractors(image: np.ndarray, xx: np.ndarray, yy: np.ndarray, boxes: list[Feature],
                 rng: np.random.Generator) -> np.ndarray:
    """Small bright blobs, squares and bars, clear of the features and of each other, in every
    class alike."""
    size = image.shape[0]
    taken, wanted = list(boxes), rng.integers(*_DISTRACTORS, endpoint=True)
    for _ in range(100):
        if len(taken) - len(boxes) == wanted:
            break
        cx, cy = rng.uniform(0.1, 0.9, 2) * size
        half = rng.uniform(0.02, 0.04) * size
        box = _box("distractor", cx, cy, half + 2, size)
        if any(_overlap(box, b) for b in taken):
            continue
        taken.append(box)
        shape = rng.integers(3)
        if shape == 0:
            mask = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (half / 1.5) ** 2))
        else:
            hx, hy = (half, half) if shape == 1 else rng.permutation([half, half / 3])
            mask = (np.abs(xx - cx) <= hx) & (np.abs(yy - cy) <= hy)
        image = image + rng.uniform(0.15, 0.3) * mask
    return image


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (image * 255).round().astype(np.uint8)


def _splits(n: int) -> Iterator[str]:
    """60/20/20 over ``n`` images of one class, in order, so every class is split alike."""
    bounds = np.cumsum([round(f * n) for f in SPLIT_FRACTIONS[:-1]])
    for i in range(n):
        yield SPLITS[int(np.searchsorted(bounds, i, side="right"))]


def check_overlap_arguments(n: int, size: int, seed: int) -> None:
    """ValueError for a scenario that cannot be drawn or split, before anything is written (or Ray started)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 5:
        raise ValueError(f"--per-class (images per class) must be at least 5 (for 60/20/20 splits), got {n!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 48:
        raise ValueError(f"--image-side must be at least 48 pixels for the features to be drawn, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def write_overlap_dataset(out: str, n: int, size: int = 96, seed: int = 0,
                          scenario: str = DEFAULT_SCENARIO) -> OverlapDataset:
    """Write ``n`` images per class (C1, C2, normal) of the scenario called ``scenario`` under
    ``out/images/<label>/``, plus ``out/manifest.csv`` (uri, label, split: 60/20/20 per class)
    and ``out/boxes.csv`` (uri, x, y, w, h, kind: one row per drawn F1, F2 and S). URIs in both
    files are relative to ``out``.

    Same seed, same files: image i of a class depends only on (seed, class, i), so a larger
    ``n`` adds images without changing the first ones. ``out`` may be a folder or an s3:// prefix.
    """
    drawn = get_scenario(scenario)
    check_overlap_arguments(n, size, seed)
    manifest: dict[str, list] = {"uri": [], "label": [], "split": []}
    boxes: dict[str, list] = {c: [] for c in BOX_COLUMNS}
    for c, label in enumerate(OVERLAP_CLASSES):
        for i, split in zip(range(n), _splits(n)):
            image, features = overlap_image(label, size, np.random.default_rng([seed, c, i]), drawn)
            uri = f"images/{label}/{label}-{i:05d}.png"
            buf = io.BytesIO()
            Image.fromarray(_to_uint8(image)).save(buf, format="PNG")
            storage.write_bytes(storage.join(out, uri), buf.getvalue())
            for column, value in zip(("uri", "label", "split"), (uri, label, split)):
                manifest[column].append(value)
            for box in features:
                for column, cell in zip(BOX_COLUMNS, (uri, box.x, box.y, box.w, box.h, box.kind)):
                    boxes[column].append(cell)
    paths = storage.join(out, MANIFEST_FILE), storage.join(out, BOXES_FILE)
    for path, columns in zip(paths, (manifest, boxes)):
        buf = io.BytesIO()
        pacsv.write_csv(pa.table(columns), buf)
        storage.write_bytes(path, buf.getvalue())
    return OverlapDataset(*paths, images=3 * n, scenario=drawn.name)
