"""The classifiers a CAM is defined for, one registry entry each: how to build it, where its final
feature maps come from, and which layer is its linear head.

A CAM is exact only for a network that ends in global average pooling and one linear layer, so an
architecture is supported only where both are known; checkpoints (``dualcam.io.checkpoints``) and
CAMs (``dualcam.maps.cam``) read the same entry. To add an architecture, add a ``Family`` (once per
torchvision model class) and its ``ARCHITECTURES`` entries. TorchXRayVision's DenseNet-121 and ResNet-50
(``xrv-densenet121``, ``xrv-resnet50``; ``dualcam.maps.xrv``) are torchvision's with a one-channel stem.
Models whose head does more than that are refused with the reason (``NOT_CAM_EXACT``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import (
    ConvNeXt,
    DenseNet,
    EfficientNet,
    MobileNetV3,
    RegNet,
    ResNet,
    VisionTransformer,
    get_model,
)

OUTPUT_STRIDES = (32, 16)


def _resnet_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    assert isinstance(model, ResNet)
    x = model.maxpool(model.relu(model.bn1(model.conv1(_stem_input(model.conv1, x)))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def _densenet_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    assert isinstance(model, DenseNet)
    return F.relu(model.features(_stem_input(model.features.conv0, x)))


def _stem_input(stem: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` as the first convolution takes it: a one-channel stem (TorchXRayVision's) reads the first of the grey
    input's three equal channels (colour mode L), so every expert takes the same (B, 3, S, S) batch."""
    assert isinstance(stem, nn.Conv2d)
    return x[:, :stem.in_channels] if stem.in_channels < x.shape[1] else x


def _efficientnet_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    assert isinstance(model, EfficientNet)
    return model.features(x)


def _regnet_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    assert isinstance(model, RegNet)
    return model.trunk_output(model.stem(x))


def _resnet_at_stride(name: str, output_stride: int, **kwargs: Any) -> nn.Module:
    """torchvision's ResNet with its last stage at ``output_stride`` 32 or 16, same parameters either way:
    bottleneck ResNets dilate the last stage (``replace_stride_with_dilation``); resnet18/34, whose
    BasicBlock has no dilation in torchvision, run it at stride 1 without dilation."""
    if output_stride == 32:
        return get_model(name, **kwargs)
    if name in ("resnet18", "resnet34"):
        model = get_model(name, **kwargs)
        block = model.layer4[0]
        block.conv1.stride = block.downsample[0].stride = (1, 1)
        return model
    return get_model(name, replace_stride_with_dilation=[False, False, True], **kwargs)


def _plain(name: str, output_stride: int, **kwargs: Any) -> nn.Module:
    return get_model(name, **kwargs)


XRV_BASES = {"xrv-densenet121": "densenet121", "xrv-resnet50": "resnet50"}
"""TorchXRayVision's models (``dualcam.maps.xrv``) by the torchvision network each is, but for its stem."""


def _one_channel(name: str, output_stride: int, **kwargs: Any) -> nn.Module:
    """TorchXRayVision's ``name``: torchvision's network with a one-channel first convolution, as xrv builds it
    (its DenseNet's layers and its ResNet's inner ``model`` have torchvision's names and computations)."""
    base = XRV_BASES[name]
    model = _resnet_at_stride(base, output_stride, **kwargs) if base.startswith("resnet") else get_model(base, **kwargs)
    stem = "conv1" if base.startswith("resnet") else "features.conv0"
    model.set_submodule(stem, nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False))
    return model


@dataclass(frozen=True)
class Family:
    """What every architecture built on one torchvision model class shares."""

    model_class: type[nn.Module]
    head: str
    """Module path of the final ``nn.Linear`` (the CAM's weights; its state dict keys' prefix): ``fc``, or
    ``classifier.1`` behind EfficientNet's dropout, the identity in eval mode."""
    features: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    """(model, x) -> (B, C, h, w): the maps the head's global average pooling reads."""
    build: Callable[..., nn.Module]
    """(name, output_stride, **torchvision kwargs) -> the model."""
    output_strides: tuple[int, ...] = (32,)


