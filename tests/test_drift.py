"""Drift measures on hand-made maps with known answers, and the drift scorer without Ray."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dualcam import DriftScorer, addk, build_expert, model_input, save_expert
from dualcam.io.results import DRIFT
from dualcam.maps import drift_measures
from dualcam.scoring.scorers import score_images
from dualcam.synthetic.scenarios import write_synthetic_xrays


def hot(*cells: tuple[int, int], size: int = 4, values: tuple[float, ...] | None = None) -> torch.Tensor:
    """A (1, size, size) map, zero but for the given (row, col) cells (1 each, or ``values``)."""
    m = torch.zeros(1, size, size)
    for (r, c), v in zip(cells, values or [1.0] * len(cells)):
        m[0, r, c] = v
    return m


def test_peak_shift_in_image_pixels():
    old, new = np.array([[0.0, 0.0], [10.0, 10.0]]), np.array([[3.0, 4.0], [10.0, 10.0]])
    np.testing.assert_allclose(drift_measures.peak_shift_px(old, new, np.ones((2, 2))), [5.0, 0.0])
    scale = np.array([[2.0, 1.0], [2.0, 1.0]])
    np.testing.assert_allclose(drift_measures.peak_shift_px(old, new, scale), [math.hypot(6, 4), 0.0])


def test_extra_mass_outside_the_old_top_region():
    old = hot((0, 0))
    assert drift_measures.extra_mass_outside_top(old, old).item() == 0.0
    # all attention moved out
    assert drift_measures.extra_mass_outside_top(old, hot((3, 3))).item() == pytest.approx(1.0)
    assert drift_measures.extra_mass_outside_top(old, hot((0, 0), (3, 3))).item() == pytest.approx(0.5)  # half of it
    spread = hot((0, 0), (1, 1), values=(1.0, 0.4))  # top region: (0, 0) only; 0.4 / 1.4 of its mass lies outside
    assert drift_measures.extra_mass_outside_top(spread, old).item() == pytest.approx(-0.4 / 1.4)  # gathered into it
    assert drift_measures.extra_mass_outside_top(old, -hot((3, 3))).item() == 0.0  # no positive mass: nothing outside
    assert drift_measures.extra_mass_outside_top(old, 5 * old).item() == 0.0  # scale-free


def test_measures_of_a_moved_peak_and_of_no_change():
    old, new = hot((0, 0)), hot((3, 3))
    p_old, p_new = torch.tensor([0.25]), torch.tensor([0.75])
    out = drift_measures.measures(p_old, p_new, old, new, size=128, alpha=5.0)
    # bilinear (align_corners=False) upsampling makes each corner cell a 16 x 16 plateau: peaks at their centres
    assert out["old_peak"].tolist() == [[7.5, 7.5]] and out["new_peak"].tolist() == [[119.5, 119.5]]
    assert out["gained_peak"].tolist() == [[119.5, 119.5]]  # where the new version gained attention
    assert out["delta_p"].item() == pytest.approx(0.5)
    assert out["cam_correlation"].item() == pytest.approx(-1 / 15)
    # upsampled, the old map is the outer product of the 1-D profile f below; its top region holds the
    # cells where it reaches 0.5, far from the new map, whose mass is thus all outside: the measure is
    # 1 - (old's own share outside) = old's share inside its top region
    f = np.clip(1.5 - (np.arange(128) + 0.5) / 32, 0, 1)
    up = np.outer(f, f)
    assert out["extra_mass_outside_old_top"].item() == pytest.approx(up[up >= 0.5].sum() / up.sum(), rel=1e-5)
    torch.testing.assert_close(out["gained"], addk(new, old, 5.0))
    torch.testing.assert_close(out["lost"], 1 / out["gained"])
    # attention is a CAM's positive part: an old map with no positive cell adds no gain of its own
    # (on the raw maps its evidence against the class would decide where the new version "gained")
    against = -hot((3, 3), (1, 1), values=(2.0, 1.0)) - 0.1
    seen = drift_measures.measures(p_old, p_new, against, hot((0, 0)), size=128, alpha=5.0)
    torch.testing.assert_close(seen["gained"], addk(hot((0, 0)), torch.zeros(1, 4, 4), 5.0))
    assert seen["gained_peak"].tolist() == [[7.5, 7.5]]
    assert addk(hot((0, 0)), against, 5.0).flatten().argmax().item() == 15  # the raw kernel: old's trough
    nothing = drift_measures.measures(p_old, p_old, against, against - 1, size=128, alpha=5.0)
    assert nothing["gained"].unique().tolist() == [1.0]

    same = drift_measures.measures(p_old, p_old, old, old, size=128, alpha=5.0)
    assert same["cam_correlation"].item() == pytest.approx(1.0)
    assert (same["extra_mass_outside_old_top"].item(), same["delta_p"].item()) == (0.0, 0.0)
    assert same["old_peak"].tolist() == same["new_peak"].tolist()
    assert same["gained"].unique().tolist() == [1.0] and same["lost"].unique().tolist() == [1.0]


def test_summary_ranks_the_most_drifted_first():
    rows = {
        "uri": np.array(["c", "a", "b", "d"], dtype=object),
        "cam_correlation": np.array([0.9, 0.1, 0.1, -0.5], np.float32),
        "peak_shift_px": np.array([0.0, 10.0, 20.0, 30.0], np.float32),
        "extra_mass_outside_old_top": np.array([0.0, 0.2, 0.4, 0.6], np.float32),
        "delta_p": np.array([0.0, 0.1, 0.2, 0.3], np.float32),
        "p_new": np.array([0.5, 0.6, 0.7, 0.8], np.float32),
    }
    summary = drift_measures.summarize(rows, threshold=0.5, top_k=3)
    assert (summary["images"], summary["drifted"], summary["drifted_share"]) == (4, 3, 0.75)
    assert [r["uri"] for r in summary["top"]] == ["d", "a", "b"]  # lowest correlation first, ties by uri
    top = summary["top"][0]
    assert (top.pop("uri"), top.pop("drifted")) == ("d", True)
    assert top == pytest.approx({"cam_correlation": -0.5, "peak_shift_px": 30.0, "extra_mass_outside_old_top": 0.6,
                                 "delta_p": 0.3, "p_new": 0.8})
    assert summary["top"][2]["drifted"] and all(type(v) in (str, float, bool) for v in summary["top"][1].values())
    assert summary["measures"]["peak_shift_px"] == pytest.approx(
        {"mean": 15.0, "min": 0.0, "p05": 1.5, "p25": 7.5, "median": 15.0, "p75": 22.5, "p95": 28.5, "max": 30.0})
    assert not drift_measures.drifted(np.array([0.5]), 0.5)[0]  # at the threshold is not below it
    empty = drift_measures.summarize({k: v[:0] for k, v in rows.items()})
    assert (empty["images"], empty["drifted_share"], empty["top"]) == (0, 0.0, [])
    assert empty["measures"]["delta_p"]["median"] is None


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> dict[str, str]:
    """Checkpoints of one expert (two versions) and three that are not the same kind of expert."""
    root = tmp_path_factory.mktemp("versions")
    torch.manual_seed(0)
    kinds = {
        "v1": ("resnet18", "COVID-19", 64), "v2": ("resnet18", "COVID-19", 64),
        "other-arch": ("resnet34", "COVID-19", 64), "other-class": ("resnet18", "pneumonia", 64),
        "other-size": ("resnet18", "COVID-19", 96),
    }
    for name, (arch, class_name, size) in kinds.items():
        save_expert(build_expert(arch), str(root / name), {"arch": arch, "class_name": class_name, "input_size": size})
    return {name: str(root / name) for name in kinds}


@pytest.mark.parametrize("other, says", [("other-arch", "arch 'resnet18' vs 'resnet34'"),
                                         ("other-class", "class_name 'COVID-19' vs 'pneumonia'"),
                                         ("other-size", "input_size 64 vs 96")])
def test_different_kinds_of_expert_are_refused(versions, other, says):
    with pytest.raises(ValueError, match="are not two versions of the same expert: " + says):
        DriftScorer(versions["v1"], versions[other], device="cpu")


def test_the_drift_scorer_writes_the_drift_rows(versions, tmp_path):
    uris = [str(p) for p in write_synthetic_xrays(tmp_path, 3, size=80)] + [str(tmp_path / "missing.png")]
    same = score_images(DriftScorer(versions["v1"], versions["v1"], device="cpu"), uris, batch_size=2)
    assert same.column_names == list(DRIFT.columns)
    assert same.column("status").to_pylist() == ["ok", "ok", "ok", "error"]
    ok = same.slice(0, 3).to_pydict()
    assert ok["cam_correlation"] == pytest.approx([1.0] * 3)
    assert ok["peak_shift_px"] == ok["extra_mass_outside_old_top"] == ok["delta_p"] == [0.0] * 3
    assert ok["old_version"] == ok["new_version"] and ok["old_class"] == ["COVID-19"] * 3

    scorer = DriftScorer(versions["v1"], versions["v2"], device="cpu")
    other = score_images(scorer, uris[:1]).to_pylist()[0]
    direct = scorer.score(model_input(Path(uris[0]).read_bytes(), uris[0], scorer.meta)[0][None])
    assert other["cam_correlation"] == pytest.approx(float(direct["cam_correlation"][0]), abs=1e-5)
    assert other["cam_correlation"] < 0.99 and other["delta_p"] != 0.0  # two random networks do differ
    assert (other["old_version"], other["new_version"]) == (scorer.old.meta.version, scorer.new.meta.version)
