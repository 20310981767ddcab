"""TorchXRayVision's DenseNet-121 and ResNet-50 as experts (the xrv extra): CAMs exact for xrv's own logits,
its probabilities (sigmoid, op_norm), its preprocessing, and expert init by pathology name, then scoring.

Its published weights cannot be downloaded here: xrv's classes load random weights that the tests save where
xrv's downloader looks (``cache_dir``), so they run xrv's own loading code, operating points included."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dualcam.commands.expert import init
from dualcam.io.checkpoints import ExpertMeta, build_expert, load_meta
from dualcam.io.imaging import model_input
from dualcam.maps import xrv
from dualcam.maps.cam import class_probability, forward_with_cams
from dualcam.scoring.scorers import DualScorer, score_images

from samples import png_bytes, xray_pixels

tv = pytest.importorskip("torchxrayvision", reason="the xrv extra is not installed: pip install 'dualcam[xrv]'")


def published(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with random batch-norm statistics and head bias, so that every layer matters to the logits."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
            elif isinstance(module, torch.nn.Linear):
                module.bias.uniform_(-1, 1)
    return model.eval()


@pytest.fixture(scope="module")
def xrv_cache(tmp_path_factory) -> Path:
    """A cache folder holding a random DenseNet-121 and ResNet-50 where xrv's downloader finds its files."""
    cache = tmp_path_factory.mktemp("xrv-cache")
    urls = tv.models.model_urls
    dense = published(tv.models.DenseNet(weights=None))
    torch.save(dense, cache / Path(urls["densenet121-res224-all"]["weights_url"]).name)  # xrv pickles the model
    inner = published(build_expert("xrv-resnet50", num_outputs=18))  # xrv saves its inner torchvision ResNet
    torch.save(inner.state_dict(), cache / Path(urls["resnet50-res512-all"]["weights_url"]).name)
    return cache


def xrv_model(arch: str, cache: Path) -> torch.nn.Module:
    return tv.models.DenseNet(weights=xrv.PUBLISHED[arch][0], cache_dir=str(cache)) if arch == "xrv-densenet121" \
        else tv.models.ResNet(weights="resnet50-res512-all", cache_dir=str(cache))


def write_state(path: Path, state: dict) -> str:
    buf = io.BytesIO()
    torch.save(state, buf)
    path.write_bytes(buf.getvalue())
    return str(path)


def test_the_names_and_weights_match_the_installed_package():
    assert tuple(tv.datasets.default_pathologies) == xrv.PATHOLOGIES
    for arch, names in xrv.PUBLISHED.items():
        for name in names:  # each head's outputs are the 18 in order, those it was not trained for unnamed
            labels = tv.models.model_urls[name]["labels"]
            assert all(label in (p, "") for label, p in zip(labels, xrv.PATHOLOGIES, strict=True)), name
            assert len(tv.models.model_urls[name]["op_threshs"]) == len(xrv.PATHOLOGIES)
        assert xrv.INPUT_SIZES[arch] == tv.models.model_urls[names[0]].get("input_resolution",
                                                                             xrv.INPUT_SIZES[arch])


