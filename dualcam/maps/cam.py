"""Class activation maps in closed form (Zhou et al.), with no hooks and no backward pass.

For a network that ends in global average pooling and one linear layer, the logit of class c is
``mean_hw(sum_k W[c, k] * f_k) + b[c]``. Computing the final feature maps f once and applying W at
every spatial position gives the logits and every class's CAM from the same single forward pass.
CAMs are returned raw: no ReLU, no bias, no scaling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dualcam.maps import xrv
from dualcam.maps.architectures import family_of, head
from dualcam.maps.kernel import ArrayLike


def forward_with_cams(
    model: nn.Module, x: torch.Tensor, classes: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass: (logits (B, K), cams (B, K', h, w)), K' = K or ``len(classes)``.

    ``cams[:, j] = sum_k W[c, k] * f_k`` with c = ``classes[j]`` (every class if None) over the final
    feature maps f (``architectures``' ``features`` of the model's family), so
    ``cams[:, j].mean((-2, -1)) + b[c] == logits[:, c]``. Only the CAMs asked for are computed: a
    1000-class head's are 1000 maps. Runs under whatever grad/autocast mode the caller set.
    """
    entry = family_of(model)
    linear = head(model)
    f = entry.features(model, x)
    logits = linear(f.mean(dim=(-2, -1)))
    weight = linear.weight if classes is None else linear.weight[list(classes)]
    cams = torch.einsum("kc,bchw->bkhw", weight.to(f.dtype), f)
    return logits, cams


def class_probability(
    logits: torch.Tensor, class_index: int, activation: str, op_threshold: float | None = None,
) -> torch.Tensor:
    """(B,) probability of class ``class_index`` from (B, K) logits: ``softmax`` over the K outputs (classes
    that exclude each other), or ``sigmoid`` of the class's own logit (multi-label or single-logit heads), then
    calibrated to ``op_threshold`` if given (TorchXRayVision's ``op_norm``: ``xrv.probability``)."""
    if activation == "softmax":
        return logits.softmax(-1)[:, class_index]
    if activation != "sigmoid":
        raise ValueError(f"activation must be softmax or sigmoid, got {activation!r}")
    p = logits[:, class_index].sigmoid()
    return p if op_threshold is None else xrv.probability(p, op_threshold)


def upsample(maps: ArrayLike, size: tuple[int, int]) -> ArrayLike:
    """Bilinear upsampling of (..., h, w) maps to (..., H, W) = size; same type as the input.

    ``align_corners=False``: each CAM cell covers an equal share of the image, as the network's
    strided convolutions do.
    """
    if isinstance(maps, np.ndarray):
        return _upsample(torch.tensor(maps), size).numpy()  # a copy: numpy views of Arrow data are read-only
    return _upsample(maps, size)


def _upsample(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    lead, (h, w) = t.shape[:-2], t.shape[-2:]
    flat = t.reshape(-1, 1, h, w)
    if not flat.is_floating_point():
        flat = flat.float()
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)