RESNET = Family(ResNet, "fc", _resnet_features, _resnet_at_stride, OUTPUT_STRIDES)
DENSENET = Family(DenseNet, "classifier", _densenet_features, _plain)
EFFICIENTNET = Family(EfficientNet, "classifier.1", _efficientnet_features, _plain)
REGNET = Family(RegNet, "fc", _regnet_features, _plain)
XRV_DENSENET = Family(DenseNet, "classifier", _densenet_features, _one_channel)
XRV_RESNET = Family(ResNet, "fc", _resnet_features, _one_channel, OUTPUT_STRIDES)

ARCHITECTURES: dict[str, Family] = {
    **dict.fromkeys(("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                     "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"), RESNET),
    **dict.fromkeys(("densenet121", "densenet161", "densenet169", "densenet201"), DENSENET),
    **dict.fromkeys((f"efficientnet_b{i}" for i in range(8)), EFFICIENTNET),
    **dict.fromkeys((f"regnet_{kind}_{size}" for kind in "xy"
                     for size in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")), REGNET),
    "regnet_y_128gf": REGNET,
    "xrv-densenet121": XRV_DENSENET,
    "xrv-resnet50": XRV_RESNET,
}

NOT_CAM_EXACT: tuple[tuple[str, type[nn.Module], str], ...] = (
    ("convnext", ConvNeXt, "its head normalizes after pooling (LayerNorm)"),
    ("mobilenet_v3", MobileNetV3, "its head has a hidden layer after pooling (Linear + Hardswish)"),
    ("vit_", VisionTransformer, "it is a transformer whose head reads a class token, not pooled feature maps"),
)
"""(name prefix, torchvision class, why): models that are not global average pooling + one linear layer."""


def family(arch: str) -> Family:
    """The registry entry of ``arch``; ValueError naming the supported ones otherwise."""
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        for prefix, _, why in NOT_CAM_EXACT:
            if arch.startswith(prefix):
                raise ValueError(f"{arch}: {why}, so a CAM would not be exact") from None
        raise ValueError(f"arch {arch!r} is not one of {', '.join(ARCHITECTURES)}") from None


def check_output_stride(arch: str, output_stride: int) -> None:
    """ValueError unless ``arch`` is known and can run its last stage at ``output_stride``."""
    entry = family(arch)
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {', '.join(map(str, OUTPUT_STRIDES))}, got {output_stride!r}")
    if output_stride not in entry.output_strides:
        raise ValueError(f"output_stride {output_stride} is supported for ResNets only, not {arch!r}")


def build(arch: str, output_stride: int = 32, **kwargs: Any) -> nn.Module:
    """torchvision's ``arch`` at ``output_stride``; ``kwargs`` go to torchvision (``weights``, ``num_classes``)."""
    check_output_stride(arch, output_stride)
    return family(arch).build(arch, output_stride, **kwargs)


def family_of(model: nn.Module) -> Family:
    """The entry a built model belongs to, by its class."""
    for entry in ARCHITECTURES.values():
        if isinstance(model, entry.model_class):
            return entry
    for _, model_class, why in NOT_CAM_EXACT:
        if isinstance(model, model_class):
            raise TypeError(f"{type(model).__name__}: {why}, so a CAM would not be exact")
    supported = dict.fromkeys(entry.model_class.__name__ for entry in ARCHITECTURES.values())
    raise TypeError(
        f"dualcam supports torchvision {', '.join(supported)} models (a CAM needs their known head), "
        f"not {type(model).__name__}"
    )


def head(model: nn.Module) -> nn.Linear:
    """The model's final linear layer."""
    layer = model.get_submodule(family_of(model).head)
    assert isinstance(layer, nn.Linear)
    return layer


def with_head(model: nn.Module, outputs: int) -> nn.Module:
    """``model`` with its final layer replaced by a fresh one of ``outputs`` outputs (same inputs)."""
    model.set_submodule(family_of(model).head, nn.Linear(head(model).in_features, outputs))
    return model
