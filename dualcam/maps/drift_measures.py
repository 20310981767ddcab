"""Did a retrained expert start looking elsewhere? Drift measures between two versions' CAMs.

Pure torch and numpy, no I/O. The inputs are the raw in-class CAMs of an old and a new version of
one expert on the same images (one grid, same input size); each measure is one number per image:

==========================  ============  =========  ==================================================
measure                     range         no change  meaning
==========================  ============  =========  ==================================================
cam_correlation             [-1, 1]       1          Pearson correlation of the two CAMs over the grid
                                                     cells (``localization.cam_correlation``).
                                                     Scale-free, so raw and peak-normalized maps give
                                                     the same value. Two constant maps give 1
                                                     (neither prefers a place), one gives 0.
peak_shift_px               [0, diagonal  0          distance between the two CAMs' peaks (each the
                            of the image]            centre of its tied maxima, ``regions.peak``, on
                                                     the map upsampled to the input size), in image
                                                     pixels.
extra_mass_outside_old_top  [-1, 1]       0          share of the new CAM's positive mass that lies
                                                     outside the old CAM's top region
                                                     (``regions.TOP_REGION``), minus the same share
                                                     of the old CAM's own: > 0 when attention moved
                                                     away from where the old version looked, < 0
                                                     when it gathered into it. A map with no
                                                     positive value has no mass outside (share 0).
delta_p                     [-1, 1]       0          p_new - p_old, in-class probabilities.
==========================  ============  =========  ==================================================

An image has **drifted** when ``cam_correlation < threshold`` (``PRIMARY_MEASURE``,
``DRIFT_THRESHOLD`` = 0.5). Correlation is the primary measure because it needs no parameter
beyond the threshold, reads the same for any input size, grid and architecture, is symmetric in
the two versions, and sees the whole map: a peak can jump between two near-equal maxima while
nothing else changes, and the top-region share ignores where inside or outside the region
attention went. The others say *how* an image drifted (how far, how much attention left, whether
the verdict changed).

Beside the measures, ADDK gives the pictures: ``gained`` = ADDK(ReLU(cam_new), ReLU(cam_old)),
large where the new version gained attention, and ``lost`` = ADDK(ReLU(cam_old), ReLU(cam_new)),
where it lost it. Attention is the positive part of a CAM, the evidence for the class. On the raw
maps, an old CAM with no positive cell (an image the old version sees nothing in, most images of
an archive) would be divided by ADDK's floored peak, and its evidence *against* the class, down to
-20 after normalization, would decide where the new version "gained": the planted-marker test saw
exactly that on every negative image. A map with no positive part normalizes to zeros, so an image
where neither version sees anything gains nothing (``gained`` is 1 everywhere).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np
import torch

from dualcam.maps import regions
from dualcam.maps.cam import upsample
from dualcam.maps.kernel import addk
from dualcam.maps.localization import cam_correlation

MEASURES = ("cam_correlation", "peak_shift_px", "extra_mass_outside_old_top", "delta_p")
PRIMARY_MEASURE = "cam_correlation"
DRIFT_THRESHOLD = 0.5
"""Default: an image has drifted when the two CAMs correlate less than this."""
MAX_DRIFT_SHARE = 0.05
"""Default for ``max_drift_share``: a run where more images drifted raises the alarm."""
TOP_K = 12
"""Default number of most drifted images listed in a summary."""
QUANTILES = {"p05": 0.05, "p25": 0.25, "median": 0.5, "p75": 0.75, "p95": 0.95}


def check_options(threshold: float, max_drift_share: float, top_k: int) -> None:
    """ValueError for options that cannot mean anything, before any work is done."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is compared with {PRIMARY_MEASURE} in [-1, 1], got {threshold}")
    if not 0.0 <= max_drift_share <= 1.0:
        raise ValueError(f"max_drift_share is a share of images in [0, 1], got {max_drift_share}")
    if top_k < 0:
        raise ValueError(f"the rows listed (--rows, top_k) must be >= 0, got {top_k}")


