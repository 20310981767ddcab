"""The demo and the experiment end to end on a few images (one epoch), and the regimes' data."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pyarrow.csv as pacsv
import pytest

from dualcam.reports.evaluation import EVALUATION_FILE
from dualcam.synthetic.runs import DEMO_RECIPE, REGIMES, _starved, demo, experiment, regime
from dualcam.synthetic.scenarios import write_overlap_dataset


def test_demo_end_to_end(ray_cluster, tmp_path):
    lines = []
    evaluation = demo(str(tmp_path), n=10, recipe=replace(DEMO_RECIPE, epochs=1), log=lines.append)
    assert evaluation["images"] == 2 and evaluation["cam_grid"] == [6, 6]  # 96 px at output stride 16
    assert evaluation["stored_heatmap_max_rel_error"] < 1e-5  # ADDK recomputed from the stored CAMs
    assert {r["map"] for r in evaluation["localization"]} >= {"CAM1", "CAM2", "addk", "gated", "CAM1 sharpened"}
    assert (tmp_path / "paper" / "results" / EVALUATION_FILE).is_file()
    text = "\n".join(lines)
    assert "localization of C1 on 2 images" in text and f"report: {evaluation['report']}" in text
    report = Path(evaluation["report"])
    html = report.read_text()
    referenced = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert referenced and all((report.parent / ref).is_file() for ref in referenced)


def test_starved_manifest_keeps_only_the_first_c1_training_images(tmp_path):
    data = write_overlap_dataset(str(tmp_path), 10, 48)
    rows = pacsv.read_csv(_starved(data, 2)).to_pylist()
    c1_train = [r["uri"] for r in rows if r["label"] == "C1" and r["split"] == "train"]
    assert c1_train == [str(tmp_path / "images/C1/C1-00000.png"), str(tmp_path / "images/C1/C1-00001.png")]
    assert len(rows) == 30 - 4  # 6 C1 training images, 2 kept


def test_regimes_by_name():
    assert [r.name for r in REGIMES] == ["paper", "paper-starved", "normals-only", "one-vs-rest"]
    with pytest.raises(ValueError, match="unknown regime 'x'"):
        regime("x")


def test_experiment_refuses_unknown_names_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="seeds must be an integer >= 1, got 0"):
        experiment(str(tmp_path / "out"), seeds=0)
    with pytest.raises(ValueError, match="unknown scenario 'x'"):
        experiment(str(tmp_path / "out"), scenarios=["x"])
    with pytest.raises(ValueError, match="unknown regime 'y'"):
        experiment(str(tmp_path / "out"), regimes=["y"])
    assert not (tmp_path / "out").exists()


def test_experiment_over_two_seeds_keeps_per_seed_values_and_intervals(ray_cluster, tmp_path):
    lines = []
    text = experiment(str(tmp_path), n=10, recipe=replace(DEMO_RECIPE, epochs=1), regimes=["paper"],
                      scenarios=["overlap"], seeds=2, log=lines.append)
    assert text.startswith("Seeds 0, 1: each cell is the mean over seeds [its 95% t interval, 1 df]")
    assert re.search(r"\| CAM1 \|  \| -?\d\.\d\d( \[-?\d+\.\d\d, -?\d+\.\d\d\])? \|", text)
    assert (tmp_path / "experiment.md").read_text().startswith(text)
    assert [line for line in lines if line.startswith("seed ")][0].startswith("seed 0 done at")
    found = json.loads((tmp_path / "experiment.json").read_text())
    assert [(e["seed"], e["scenario"], e["regime"]["name"], e["recipe"]["seed"]) for e in found["evaluations"]] == [
        (0, "overlap", "paper", 0), (1, "overlap", "paper", 1)]
    for seed in (0, 1):  # each seed drew its own data
        assert (tmp_path / f"seed-{seed}" / "overlap" / "paper" / "results" / EVALUATION_FILE).is_file()
    summary = found["summary"]
    assert summary["seeds"] == [0, 1]
    cam1 = next(r for r in summary["scenarios"]["overlap"]["regimes"]["paper"]["localization"] if r["map"] == "CAM1")
    measured = [next(r for r in e["localization"] if r["map"] == "CAM1")["pointing_F1"] for e in found["evaluations"]]
    assert cam1["pointing_F1"]["values"] == measured and cam1["pointing_F1"]["n"] == 2
    assert cam1["pointing_F1"]["low"] <= cam1["pointing_F1"]["mean"] <= cam1["pointing_F1"]["high"]
    assert set(summary["overlap_auc"]) == {"values", "mean", "low", "high", "n"}
