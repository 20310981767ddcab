"""dualcam's CAM equals MONAI's CAM, pytorch-grad-cam's GradCAM and Captum's LayerGradCam after each one's stated
transform (``dualcam.bench.peers``), and the check catches a transform left out. Needs the ``peers`` extra."""

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from dualcam.bench.fixtures import random_experts
from dualcam.bench.peers import PEERS, TOLERANCE, agreement, main
from dualcam.io.checkpoints import ExpertMeta, build_expert
from dualcam.io.imaging import preprocess
from dualcam.synthetic.scenarios import synthetic_xray

NOT_INSTALLED = "the peers extra is not installed (make peers, or pip install -e '.[peers]')"
for peer_module in ("monai", "pytorch_grad_cam", "captum"):
    pytest.importorskip(peer_module, reason=NOT_INSTALLED)

SIZE = 64


@pytest.fixture(scope="module")
def expert_and_images() -> tuple[torch.nn.Module, torch.Tensor]:
    """An untrained resnet18 expert whose in-class bias is large enough to see, and two 64 px X-rays."""
    torch.manual_seed(0)
    model = build_expert("resnet18").eval()
    with torch.no_grad():
        model.fc.bias[1] = 0.5
    meta = ExpertMeta(arch="resnet18", class_name="c", input_size=SIZE)
    rng = np.random.default_rng(0)
    return model, torch.stack([preprocess(synthetic_xray(SIZE, rng), meta) for _ in range(2)])


@pytest.mark.parametrize("peer", PEERS, ids=lambda peer: peer.name)
def test_each_peer_equals_dualcams_cam_after_its_transform(peer, expert_and_images):
    model, x = expert_and_images
    found = agreement(peer, [model], x)
    assert found.holds, found
    assert found.max_rel <= TOLERANCE


@pytest.mark.parametrize("peer", PEERS, ids=lambda peer: peer.name)
def test_the_raw_cam_without_the_transform_fails_the_check(peer, expert_and_images):
    model, x = expert_and_images
    untransformed = dataclasses.replace(peer, expected=lambda cam, model: cam)
    assert not agreement(untransformed, [model], x).holds


def test_the_script_compares_and_times_every_peer_on_x_rays_through_model_input(tmp_path, capsys):
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    for i in range(2):
        image = Image.fromarray(np.round(synthetic_xray(300, rng) * 255).astype(np.uint8))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        (tmp_path / "images" / f"{i}.png").write_bytes(buf.getvalue())
    c1, c2 = random_experts(tmp_path / "experts", size=SIZE)
    assert main(["--expert1", c1, "--expert2", c2, "--samples", str(tmp_path), "--n", "2", "--batch-size", "2",
                 "--repeat", "1"]) == 0
    captured = capsys.readouterr()
    assert f"{c1} and {c2} (resnet18), {SIZE} px, 2x2 grid; 2 X-rays" in captured.out
    for peer in PEERS:
        rows = [line for line in captured.out.splitlines() if line.strip().startswith(peer.name)]
        assert len(rows) == 2, captured.out  # its identity and its rate
        assert rows[0].endswith("holds")
