"""Precision: float32 unless asked, what each precision does to the forward pass, and how far the
others move heatmaps (on CPU autocast, the GPU's emulation; the README's table comes from the same code)."""

import numpy as np
import pytest
import torch

from dualcam.bench.fixtures import random_experts
from dualcam.bench.precision_table import _to_tf32, measure, table
from dualcam.io.results import SCORE, ExpertId, RunSpec
from dualcam.jobspec import load_spec
from dualcam.maps.numerics import PRECISIONS, computing_in, deviation
from dualcam.synthetic.scenarios import write_synthetic_xrays


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[str, str]:
    return random_experts(tmp_path_factory.mktemp("precision-experts"), "resnet18", size=96)


@pytest.fixture(scope="module")
def deviations(pair, tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    files = write_synthetic_xrays(tmp_path_factory.mktemp("precision-images"), 8, size=96)
    return measure(pair, files, "cpu", batch_size=4)


def test_autocast_moves_heatmaps_and_float32_does_not(deviations):
    # fp32 is the reference itself; the CPU's tf32 emulation, fp16 and bf16 move the CAMs by about
    # their mantissas' precision (2^-11, 2^-11, 2^-8), and with them the heatmaps.
    assert list(deviations) == list(PRECISIONS)
    assert all(not d.any() for d in deviations["fp32"].values())
    med = {p: {k: float(np.median(v)) for k, v in deviations[p].items()} for p in PRECISIONS}
    for p in ("tf32", "fp16", "bf16"):
        assert med[p]["cam1"] > 0 and med[p]["heatmap 5"] > 0, (p, med[p])
    assert med["bf16"]["cam1"] > 3 * med["fp16"]["cam1"], med
    assert med["fp16"]["cam1"] < 0.01 and med["bf16"]["cam1"] < 0.05, med
    assert "| bf16 | " in table(deviations) and "of 8 images |" in table(deviations)


def test_deviation_measures_relative_to_the_reference():
    rng = np.random.default_rng(0)
    ref = {"cam1": rng.random((3, 4, 4)), "cam2": rng.random((3, 4, 4))}
    moved = {"cam1": ref["cam1"].copy(), "cam2": ref["cam2"]}
    moved["cam1"][1] *= 1.01
    d = deviation(ref, moved, alphas=(5.0,))
    np.testing.assert_allclose(d["cam1"], [0, 0.01, 0], atol=1e-12)
    assert d["heatmap 5"][1] > 0 and d["heatmap 5"][[0, 2]].tolist() == [0, 0]
    moved["cam1"][2] = ref["cam1"][2][::-1]  # its peak moves
    assert deviation(ref, moved)["peak moved"][2] == 1.0


def test_tf32_rounding_keeps_10_mantissa_bits():
    x = torch.randn(10_000) * 1000
    rounded = _to_tf32(x)
    assert not (rounded.view(torch.int32) & 0x1FFF).any()
    assert ((rounded - x).abs() / x.abs()).max() <= 2.0**-11


def test_computing_in_switches_tf32_for_tf32_alone_and_restores_it():
    torch.backends.cudnn.allow_tf32 = True  # torch's default for convolutions
    with computing_in("fp32", torch.device("cpu")):
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    with computing_in("tf32", torch.device("cpu")):
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    with computing_in("bf16", torch.device("cpu")):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    assert torch.backends.cudnn.allow_tf32
    with pytest.raises(ValueError, match="precision must be one of fp32, tf32, fp16, bf16, got 'fp8'"):
        computing_in("fp8", torch.device("cpu")).__enter__()


def test_the_precision_is_in_the_run_file_and_job_specs(tmp_path):
    ids = ExpertId("C1", "v1", "a" * 64), ExpertId("C2", "v2", "b" * 64)
    spec = RunSpec(*ids, 5.0, precision="bf16")
    assert RunSpec.from_json(spec.to_json()) == spec and spec != RunSpec(*ids, 5.0)
    legacy = spec.to_json().replace('"precision": "bf16",', "")  # written before precision was recorded
    assert RunSpec.from_json(legacy).precision == "fp32" and "fp32" in RunSpec.from_json(legacy).describe()
    assert SCORE.kind in spec.describe() and ", bf16, " in spec.describe()
    path = tmp_path / "score.yaml"
    path.write_text("job: score\nexpert1: a\nexpert2: b\ninput: in\noutput: out\nprecision: fp16\n")
    assert load_spec(str(path)).arguments()["precision"] == "fp16"
    path.write_text("job: drift\nold_expert: a\nnew_expert: b\ninput: in\noutput: out\n")
    assert load_spec(str(path)).arguments()["precision"] == "fp32"
