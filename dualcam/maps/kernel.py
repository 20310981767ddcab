"""ADDK, the Amplified Directed Divergence Kernel (pure torch, no I/O).

    K(x, x') = exp(alpha * (x / max(x) - x' / max(x')))

applied to (CAM1, CAM2): large where expert 1 is relatively more confident than expert 2.

Two guards make the paper's formula total, and both are documented behaviour:

* **The divisor.** Each map is divided by its own peak, taken per map (over the last two dims),
  never per batch. Where the peak is not clearly positive, that is ``max(x) < PEAK_FLOOR *
  max|x|`` (maps that are all <= 0, or whose peak is a rounding error next to their troughs), the
  divisor is floored at ``PEAK_FLOOR * max|x|``. Normalized values then stay within
  ``[-1 / PEAK_FLOOR, 1]`` and keep their order; an all-zero map normalizes to zeros, so it adds
  or subtracts nothing. Maps with a clearly positive peak get the paper's formula exactly.
* **The exponent.** Up to ``EXPONENT_KNEE`` the exponent is used as is. Above it, it saturates
  smoothly (``knee + span * tanh((z - knee) / span)``) towards ``EXPONENT_KNEE + EXPONENT_SPAN``
  = 80, so the result stays finite in float32 (exp(80) ~ 5.5e34) for any alpha while the
  ordering of cells, which peak finding relies on, is kept.

Beside it, on the same per-map scale: dualcam's variants ``gated`` and ``unshared``, the
reference ``sharpen`` (CAM1 alone), and ``overlap``, the share of expert 1's positive evidence
that expert 2 also claims (a column of ``dualcam score``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

DEFAULT_ALPHA = 5.0
"""The alpha every run uses unless told otherwise: the paper's smallest."""
PAPER_ALPHAS = (DEFAULT_ALPHA, 15.0, 50.0)
"""The alphas of the paper's figures."""
ALPHAS = (1.0, *PAPER_ALPHAS)
"""The alphas shown side by side: 1, and the paper's 5, 15 and 50."""
PEAK_FLOOR = 0.05
EXPONENT_KNEE = 60.0
EXPONENT_SPAN = 20.0
CLAIM_TOLERANCE = 1e-6
"""``overlap``: expert 2 claims a cell where its evidence is at least expert 1's, less this (rounding)."""

ArrayLike = TypeVar("ArrayLike", torch.Tensor, np.ndarray)


def check_alphas(alphas: Sequence[float], who: str) -> None:
    """ValueError "``who``: alphas must be finite numbers >= 0" unless there is at least one and each is:
    what ``render`` and ``evaluate`` check before reading anything."""
    if not alphas or not all(np.isfinite(a) and a >= 0 for a in alphas):
        raise ValueError(f"{who}: alphas must be finite numbers >= 0, got {list(alphas)}")


def normalize_by_peak(maps: torch.Tensor) -> torch.Tensor:
    """Divide each (h, w) map by its peak, with the floor described in the module docstring."""
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    magnitude = maps.abs().amax(dim=(-2, -1), keepdim=True)
    tiny = torch.finfo(maps.dtype).tiny
    divisor = torch.maximum(peak, PEAK_FLOOR * magnitude).clamp_min(tiny)
    return maps / divisor


def _saturate(exponent: torch.Tensor) -> torch.Tensor:
    above = EXPONENT_KNEE + EXPONENT_SPAN * torch.tanh((exponent - EXPONENT_KNEE) / EXPONENT_SPAN)
    return torch.where(exponent > EXPONENT_KNEE, above, exponent)


def addk(x: ArrayLike, x_prime: ArrayLike, alpha: float = DEFAULT_ALPHA) -> ArrayLike:
    """ADDK(x, x') for maps of shape (..., h, w); returns the same type, shape and device.

    Computed in float32 (float64 if both inputs are float64), whatever the input precision, so
    an fp16/bf16 CAM from autocast never overflows. Raises ValueError on shape mismatch, fewer
    than two dims, negative or non-finite alpha, or non-finite values in either map.
    """
    a, b = _checked("addk", x, x_prime, alpha)
    out = torch.exp(_saturate(alpha * (normalize_by_peak(a) - normalize_by_peak(b))))
    return out.numpy() if isinstance(x, np.ndarray) else out


