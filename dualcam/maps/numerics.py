"""The arithmetic of the experts' forward pass, and how far a run in one precision lands from another.

ADDK exponentiates the CAMs' normalized differences, so whatever rounding the CAMs carry comes out
amplified by alpha: bf16 autocast moves heatmaps by a tenth of their maximum at alpha 5 and more
than a third at alpha 50 (docs/operations/gpus.md). Float32 is the default on every device, so that a GPU
run reproduces a CPU run within float32 noise; the others are for users who accept that error:

* ``fp32``: float32, with TF32 off for convolutions and matrix products (cuDNN allows TF32 for
  convolutions by default, which rounds their inputs to 10 mantissa bits on Ampere and later);
* ``tf32``: float32 storage, TF32 tensor cores allowed (CUDA; on CPU it computes as ``fp32``);
* ``fp16``, ``bf16``: torch autocast to float16 or bfloat16 on the scorer's device (CUDA, or CPU).

``deviation`` measures one run against another from their raw CAMs: the measures of the
precision table (docs/operations/gpus.md) and of ``make gpu-check``'s GPU-against-CPU line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from dualcam.maps.kernel import addk

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
DEFAULT_PRECISION = "fp32"
_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def check_precision(precision: str) -> str:
    """``precision`` if it is one of ``PRECISIONS``; ValueError naming the choices otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


@contextlib.contextmanager
def computing_in(precision: str, device: torch.device) -> Iterator[None]:
    """The forward passes inside run in ``precision`` on ``device``: autocast for fp16 and bf16,
    TF32 allowed only for tf32. TF32 is a process-wide switch of torch; it is restored on exit."""
    check_precision(precision)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        dtype = _AUTOCAST.get(precision)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def deviation(
    reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray], alphas: Sequence[float] = (5.0, 50.0),
) -> dict[str, np.ndarray]:
    """Per image, how far ``other``'s maps are from ``reference``'s, both holding raw ``cam1`` and
    ``cam2`` (N, h, w) of the same images (a scorer's ``score`` output).

    ``cam1``: max |d| / max |reference CAM1|; ``heatmap <alpha>``: max |d| / max of the reference
    heatmap, ADDK(cam1, cam2) at each alpha; ``peak moved``: 1.0 where the heatmap's peak cell
    differs (the peak cell does not depend on alpha: ADDK is monotonic in the same difference).
    """
    ref1, ref2, cam1, cam2 = (np.asarray(m, np.float64) for m in
                              (reference["cam1"], reference["cam2"], other["cam1"], other["cam2"]))
    out = {"cam1": _max_over(np.abs(cam1 - ref1)) / np.maximum(_max_over(np.abs(ref1)), 1e-30)}
    for alpha in alphas:
        ref_heat, heat = addk(ref1, ref2, alpha), addk(cam1, cam2, alpha)
        out[f"heatmap {alpha:g}"] = _max_over(np.abs(heat - ref_heat)) / _max_over(ref_heat)
    ref_heat, heat = addk(ref1, ref2, 1.0), addk(cam1, cam2, 1.0)
    n = len(ref1)
    out["peak moved"] = (ref_heat.reshape(n, -1).argmax(1) != heat.reshape(n, -1).argmax(1)).astype(np.float64)
    return out


def _max_over(maps: np.ndarray) -> np.ndarray:
    """(N, h, w) -> (N,): each map's maximum."""
    return maps.reshape(len(maps), -1).max(axis=1)
