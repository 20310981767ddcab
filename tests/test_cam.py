"""CAMs in closed form: pinned to the network's own forward pass and to GAP + linear algebra."""

import numpy as np
import pytest
import torch
from torch import nn

from dualcam.io.checkpoints import SUPPORTED_ARCHS, build_expert
from dualcam.maps.cam import forward_with_cams, upsample


def final_features_by_hook(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The final feature maps, captured independently of dualcam with a forward hook."""
    captured = {}
    layer = model.layer4 if hasattr(model, "layer4") else model.features
    handle = layer.register_forward_hook(lambda m, i, o: captured.setdefault("f", o))
    try:
        model(x)
    finally:
        handle.remove()
    f = captured["f"]
    return f if hasattr(model, "layer4") else torch.relu(f)


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_cam_invariants(arch):
    torch.manual_seed(0)
    model = build_expert(arch).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.inference_mode():
        logits, cams = forward_with_cams(model, x)
        reference_logits = model(x)
        f = final_features_by_hook(model, x)
    linear = model.fc if hasattr(model, "fc") else model.classifier
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


def test_unsupported_model_is_refused():
    with pytest.raises(TypeError, match="supports torchvision ResNet and DenseNet"):
        forward_with_cams(nn.Sequential(nn.Conv2d(3, 2, 3)), torch.randn(1, 3, 8, 8))


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
