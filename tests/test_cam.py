"""CAMs in closed form: pinned to the network's own forward pass and to GAP + linear algebra."""

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import DenseNet, EfficientNet, RegNet, ResNet, get_model

from dualcam.io.checkpoints import build_expert
from dualcam.maps import architectures
from dualcam.maps.architectures import ARCHITECTURES
from dualcam.maps.cam import forward_with_cams, upsample

FINAL_LAYER = {ResNet: ("layer4", False), DenseNet: ("features", True), EfficientNet: ("features", False),
               RegNet: ("trunk_output", False)}
"""torchvision class -> (the layer whose output the head pools, whether a ReLU comes between), read from
torchvision's own forward methods."""
ONE_PER_FAMILY = ("resnet18", "densenet121", "efficientnet_b0", "regnet_y_400mf", "xrv-densenet121", "xrv-resnet50")
HEAVY = {"resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2", "densenet201",
         "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "regnet_x_8gf", "regnet_x_16gf", "regnet_x_32gf",
         "regnet_y_8gf", "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf"}
"""Too slow to build and run for ``make test`` on a CPU (seconds each, up to 15 s on a busy 2-core machine;
regnet_y_128gf has 644M parameters): checked by ``pytest -m heavy tests/test_cam.py``."""


def final_features_by_hook(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The final feature maps, captured independently of dualcam with a forward hook."""
    captured = {}
    name, relu = next(v for cls, v in FINAL_LAYER.items() if isinstance(model, cls))
    handle = getattr(model, name).register_forward_hook(lambda m, i, o: captured.setdefault("f", o))
    try:
        model(x)
    finally:
        handle.remove()
    return torch.relu(captured["f"]) if relu else captured["f"]


def inputs(arch: str, *shape: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(dualcam's (B, 3, H, W) input, the network's own): the same random tensor, but for TorchXRayVision's
    one-channel networks, which take one channel where dualcam gives three equal ones (colour mode L)."""
    if not arch.startswith("xrv-"):
        x = torch.randn(shape[0], 3, *shape[1:], dtype=dtype)
        return x, x
    x = torch.randn(shape[0], 1, *shape[1:], dtype=dtype)
    return x.expand(-1, 3, -1, -1), x


def test_the_invariants_cover_every_family():
    assert {ARCHITECTURES[arch] for arch in ONE_PER_FAMILY} == set(ARCHITECTURES.values())


@pytest.mark.parametrize("arch", ONE_PER_FAMILY)
def test_cam_invariants(arch):
    torch.manual_seed(0)
    model = build_expert(arch).double().eval()
    x, own = inputs(arch, 2, 64, 64, dtype=torch.float64)
    with torch.inference_mode():
        logits, cams = forward_with_cams(model, x)
        reference_logits = model(own)
        f = final_features_by_hook(model, own)
    linear = architectures.head(model)
    assert logits.shape == (2, 2) and cams.shape == (2, 2, *f.shape[-2:])
    # the same logits as the network's own forward
    torch.testing.assert_close(logits, reference_logits, rtol=1e-10, atol=1e-10)
    # spatial mean of each class's CAM plus that class's bias is its logit
    torch.testing.assert_close(cams.mean(dim=(-2, -1)) + linear.bias, logits, rtol=1e-10, atol=1e-10)
    # CAM = sum_k w_k f_k over the final features, as the test's own forward hook captured them
    torch.testing.assert_close(cams, torch.einsum("kc,bchw->bkhw", linear.weight, f), rtol=1e-10, atol=1e-10)


def test_cam_grid_is_input_over_32_for_resnet():
    model = build_expert("resnet18").eval()
    with torch.inference_mode():
        _, cams = forward_with_cams(model, torch.randn(1, 3, 224, 224))
    assert cams.shape == (1, 2, 7, 7)


def test_float32_channels_last_matches():
    torch.manual_seed(1)
    model = build_expert("resnet18").eval()
    x = torch.randn(3, 3, 96, 96)
    with torch.inference_mode():
        logits, cams = forward_with_cams(model, x)
        model_cl = model.to(memory_format=torch.channels_last)
        logits_cl, cams_cl = forward_with_cams(model_cl, x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(logits_cl, logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cams_cl, cams, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.heavy) if a in HEAVY else a for a in ARCHITECTURES])
def test_every_class_cam_plus_its_bias_is_the_real_models_logit(arch):
    torch.manual_seed(0)
    model = architectures.build(arch, weights=None).eval()  # torchvision's own 1000-class model
    x, own = inputs(arch, 1, 64, 64)
    with torch.inference_mode():
        logits = model(own)  # torchvision's forward, not dualcam's
        _, cams = forward_with_cams(model, x)
    assert cams.shape == (1, 1000, 2, 2)  # 64 px at stride 32: a mean over 4 cells, not one
    # float32 (float64 is many times slower for depthwise convolutions on a CPU): the two sums differ only in
    # order, within 1e-4 of the logits' scale (deep random-init nets reach logits of 10); a wrong feature map
    # or head is off by about that scale itself
    scale = logits.abs().max().item()
    torch.testing.assert_close(cams.mean((-2, -1)) + architectures.head(model).bias, logits, rtol=0,
                               atol=1e-4 * scale)


def test_unsupported_model_is_refused():
    with pytest.raises(TypeError, match="supports torchvision ResNet, DenseNet, EfficientNet, RegNet"):
        forward_with_cams(nn.Sequential(nn.Conv2d(3, 2, 3)), torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("arch,why", [
    ("convnext_tiny", "its head normalizes after pooling \\(LayerNorm\\)"),
    ("mobilenet_v3_small", "its head has a hidden layer after pooling \\(Linear \\+ Hardswish\\)"),
    ("vit_b_16", "it is a transformer whose head reads a class token"),
])
def test_heads_that_are_not_pooling_and_one_linear_layer_are_refused_saying_why(arch, why):
    with pytest.raises(ValueError, match=f"^{arch}: {why}.*, so a CAM would not be exact"):
        architectures.family(arch)
    with torch.device("meta"):
        model = get_model(arch)
    with pytest.raises(TypeError, match=f"^{type(model).__name__}: {why}.*, so a CAM would not be exact"):
        architectures.family_of(model)


def test_upsample_bilinear_values():
    maps = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
    out = upsample(maps, (4, 4))
    assert isinstance(out, np.ndarray) and out.shape == (4, 4)
    # align_corners=False: sample points at (i + 0.5) / 2 - 0.5 of the source grid, clamped
    np.testing.assert_allclose(out[0], [0.0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(out[:, 0], [0.0, 0.5, 1.5, 2.0])


def test_upsample_shapes_and_constants():
    t = torch.full((2, 3, 7, 7), 2.5)
    out = upsample(t, (300, 200))
    assert out.shape == (2, 3, 300, 200)
    torch.testing.assert_close(out, torch.full((2, 3, 300, 200), 2.5))