@pytest.mark.parametrize("arch", ["xrv-densenet121", "xrv-resnet50"])
def test_the_cams_are_exact_for_xrvs_logits_and_the_probabilities_are_xrvs(arch, xrv_cache, tmp_path):
    reference = xrv_model(arch, xrv_cache)
    state = xrv.published_state(arch, xrv.PUBLISHED[arch][0], cache_dir=str(xrv_cache))
    assert xrv.OP_THRESHS in state
    model = build_expert(arch, write_state(tmp_path / "w.pt", state), num_outputs=18).eval()
    size = xrv.INPUT_SIZES[arch]
    x = torch.rand(1, 1, size, size) * 2048 - 1024  # xrv's range
    with torch.no_grad():
        logits, cams = forward_with_cams(model, x.expand(-1, 3, -1, -1))
        xrv_logits = reference.model(x) if arch == "xrv-resnet50" else reference.classifier(reference.features2(x))
    xrv_probs = tv.models.op_norm(xrv_logits.sigmoid(), reference.op_threshs)  # the rest of xrv's forward
    bias = model.get_submodule("fc" if arch == "xrv-resnet50" else "classifier").bias
    scale = xrv_logits.abs().max()
    torch.testing.assert_close(logits, xrv_logits, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(cams.mean((-2, -1)) + bias, xrv_logits, rtol=0, atol=1e-5 * scale)
    points = model.get_buffer(xrv.OP_THRESHS)
    for k in (1, 8):  # Consolidation, Pneumonia
        p = class_probability(logits, k, "sigmoid", xrv.operating_point(points, k))
        torch.testing.assert_close(p, xrv_probs[:, k], rtol=0, atol=1e-6)


def xrv_input(pixels: np.ndarray, size: int) -> np.ndarray:
    """xrv's inference preprocessing of an 8-bit grey image (its README): normalize, crop, resize."""
    image = tv.datasets.normalize(pixels, 255)[None]
    return tv.datasets.XRayResizer(size)(tv.datasets.XRayCenterCrop()(image))


@pytest.mark.parametrize("shape", [(224, 224), (224, 300), (300, 224)])
def test_an_image_of_the_models_size_gets_exactly_xrvs_input(shape, tmp_path):
    meta = load_meta(xrv_expert(tmp_path, "Pneumonia", write_state(tmp_path / "w.pt", state_of("xrv-densenet121"))))
    pixels = (xray_pixels(*shape, seed=1) * 255).round().astype(np.uint8)
    x, _ = model_input(png_bytes(pixels), "a.png", meta)
    assert torch.equal(x[0], torch.from_numpy(xrv_input(pixels, 224)[0]))
    assert torch.equal(x[1], x[0]) and torch.equal(x[2], x[0])


def test_a_larger_image_gets_xrvs_input_up_to_the_resampling():
    """Resized from 1000 x 800, dualcam's torch resampling and xrv's scikit-image one differ by a few grey
    levels (of 2048 per unit of 1) on average; the crop is the same square."""
    meta = load_meta_of_preset("xrv-densenet121")
    pixels = (xray_pixels(1000, 800, seed=2) * 255).round().astype(np.uint8)
    x, _ = model_input(png_bytes(pixels), "a.png", meta)
    diff = (x[0] - torch.from_numpy(xrv_input(pixels, 224)[0])).abs() / 2048
    assert diff.mean() < 0.01 and diff.max() < 0.1, (float(diff.mean()), float(diff.max()))


def load_meta_of_preset(arch: str) -> ExpertMeta:
    preset = xrv.preprocessing(arch)
    return ExpertMeta(arch=arch, class_name="Pneumonia", class_index=8, **preset)


def state_of(arch: str) -> dict:
    return {**published(build_expert(arch, num_outputs=18)).state_dict(),
            xrv.OP_THRESHS: torch.tensor(tv.models.model_urls[xrv.PUBLISHED[arch][0]]["op_threshs"])}


def xrv_expert(tmp_path: Path, pathology: str, weights: str) -> str:
    """``dualcam expert init --arch xrv-densenet121 --class-name PATHOLOGY --weights FILE``, no other flag."""
    out = str(tmp_path / pathology)
    assert init(arch="xrv-densenet121", class_name=pathology, num_outputs=None, class_index=None, class_names=None,
                activation=None, input_size=None, color_mode=None, resize=None, resize_size=None, mean=None,
                std=None, output_stride=32, weights=weights, output=out) == 0
    return out


def test_expert_init_by_pathology_name_then_score_two_of_its_classes_in_one_pass(xrv_cache, tmp_path):
    state = xrv.published_state("xrv-densenet121", "densenet121-res224-all", cache_dir=str(xrv_cache))
    weights = write_state(tmp_path / "xrv.pt", state)
    c1, c2 = xrv_expert(tmp_path, "Pneumonia", weights), xrv_expert(tmp_path, "Consolidation", weights)
    meta = load_meta(c1)
    thresholds = tv.models.model_urls["densenet121-res224-all"]["op_threshs"]
    assert (meta.class_index, meta.num_outputs, meta.activation, meta.input_size, meta.resize, meta.resize_size,
            meta.color_mode, meta.mean, meta.std) == (8, 18, "sigmoid", 224, "center-crop", 224, "L",
                                                      (0.5,) * 3, (1 / 2048,) * 3)
    assert meta.op_threshold == pytest.approx(thresholds[8]) and load_meta(c2).class_index == 1
    files = []
    for i, shape in enumerate([(224, 224), (224, 300)]):
        pixels = (xray_pixels(*shape, seed=i) * 255).round().astype(np.uint8)
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(pixels).save(files[-1])
    scorer = DualScorer(c1, c2, device="cpu")
    assert scorer.one_model
    rows = score_images(scorer, [str(f) for f in files]).to_pydict()
    reference = xrv_model("xrv-densenet121", xrv_cache)
    for i, f in enumerate(files):
        pixels = np.asarray(Image.open(f))
        with torch.no_grad():
            probs = reference(torch.from_numpy(xrv_input(pixels, 224))[None])[0]
        assert rows["error"][i] is None
        assert rows["p1"][i] == pytest.approx(float(probs[8]), abs=1e-5)
        assert rows["p2"][i] == pytest.approx(float(probs[1]), abs=1e-5)


def test_an_untrained_output_and_imagenet_are_refused(tmp_path):
    state = {**state_of("xrv-densenet121"),
             xrv.OP_THRESHS: torch.tensor(tv.models.model_urls["densenet121-res224-nih"]["op_threshs"])}
    with pytest.raises(ValueError, match="no operating point for output 14 \\(Lung Lesion\\)"):
        xrv_expert(tmp_path, "Lung Lesion", write_state(tmp_path / "nih.pt", state))
    with pytest.raises(ValueError, match="xrv-resnet50 has no ImageNet weights"):
        build_expert("xrv-resnet50", "imagenet", num_outputs=18)


def test_dualcam_imports_without_torchxrayvision_and_says_which_extra_downloads_its_weights():
    code = ("import sys; sys.modules['torchxrayvision'] = None\n"
            "import dualcam, dualcam.cli\nfrom dualcam.maps import xrv\n"
            "try:\n    xrv.published_state('xrv-densenet121', 'densenet121-res224-all')\n"
            "except ImportError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "pip install 'dualcam[xrv]'" in out.stdout
