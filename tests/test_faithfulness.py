"""The model input path (``model_input``: reduced decoding, one resize) against the exact one
(the whole image decoded to float32, then ``preprocess``), on real-size files: generated ones
always, the sample X-rays when present.

Bounds (normalized units, as the model sees them): mean |d| <= 0.01 over all pixels and
<= 0.03 per image, as issue 12 asks. Measured here (resnet18 pair, random seeded weights, 224 px):
mean 0.0016 and at most 0.0058 per image on the 125 sample X-rays and 6 DICOMs; p1 and p2 moved
by at most 0.0009, the heatmap peak by at most 1 input pixel (1 image of 131). The tests allow
0.005 and 2 input pixels.
"""

import io

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from dualcam import DualScorer, ExpertMeta, decode_image, model_input, preprocess
from dualcam.bench.fixtures import real_size_xray
from dualcam.bench.speed import write_real_size_inputs

from conftest import shared_xrays, write_untrained_experts
from samples import dicom_bytes, png16_bytes

INPUT_SIZE = 224


def exact_input(data: bytes, name: str, meta) -> torch.Tensor:
    """The reference: every pixel decoded to float32, one antialiased resize of the whole image."""
    return preprocess(decode_image(data, name), meta)


def generated_files(root) -> dict[str, bytes]:
    """Real-size files of every kind the reduced path treats differently, odd sizes included (partial boxes)."""
    files = {p.name: p.read_bytes() for p in write_real_size_inputs(root)}
    rng = np.random.default_rng(1)
    grey = real_size_xray(rng, (2399, 3001))
    colour = Image.fromarray(np.round(np.stack([grey, grey * 0.95, grey * 0.9], -1) * 255).astype(np.uint8))
    files["rgb-3001x2399.jpg"] = encoded(colour, "JPEG", quality=85)
    files["rgba-1533x1911.png"] = encoded(colour.resize((1533, 1911)).convert("RGBA"), "PNG")
    files["palette-1200x1500.png"] = encoded(colour.resize((1200, 1500)).convert("P"), "PNG")
    twelve = np.round(real_size_xray(rng, (1601, 1999)) * 4095)
    files["12bit-sbit-1999x1601.png"] = png16_bytes(twelve, significant_bits=12)
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(1601, 1999, 4095 - twelve, photometric="MONOCHROME1")))
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 2, -1000, 3000, 5000
    buf = io.BytesIO()
    ds.save_as(buf)
    files["mono1-windowed-1999x1601.dcm"] = buf.getvalue()
    return files


def encoded(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, bytes]:
    files = generated_files(tmp_path_factory.mktemp("real-size"))
    samples = shared_xrays()
    if samples is not None:
        for path in sorted((samples / "images").iterdir()) + sorted((samples / "dicom").glob("*.dcm")):
            files[path.name] = path.read_bytes()
    return files


@pytest.fixture(scope="module")
def scorer(tmp_path_factory) -> DualScorer:
    first, second = write_untrained_experts(tmp_path_factory.mktemp("faithful-experts"), INPUT_SIZE)
    return DualScorer(first, second, device="cpu")


@pytest.fixture(scope="module")
def both(inputs, scorer) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) model inputs of every file: the reduced path's, the exact one's."""
    fast, exact = [], []
    for name, data in inputs.items():
        x, size = model_input(data, name, scorer.meta)
        fast.append(x)
        exact.append(exact_input(data, name, scorer.meta))
        assert size == decode_image(data, name).shape[:2], name
    return torch.stack(fast), torch.stack(exact)


def test_model_inputs_stay_within_the_bounds(inputs, both):
    fast, exact = both
    d = (fast - exact).abs()
    per_image = d.mean(dim=(1, 2, 3))
    worst = list(inputs)[int(per_image.argmax())]
    assert d.mean() <= 0.01, f"mean |d| {d.mean():.4f}"
    assert per_image.max() <= 0.03, f"{worst}: mean |d| {per_image.max():.4f}"
    # the reduced path is not the exact one where it reduces: the test has teeth
    assert per_image.max() > 0


def test_scores_and_heatmap_peaks_agree(both, scorer):
    fast, exact = (scorer.score(x) for x in both)
    for p in ("p1", "p2"):
        np.testing.assert_allclose(fast[p], exact[p], atol=0.005)
    np.testing.assert_allclose(fast["peak"], exact["peak"], atol=2)  # input pixels, of 224


@pytest.mark.parametrize("width", [955, 2047])
def test_reduced_images_cover_the_whole_picture(width):
    # The last column of boxes is partial (955 = 2 x 477 + 1, 2047 = 4 x 511 + 3): mapped onto the
    # input as if it were whole, the picture would stretch and a sharp step at 80 % of the width
    # would move (max |d| 0.11 and 0.048); mapped by what it covers, only the filters differ (0.026, 0.019).
    image = np.zeros((1000, width), np.uint8)
    image[:, int(width * 0.8):] = 255
    data = encoded(Image.fromarray(image), "PNG")
    meta = ExpertMeta(arch="resnet18", class_name="x", input_size=224, mean=(0.0,) * 3, std=(1.0,) * 3)
    fast, exact = model_input(data, "step.png", meta)[0], exact_input(data, "step.png", meta)
    assert (fast - exact).abs().max() <= 0.04
