"""Class activation maps in closed form (Zhou et al.), with no hooks and no backward pass.

For a network that ends in global average pooling and one linear layer, the logit of class c is
``mean_hw(sum_k W[c, k] * f_k) + b[c]``. Computing the final feature maps f once and applying W at
every spatial position gives the logits and every class's CAM from the same single forward pass.
CAMs are returned raw: no ReLU, no bias, no scaling.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import DenseNet, ResNet

from dualcam.maps.kernel import ArrayLike


def _resnet_features(model: ResNet, x: torch.Tensor) -> torch.Tensor:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def _densenet_features(model: DenseNet, x: torch.Tensor) -> torch.Tensor:
    return F.relu(model.features(x))


def split_model(model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Linear]:
    """(features(x) -> (B, C, h, w), final linear layer) of a supported torchvision classifier."""
    if isinstance(model, ResNet):
        return (lambda x: _resnet_features(model, x)), model.fc
    if isinstance(model, DenseNet):
        return (lambda x: _densenet_features(model, x)), model.classifier
    raise TypeError(
        f"forward_with_cams supports torchvision ResNet and DenseNet models, not {type(model).__name__}"
    )


def forward_with_cams(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass: (logits (B, K), cams (B, K, h, w)).

    ``cams[:, c] = sum_k W[c, k] * f_k`` over the final feature maps f (ResNet: ``layer4``'s
    output; DenseNet: ``relu(features(x))``), so ``cams[:, c].mean((-2, -1)) + b[c] ==
    logits[:, c]``. Runs under whatever grad/autocast mode the caller set.
    """
    features, linear = split_model(model)
    f = features(x)
    logits = linear(f.mean(dim=(-2, -1)))
    cams = torch.einsum("kc,bchw->bkhw", linear.weight.to(f.dtype), f)
    return logits, cams


def upsample(maps: ArrayLike, size: tuple[int, int]) -> ArrayLike:
    """Bilinear upsampling of (..., h, w) maps to (..., H, W) = size; same type as the input.

    ``align_corners=False``: each CAM cell covers an equal share of the image, as the network's
    strided convolutions do.
    """
    as_numpy = isinstance(maps, np.ndarray)
    t = torch.tensor(maps) if as_numpy else maps  # a copy: numpy views of Arrow data are read-only
    lead, (h, w) = t.shape[:-2], t.shape[-2:]
    flat = t.reshape(-1, 1, h, w)
    if not flat.is_floating_point():
        flat = flat.float()
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
    out = out.reshape(*lead, *size)
    return out.numpy() if as_numpy else out
