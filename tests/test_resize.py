"""Preprocessing that matches training: a centre-crop expert's input is torchvision's Resize + CenterCrop of the
image, on the CPU and the device decoder alike, and its peaks and boxes map back to the pixels the model saw."""

import io
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torchvision import transforms

from dualcam import DualScorer, build_expert, save_expert
from dualcam.bench.fixtures import real_size_xray
from dualcam.io.checkpoints import ExpertMeta
from dualcam.io.device_decode import DeviceDecoder
from dualcam.io.imaging import InputGeometry, decode_image, image_window, input_window, model_input
from dualcam.io.results import RUN_FILE, RunSpec
from dualcam.reports.drawing import BOX_COLORS, GAP, LEGEND_HEIGHT, SCALE_HEIGHT, TITLE_HEIGHT
from dualcam.reports.score_page import render_results
from dualcam.scoring.scorers import load_images

CROP = {"arch": "resnet18", "class_name": "x", "input_size": 224, "resize": "center-crop"}


def encoded(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buf, fmt, quality=95)
    return buf.getvalue()


def pixels(x: torch.Tensor, meta: ExpertMeta) -> torch.Tensor:
    """A model input's first channel back in [0, 1] units."""
    return x[0] * meta.std[0] + meta.mean[0]


def test_centre_crop_defaults_and_refusals():
    assert ExpertMeta(**CROP).resized_side == 256  # torchvision's presets: 224 of 256
    assert ExpertMeta(**{**CROP, "input_size": 380}).resized_side == 434
    assert ExpertMeta(**{**CROP, "resize_size": 232}).resized_side == 232
    assert ExpertMeta(arch="resnet18", class_name="x", input_size=224).resize == "whole"
    with pytest.raises(ValueError, match="resize must be one of whole, center-crop, got 'crop'"):
        ExpertMeta(**{**CROP, "resize": "crop"})
    with pytest.raises(ValueError, match="resize_size is for resize center-crop only, an integer >= input_size 224"):
        ExpertMeta(**{**CROP, "resize_size": 200})
    with pytest.raises(ValueError, match="got 256 with resize whole"):
        ExpertMeta(**{**CROP, "resize": "whole", "resize_size": 256})


@pytest.mark.parametrize("shape,bound", [((600, 450), 1e-6), ((450, 601), 1e-6), ((1300, 900), 0.02)])
def test_a_centre_crop_experts_input_is_torchvisions_resize_and_centre_crop(shape, bound):
    # Images under 2 x 256 a side are resized whole, as torchvision does: the same to float32 rounding (1e-6).
    # (1300, 900) is box-reduced by 2 rows and 1 column first (model_input's fast path, whose own bound against a
    # whole resize tests/test_faithfulness.py sets): here mean |d| 0.0012, max 0.008, so within 0.02.
    image = real_size_xray(np.random.default_rng(0), shape)
    data = encoded(image, "PNG")
    meta = ExpertMeta(**CROP)
    x, size = model_input(data, "x.png", meta)
    expected = transforms.Compose([transforms.Resize(256, antialias=True), transforms.CenterCrop(224)])(
        torch.from_numpy(decode_image(data, "x.png"))[None])[0]
    d = (pixels(x, meta) - expected).abs()
    assert size == shape and x.shape == (3, 224, 224)
    assert d.max() <= bound and d.mean() <= bound / 4, (d.mean(), d.max())


def test_the_device_decoder_crops_as_the_cpu_path():
    meta = ExpertMeta(**CROP)
    data = encoded(real_size_xray(np.random.default_rng(1), (1999, 1601)), "JPEG")
    ((on_device, size),) = DeviceDecoder(meta, "cpu")([data])
    on_cpu, cpu_size = model_input(data, "x.jpg", meta)
    d = (on_device - on_cpu).abs()
    assert size == cpu_size and d.mean() <= 0.01, d.mean()  # tests/test_gpu.py's bound for the two paths


@pytest.mark.parametrize("height,width", [(300, 400), (400, 300)])
def test_a_peak_maps_back_to_the_image_pixel_the_model_saw_it_at(tmp_path, height, width):
    # A bright dot off the image's centre, inside the crop: the model input's brightest pixel, mapped back by the
    # scorer as a peak and a one-pixel box, lands on the dot (within one image pixel per input pixel).
    uris = []
    for name in ("a", "b"):
        uris.append(str(tmp_path / name))
        save_expert(build_expert("resnet18"), uris[-1], {**CROP, "input_size": 64, "class_name": name})
    scorer = DualScorer(*uris, device="cpu")
    image = np.zeros((height, width), np.float32)
    top, left, bottom, right = image_window(scorer.meta, height, width)
    dot_y, dot_x = top + (bottom - top) // 3, left + 2 * (right - left) // 3
    image[dot_y - 1:dot_y + 2, dot_x - 1:dot_x + 2] = 1.0
    x, _ = model_input(encoded(image, "PNG"), "dot.png", scorer.meta)
    at = int(x[0].argmax())
    y_in, x_in = divmod(at, 64)
    scores = {"peak": np.array([[x_in, y_in]], np.float64), "box": np.array([[x_in, y_in, x_in, y_in]])}
    out = scorer.columns(scores, np.array([[width, height]]))
    step = max(height, width) / 64
    assert abs(out["peak_x"][0] - dot_x) <= step and abs(out["peak_y"][0] - dot_y) <= step, (out, dot_x, dot_y)
    assert out["box_x"][0] <= dot_x < out["box_x"][0] + out["box_w"][0] + 1
    assert out["box_y"][0] <= dot_y < out["box_y"][0] + out["box_h"][0] + 1
    # the window is the crop: a square, 64/73 of the short side (to a pixel: each edge is rounded)
    side = min(height, width) * 64 / 73
    assert abs(bottom - top - side) <= 1 and abs(right - left - side) <= 1