def _checked(name: str, x: ArrayLike, x_prime: ArrayLike, alpha: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Both maps as tensors on ``x``'s device, in float32 (float64 if both are float64), after
    the checks every function of two maps makes; ValueError prefixed with ``name`` otherwise."""
    a, b = torch.as_tensor(x), torch.as_tensor(x_prime)
    if a.shape != b.shape:
        raise ValueError(f"{name}: maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() < 2:
        raise ValueError(f"{name}: maps need at least two dims (..., h, w), got shape {tuple(a.shape)}")
    if not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"{name}: alpha must be finite and >= 0, got {alpha}")
    dtype = torch.float64 if a.dtype == b.dtype == torch.float64 else torch.float32
    a, b = a.to(dtype), b.to(device=a.device, dtype=dtype)
    for arg, m in (("x", a), ("x_prime", b)):
        if not torch.isfinite(m).all():
            raise ValueError(f"{name}: {arg} holds NaN or infinite values")
    return a, b


def sharpen(x: ArrayLike, alpha: float = DEFAULT_ALPHA) -> ArrayLike:
    """exp(alpha * x / max(x)): CAM1 sharpened alone, ADDK with an all-zero second map.

    A reference, not a kernel: what a kernel gains over it is what the second expert adds.
    """
    zeros = np.zeros_like(x) if isinstance(x, np.ndarray) else torch.zeros_like(x)
    return addk(x, zeros, alpha)


def gated(x: ArrayLike, x_prime: ArrayLike, alpha: float = DEFAULT_ALPHA) -> ArrayLike:
    """dualcam's own variant: ReLU(x) / max(ReLU(x)) * ADDK(x, x').

    Keeps CAM1's shape (zero wherever expert 1 has no positive evidence) and only re-weights it by
    the directed divergence, so it can never invent a region CAM1 does not hold. A map with no
    positive value gates to all zeros.
    """
    kernel = torch.as_tensor(addk(x, x_prime, alpha))
    out = evidence(torch.as_tensor(x).to(kernel.dtype)) * kernel
    return out.numpy() if isinstance(x, np.ndarray) else out


def unshared(x: ArrayLike, x_prime: ArrayLike, alpha: float = DEFAULT_ALPHA) -> ArrayLike:
    """dualcam's own variant: CAM1 sharpened, less the evidence expert 2 also claims, in proportion
    to how much evidence of its own CAM1 holds.

        K = exp(alpha * (x / max(x) - t * min(e, e'))),  e = evidence(x), e' = evidence(x'),
        t = max(ReLU(e - e'))   (per map, in [0, 1])

    On CAM1's positive cells the exponent is the blend ``(1 - t) * e + t * ReLU(e - e')``: CAM1
    itself where the two maps carry no directed divergence (t = 0, where e' >= e on every cell,
    as when CAM2 is CAM1 up to a positive factor: then K is ``sharpen(x, alpha)``), and CAM1's
    unclaimed evidence alone where it holds some as strong as its peak (t = 1). By construction
    it never raises a cell above ``sharpen(x, alpha)`` (it only takes out), never lowers a cell
    expert 2 does not claim, and stays within a factor exp(alpha * t) of it. A second map with no
    positive value claims nothing, so K(x, x') = sharpen(x). Same types, guards and errors as
    ``addk``. Measured in docs/science/does-addk-help.md: it does not remove S where CAM1 leans
    on it, and it loses some F1 pointing; kept as a measured variant, not as a fix.
    """
    a, b = _checked("unshared", x, x_prime, alpha)
    e, e_prime = evidence(a), evidence(b)
    strength = (e - e_prime).clamp_min(0).amax(dim=(-2, -1), keepdim=True)
    out = torch.exp(_saturate(alpha * (normalize_by_peak(a) - strength * torch.minimum(e, e_prime))))
    return out.numpy() if isinstance(x, np.ndarray) else out


def evidence(maps: torch.Tensor) -> torch.Tensor:
    """Each (h, w) map's positive part divided by its peak: (..., h, w) in [0, 1], 1 at the peak.

    Puts two experts' positive evidence on one scale; a map with no positive value gives zeros.
    """
    positive = maps.clamp_min(0)
    peak = positive.amax(dim=(-2, -1), keepdim=True)
    return torch.where(peak > 0, positive / peak.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(positive))


def overlap(x: ArrayLike, x_prime: ArrayLike) -> ArrayLike:
    """How much of expert 1's positive evidence expert 2 also claims: (..., h, w) maps -> (...,) in [0, 1].

        overlap = sum(ReLU(x) * [e' >= e - CLAIM_TOLERANCE]) / sum(ReLU(x)),
        e = evidence(x), e' = evidence(x')

    the share of ReLU(CAM1)'s mass on the grid cells where expert 2's peak-normalized positive
    evidence is at least expert 1's (the tolerance, far below any real difference, keeps float
    rounding from deciding a tie). 1 when CAM2 is CAM1 up to a positive factor; 0 when CAM2 has
    no positive value, and 0 when CAM1 has none (no evidence, so none shared). Scale-free in
    both maps. Computed in float32 (float64 if both are); ValueError as ``addk``.
    """
    a, b = _checked("overlap", x, x_prime)
    positive = a.clamp_min(0)
    total = positive.sum(dim=(-2, -1))
    claimed = (positive * (evidence(b) >= evidence(a) - CLAIM_TOLERANCE)).sum(dim=(-2, -1))
    out = torch.where(total > 0, claimed / total.clamp_min(torch.finfo(a.dtype).tiny), torch.zeros_like(total))
    return out.numpy() if isinstance(x, np.ndarray) else out


Kernel = Callable[[ArrayLike, ArrayLike, float], ArrayLike]


@dataclass(frozen=True)
class KernelEntry:
    """A kernel as ``--kernel`` offers it: the function and where it comes from (shown in reports)."""

    function: Kernel
    origin: str


KERNELS: dict[str, KernelEntry] = {
    "addk": KernelEntry(addk, "paper (ADDK)"),
    "gated": KernelEntry(gated, "dualcam: ReLU(CAM1)/max * ADDK"),
    "unshared": KernelEntry(unshared, "dualcam: CAM1 sharpened less what CAM2 claims"),
}
"""Kernels by name, for ``--kernel``: ``addk`` is the paper's; the others are dualcam's own."""


def get_kernel(name: str) -> Kernel:
    """The kernel called ``name``; ValueError naming the known ones otherwise."""
    try:
        return KERNELS[name].function
    except KeyError:
        raise ValueError(f"unknown kernel {name!r}; known: {', '.join(KERNELS)}") from None
