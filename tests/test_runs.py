"""The demo end to end on a few images (one epoch), and the regimes' data."""

import re
from pathlib import Path

import pyarrow.csv as pacsv
import pytest

from dualcam.reports.evaluation import EVALUATION_FILE
from dualcam.synthetic.runs import DEMO_RECIPE, REGIMES, _starved, comparison_tables, demo, experiment, regime
from dualcam.synthetic.scenarios import write_overlap_dataset


def test_demo_end_to_end(ray_cluster, tmp_path):
    lines = []
    from dataclasses import replace

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


def test_regimes_by_name_and_comparison_table_shape():
    assert [r.name for r in REGIMES] == ["paper", "paper-starved", "normals-only", "one-vs-rest"]
    with pytest.raises(ValueError, match="unknown regime 'x'"):
        regime("x")
    row = {"pointing_F1": 0.5, "energy_F1": 0.1, "pointing_S": 0.0, "energy_S": 0.2}
    maps = [("CAM1", None), ("CAM2", None), ("uniform", None), ("F1 box pooled", None)]
    maps += [(k, a) for k in ("addk", "gated", "unshared", "CAM1 sharpened") for a in (5.0, 15.0, 50.0)]

    def evaluation(name, at_s, at_f1):
        overlap = {"mean": 0.4, "cam1_points_at_S": len(at_s), "cam1_points_at_F1": len(at_f1),
                   "auc_S_over_F1": None, "scores_at_S": at_s, "scores_at_F1": at_f1}
        return {"scenario": "salient-shared", "regime": {"name": name}, "images": 3, "cam_correlation": {"mean": 0.9},
                "localization": [{"map": m, "alpha": a, **row} for m, a in maps], "overlap": overlap,
                "experts": [{"auc": 1.0, "positive_rate_C2": 0.0}, {"auc": 0.7, "positive_rate_C1": 1.0}]}

    # CAM1 on S only in one regime, on F1 only in the other: the pooled ranking puts 2 of the 3 pairs right
    table = comparison_tables([evaluation("paper", [], [0.2, 0.5]), evaluation("normals-only", [0.3], [])])
    assert table.startswith("Scenario salient-shared: pointing game")
    assert "| unshared | 15 | 0.500 / 0.100 | 0.500 / 0.100 | 0.000 / 0.200 | 0.000 / 0.200 |" in table
    assert "| paper | 3 | 0.900 | 0.000 | 1.000 | 1.000 | 0.700 | 0.400 | 0 / 2 | – |" in table
    assert ("over all 2 regimes of salient-shared: CAM1 points at S in 1 and at F1 in 2 of the C1 test images; "
            "AUC of the overlap score ranking the S ones first: 0.500") in table


def test_experiment_refuses_unknown_names_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown scenario 'x'"):
        experiment(str(tmp_path / "out"), scenarios=["x"])
    with pytest.raises(ValueError, match="unknown regime 'y'"):
        experiment(str(tmp_path / "out"), regimes=["y"])
    assert not (tmp_path / "out").exists()