def test_whole_images_keep_todays_mapping():
    meta = ExpertMeta(arch="resnet18", class_name="x", input_size=224)
    rh, rw, top, left = input_window(meta, np.array([300, 1000]), np.array([400, 50]))
    assert rh.tolist() == rw.tolist() == [224, 224] and top.tolist() == left.tolist() == [0, 0]
    assert image_window(meta, 300, 400) == (0, 0, 300, 400)


def test_explain_draws_a_centre_crop_experts_heatmap_over_the_part_of_the_image_it_saw(tmp_path, capsys):
    from dualcam.cli import main

    image_path = tmp_path / "wide.png"
    image_path.write_bytes(encoded(real_size_xray(np.random.default_rng(2), (120, 200)), "PNG"))
    for name in ("a", "b"):
        assert main(["expert", "init", "--arch", "resnet18", "--class-name", name, "--input-size", "64",
                     "--resize", "center-crop", "--output", str(tmp_path / name)]) == 0
    capsys.readouterr()
    assert main(["explain", "--expert1", str(tmp_path / "a"), "--expert2", str(tmp_path / "b"), "--output",
                 str(tmp_path / "o"),
                 str(image_path)]) == 0
    x, y = (int(v) for v in re.search(r"\(\s*(\d+), (\d+)\)\s+\S*wide.png", capsys.readouterr().out).groups())
    top, left, bottom, right = image_window(ExpertMeta(**{**CROP, "input_size": 64}), 120, 200)
    assert (top, left, bottom, right) == (7, 46, 112, 152)  # 120 x 200 -> 73 x 121, centre 64 x 64 at (4, 28)
    assert left <= x < right and top <= y < bottom
    with Image.open(tmp_path / "o" / "wide.addk.png") as overlay:  # the seen square, not the 200 x 120 image
        assert overlay.size[0] < overlay.size[1]


def crop_pair(root, size: int = 64) -> DualScorer:
    uris = []
    for name in ("a", "b"):
        uris.append(str(root / name))
        save_expert(build_expert("resnet18"), uris[-1], {**CROP, "input_size": size, "class_name": name})
    return DualScorer(*uris, device="cpu")


def test_a_run_records_where_its_experts_input_lies_and_older_runs_read_as_the_whole_image(tmp_path):
    spec = crop_pair(tmp_path).spec
    assert spec.geometry == InputGeometry(64, "center-crop", 73)
    assert RunSpec.from_json(spec.to_json()).geometry == spec.geometry
    assert spec.window(120, 200) == (7, 46, 112, 152)  # as explain's (image_window)
    older = json.loads(spec.to_json())
    del older["input"]
    assert RunSpec.from_json(json.dumps(older)) == spec  # resumable: the experts' versions fix the geometry
    assert RunSpec.from_json(json.dumps(older)).window(120, 200) == (0, 0, 120, 200)


def test_render_draws_a_centre_crop_runs_maps_over_the_square_the_experts_saw(tmp_path):
    scorer = crop_pair(tmp_path)
    image = tmp_path / "wide.png"
    image.write_bytes(encoded(real_size_xray(np.random.default_rng(2), (120, 200)), "PNG"))
    out = tmp_path / "results"
    out.mkdir()
    pq.write_table(scorer(load_images(pa.table({"uri": [str(image)]}), scorer.meta)), out / "part-0.parquet")
    (out / RUN_FILE).write_text(scorer.spec.to_json())
    # one box across the window's left edge (46), one outside it: the first is cut to the window, the second left out
    (tmp_path / "boxes.csv").write_text(f"uri,x,y,w,h,kind\n{image},30,20,40,30,F1\n{image},0,0,20,20,S\n")
    rendered = render_results(str(out), tmp_path / "report", n=1, alphas=(5,), boxes=str(tmp_path / "boxes.csv"),
                              side=None, review=0)
    with Image.open(tmp_path / "report" / "images" / "01-wide.png-triple.png") as triple:
        drawn = np.asarray(triple.convert("RGB"))
    assert rendered.images == 1
    assert drawn.shape[1] == 3 * 106 + 2 * GAP  # the 106 x 105 window of the 200 x 120 image, at its own size
    assert drawn.shape[0] == TITLE_HEIGHT + 105 + SCALE_HEIGHT + LEGEND_HEIGHT
    f1 = np.array(BOX_COLORS[0], np.uint8)
    column = drawn[TITLE_HEIGHT:TITLE_HEIGHT + 105, :106]
    assert (column[13:43, 0] == f1).all()  # the F1 box, cut at the window's left edge, rows 20 to 50 less 7
    assert not (column[:13, :30] == f1).all(-1).any()
