"""What must hold on every device the scorer runs on: float32 heatmaps, the device's JPEG decoding
and scoring from bytes. Each test runs on the CPU everywhere and on CUDA where there is a GPU
(marked ``gpu``; ``make gpu-check`` runs those and skips, with the reason, where CUDA is absent).
"""

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from dualcam import DualScorer, ExpertMeta, build_expert, forward_with_cams, model_input
from dualcam.bench import gpu_check
from dualcam.bench.fixtures import real_size_xray
from dualcam.io.device_decode import DeviceDecoder, takes
from dualcam.io.results import to_numpy
from dualcam.maps.numerics import deviation
from dualcam.scoring.scorers import load_images, score_images

CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)")])
DEVICES = ["cpu", CUDA]
INPUT_SIZE = 224  # of the experts (conftest's fixture)


def encoded(image: np.ndarray, fmt: str = "JPEG", mode: str | None = None, **options) -> bytes:
    """An 8-bit file of a float image in [0, 1], (H, W) or (H, W, 3), converted to ``mode`` if given."""
    im = Image.fromarray(np.round(image * 255).astype(np.uint8))
    buf = io.BytesIO()
    (im.convert(mode) if mode else im).save(buf, fmt, **options)
    return buf.getvalue()


@pytest.fixture(scope="module")
def jpegs() -> dict[str, bytes]:
    """Real-size JPEGs the device decoder takes: grey and colour, even and odd sizes, 4:2:0 and 4:4:4."""
    rng = np.random.default_rng(3)
    grey = real_size_xray(rng, (2500, 2048))
    odd = real_size_xray(rng, (1999, 1601))
    colour = np.stack([odd, odd * 0.95, odd * 0.9], -1)
    return {"grey-2048x2500.jpg": encoded(grey, quality=90), "grey-1601x1999.jpg": encoded(odd, quality=75),
            "rgb-1601x1999-420.jpg": encoded(colour, quality=85),
            "rgb-1601x1999-444.jpg": encoded(colour, quality=95, subsampling=0)}


@pytest.mark.parametrize("device", DEVICES)
def test_fp32_heatmaps_are_float64_heatmaps_to_float32_noise(device, experts, jpegs):
    # What `make gpu-check` compares GPU and CPU runs by: at alpha 50, the heatmap's max error stays
    # within 1e-3 of its max (the target), against the same forward computed in float64.
    # TF32 (cuDNN's default for convolutions) would miss it: tf32 on CUDA must be further off.
    meta = ExpertMeta(arch="resnet18", class_name="x", input_size=INPUT_SIZE)
    x = torch.stack([model_input(data, name, meta)[0] for name, data in jpegs.items()])
    scorer = DualScorer(*experts, device=device)
    reference = {}
    for key, expert in zip(("cam1", "cam2"), scorer.experts):
        model = build_expert("resnet18").double().eval()
        model.load_state_dict(expert.model.state_dict())
        with torch.inference_mode():
            reference[key] = forward_with_cams(model, x.double())[1][:, 1].numpy()
    fp32 = deviation(reference, scorer.score(x), alphas=(50.0,))
    assert fp32["heatmap 50"].max() <= 1e-3, fp32
    assert not fp32["peak moved"].any()
    if device == "cuda" and torch.cuda.get_device_capability() >= (8, 0):  # TF32 exists from Ampere on
        tf32 = deviation(reference, DualScorer(*experts, device=device, precision="tf32").score(x), alphas=(50.0,))
        assert tf32["cam1"].max() > 10 * fp32["cam1"].max(), (tf32, fp32)


@pytest.mark.parametrize("device", DEVICES)
def test_the_device_decoder_agrees_with_the_cpu_path(device, jpegs):
    # The bounds of tests/test_faithfulness.py (mean |d| <= 0.01 over all pixels, <= 0.03 per image),
    # for grey and colour experts; the image sizes are the files'.
    assert all(takes(data) for data in jpegs.values())
    for mode in ("L", "RGB"):
        meta = ExpertMeta(arch="resnet18", class_name="x", input_size=INPUT_SIZE, color_mode=mode)
        decoded = DeviceDecoder(meta, device)(list(jpegs.values()))
        assert all(x.device.type == device for x, _ in decoded)
        cpu = [model_input(data, name, meta) for name, data in jpegs.items()]
        assert [size for _, size in decoded] == [size for _, size in cpu]
        d = (torch.stack([x.cpu() for x, _ in decoded]) - torch.stack([x for x, _ in cpu])).abs()
        assert d.mean() <= 0.01 and d.mean(dim=(1, 2, 3)).max() <= 0.03, (mode, d.mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("device", DEVICES)
def test_scoring_from_bytes_agrees_with_scoring_decoded_files(device, experts, jpegs, tmp_path):
    # The scorer decodes the JPEGs its loaders left as bytes; PNGs, CMYK JPEGs and broken files
    # come decoded, or as errors, from the loaders as before. Same rows, within the decode bounds.
    grey = real_size_xray(np.random.default_rng(4), (900, 700))
    files = {**jpegs, "grey.png": encoded(grey, "PNG"), "cmyk.jpg": encoded(grey, mode="CMYK"),
             "truncated.jpg": jpegs["grey-1601x1999.jpg"][:50_000]}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    uris = [str(tmp_path / name) for name in files]
    scorer = DualScorer(*experts, device=device)
    left_as_bytes = load_images(pa.table({"uri": uris}), scorer.meta, device_jpeg=True).column("data").is_valid()
    assert left_as_bytes.to_pylist() == [True] * 4 + [False] * 3
    on_device, on_cpu = (score_images(scorer, uris, batch_size=3, device_jpeg=way) for way in (True, False))
    assert on_device.column("uri").to_pylist() == uris
    for column in ("status", "error", "width", "height"):
        assert on_device.column(column).to_pylist() == on_cpu.column(column).to_pylist(), column
    assert on_device.column("status").to_pylist() == ["ok"] * 6 + ["error"]
    assert "truncated.jpg: corrupt or truncated JPEG" in on_device.column("error")[6].as_py()
    ok = pa.array([True] * 6 + [False])
    for p in ("p1", "p2"):
        np.testing.assert_allclose(on_device.column(p).filter(ok).to_numpy(), on_cpu.column(p).filter(ok).to_numpy(),
                                   atol=0.005)
    maps = {way: {f"cam{i}": to_numpy(t.column(f"cam{i}").filter(ok)) for i in (1, 2)}
            for way, t in (("device", on_device), ("cpu", on_cpu))}
    print(deviation(maps["cpu"], maps["device"], alphas=(5.0,)))
    assert deviation(maps["cpu"], maps["device"], alphas=(5.0,))["cam1"].max() < 0.05


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA it runs the whole check: make gpu-check")
def test_gpu_check_without_cuda_says_so_and_exits_0(capsys):
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out == "gpu-check: skipped: no CUDA device (torch.cuda.is_available() is False)\n"