def extra_mass_outside_top(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """(B, H, W) maps -> (B,): new's share of positive mass outside old's top region, minus old's own."""
    outside = ~regions.top_region(old)
    return regions.mass_share(new, outside) - regions.mass_share(old, outside)


def peak_shift_px(old_peak: np.ndarray, new_peak: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(B, 2) peaks (x, y) in input pixels and (B, 2) image pixels per input pixel -> (B,) distance in image pixels."""
    return np.hypot(*((new_peak - old_peak) * scale).T).astype(np.float32)


def measures(
    p_old: torch.Tensor, p_new: torch.Tensor, cam_old: torch.Tensor, cam_new: torch.Tensor, size: int, alpha: float,
) -> dict[str, torch.Tensor]:
    """Everything a drift row holds, from (B,) probabilities and (B, h, w) raw CAMs, on their device.

    ``gained``, ``lost``: (B, h, w) ADDK maps of the CAMs' positive parts. ``cam_correlation``,
    ``extra_mass_outside_old_top``,
    ``delta_p``: (B,). ``old_peak``, ``new_peak``, ``gained_peak``: (B, 2) float (x, y) of the
    maps upsampled to ``size`` x ``size``, in input pixels (``peak_shift_px`` turns the first two
    into the image-pixel measure once image sizes are known).
    """
    old_fine, new_fine = upsample(cam_old, (size, size)), upsample(cam_new, (size, size))
    attention_old, attention_new = cam_old.clamp_min(0), cam_new.clamp_min(0)
    gained, lost = addk(attention_new, attention_old, alpha), addk(attention_old, attention_new, alpha)
    return {
        "gained": gained, "lost": lost,
        "cam_correlation": cam_correlation(cam_old, cam_new),
        "extra_mass_outside_old_top": extra_mass_outside_top(old_fine, new_fine),
        "delta_p": p_new - p_old,
        "old_peak": regions.peak(old_fine), "new_peak": regions.peak(new_fine),
        "gained_peak": regions.peak(upsample(gained, (size, size))),
    }


def drifted(primary: np.ndarray, threshold: float = DRIFT_THRESHOLD) -> np.ndarray:
    """(N,) values of ``PRIMARY_MEASURE`` -> (N,) bool: which images drifted."""
    return np.asarray(primary) < threshold


class DriftStats(TypedDict):
    """What ``summarize`` returns (and ``_drift.json`` holds among the run's own fields)."""

    images: int
    drifted: int
    drifted_share: float
    measures: dict[str, dict[str, float | None]]
    top: list[dict[str, Any]]


def summarize(rows: dict[str, np.ndarray], threshold: float = DRIFT_THRESHOLD, top_k: int = TOP_K) -> DriftStats:
    """The machine-readable summary of scored drift rows (numpy arrays of equal length, ok rows only).

    ``rows`` holds ``uri`` and every measure, plus any other per-row values to list for the top
    images (``p_old``, ``p_new``, ``gained_peak_x``...). Returns the number of images, how many and
    which share drifted, each measure's distribution (mean, min, quantiles, max; None when empty)
    and the ``top_k`` most drifted images, lowest primary measure first (ties by uri).
    """
    n = len(rows["uri"])
    flags = drifted(rows[PRIMARY_MEASURE], threshold)
    order = sorted(range(n), key=lambda i: (float(rows[PRIMARY_MEASURE][i]), str(rows["uri"][i])))[:top_k]
    return {
        "images": n,
        "drifted": int(flags.sum()),
        "drifted_share": float(flags.mean()) if n else 0.0,
        "measures": {name: distribution(rows[name]) for name in MEASURES},
        "top": [{**{k: _plain(v[i]) for k, v in rows.items()}, "drifted": bool(flags[i])} for i in order],
    }


def distribution(values: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    """Mean, min, the ``QUANTILES`` and max of ``values``; all None when there are none."""
    values = np.asarray(values, dtype=np.float64)
    keys = ("mean", "min", *QUANTILES, "max")
    if not len(values):
        return dict.fromkeys(keys)
    stats = [values.mean(), values.min(), *np.quantile(values, list(QUANTILES.values())), values.max()]
    return {k: float(v) for k, v in zip(keys, stats)}


def _plain(value: Any) -> Any:
    """A numpy scalar as the JSON-ready Python value."""
    return value.item() if isinstance(value, np.generic) else value
