"""``evaluate`` on a results folder made by hand, where every figure is known."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dualcam.cli import main
from dualcam.io.imaging import InputGeometry
from dualcam.io.results import RUN_FILE, ExpertId, RunSpec, read_results, read_run_spec, result_table
from dualcam.maps import localization
from dualcam.maps.kernel import addk, overlap
from dualcam.reports.evaluation import evaluate, format_table

SIZE, GRID = 60, (6, 6)  # 10-pixel cells
F1_BOX, S_BOX = (10, 20, 20, 10), (40, 40, 10, 10)


def _cells(box):
    return localization.pooled(localization.box_masks([[box]], (SIZE, SIZE)), GRID)[0].numpy()


def _write_results(folder, boxes_csv, alpha=5.0, cam1_on_s=(), schema=2):
    """Three C1 test images whose CAM1 is exactly the F1 box on the grid and CAM2 the S box; plus
    a C2 and a normal test image, a C1 training image and a C1 test image that failed. The rows
    (indices of the ok rows) in ``cam1_on_s`` have CAM1 on the S box instead. ``schema=1``
    writes what dualcam wrote before the overlap column."""
    rows = [("c1-a", "C1", "test", True), ("c1-b", "C1", "test", True), ("c1-c", "C1", "test", True),
            ("c2-a", "C2", "test", True), ("n-a", "normal", "test", True), ("c1-train", "C1", "train", True),
            ("c1-bad", "C1", "test", False)]
    uris = [f"{folder.parent}/images/{name}.png" for name, *_ in rows]
    ok = np.array([r[3] for r in rows])
    n = int(ok.sum())
    cam1 = np.repeat(_cells(F1_BOX)[None], n, 0).astype(np.float32)
    cam2 = np.repeat(_cells(S_BOX)[None], n, 0).astype(np.float32)
    cam1[list(cam1_on_s)] = _cells(S_BOX)
    heat = addk(cam1, cam2, alpha)
    p1 = np.array([0.9, 0.8, 0.3, 0.2, 0.1, 0.9], np.float32)
    p2 = np.array([0.7, 0.6, 0.6, 0.9, 0.2, 0.5], np.float32)
    zeros = np.zeros(n, np.int32)
    scores = {"p1": p1, "p2": p2, "cam1": cam1, "cam2": cam2, "heatmap": heat, "heatmap_max": heat.max((1, 2)),
              "overlap": overlap(cam1, cam2),
              **{k: zeros for k in ("peak_x", "peak_y", "box_x", "box_y", "box_w", "box_h")}}
    inputs = pa.table({"uri": uris, "width": [SIZE] * 7, "height": [SIZE] * 7,
                       "label": [r[1] for r in rows], "split": [r[2] for r in rows]})
    spec = RunSpec(ExpertId("C1", "v1", "a" * 64), ExpertId("C2", "v2", "b" * 64), alpha)
    table = result_table(inputs, ok, [None if r[3] else "bad.png: truncated" for r in rows], scores, spec,
                         np.datetime64("2026-01-01T00:00:00"), GRID)
    if schema == 1:
        table = table.drop_columns(["overlap"]).set_column(
            table.schema.get_field_index("schema_version") - 1, "schema_version", pa.array([1] * 7, pa.int16()))
        spec = RunSpec(spec.first, spec.second, alpha, schema_version=1)
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-0.parquet")
    (folder / RUN_FILE).write_text(spec.to_json())
    lines = ["uri,x,y,w,h,kind"] + [f"images/{name}.png,{','.join(map(str, F1_BOX))},F1" for name, *_ in rows] \
        + [f"images/{name}.png,{','.join(map(str, S_BOX))},S" for name, *_ in rows]
    boxes_csv.write_text("\n".join(lines) + "\n")


def _row(evaluation, name, alpha=None):
    return next(r for r in evaluation["localization"] if r["map"] == name and r["alpha"] == alpha)


def test_known_maps_give_known_figures(tmp_path):
    results, boxes = tmp_path / "results", tmp_path / "boxes.csv"
    _write_results(results, boxes)
    ev = evaluate(str(results), str(boxes), alphas=[5.0, 15.0], kernels=["addk", "gated"])
    assert ev["images"] == 3 and ev["cam_grid"] == [6, 6] and ev["split"] == "test"
    cam1, pooled, cam2 = _row(ev, "CAM1"), _row(ev, "F1 box pooled"), _row(ev, "CAM2")
    assert cam1 == {**pooled, "map": "CAM1", "origin": cam1["origin"]}  # CAM1 is the pooled box itself
    assert cam1["pointing_F1"] == 1 and cam1["pointing_S"] == 0
    assert cam2["pointing_S"] == 1 and cam2["pointing_F1"] == 0
    assert _row(ev, "addk", 5.0)["pointing_F1"] == 1  # high where CAM1 leads
    uniform = _row(ev, "uniform")
    assert uniform["energy_F1"] == pytest.approx(200 / 3600) and uniform["energy_S"] == pytest.approx(100 / 3600)
    a, b = _cells(F1_BOX).ravel(), _cells(S_BOX).ravel()
    assert ev["cam_correlation"]["mean"] == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert ev["stored_heatmap_max_rel_error"] < 1e-6
    one, two = ev["experts"]
    # test split, ok rows: C1 p1 .9 .8 .3, C2 .2, normal .1 -> 2 of 3 positives found, both negatives right
    assert (one["sensitivity"], one["specificity"], one["n"]) == (pytest.approx(2 / 3), 1.0, 5)
    assert one["positive_rate_C2"] == 0 and two["positive_rate_C1"] == 1.0
    assert "CAM1 sharpened" in format_table(ev)
    # CAM2 claims none of CAM1's evidence (F1 box): overlap 0, and CAM1 points at F1 in all three
    assert ev["overlap"] == {"mean": 0.0, "cam1_points_at_S": 0, "cam1_points_at_F1": 3, "auc_S_over_F1": None,
                             "scores_at_S": [], "scores_at_F1": [0.0, 0.0, 0.0]}


def test_overlap_ranks_images_where_cam1_rests_on_s_first(tmp_path):
    results, boxes = tmp_path / "results", tmp_path / "boxes.csv"
    _write_results(results, boxes, cam1_on_s=[1])  # c1-b: CAM1 on S, which CAM2 claims whole
    ev = evaluate(str(results), str(boxes), alphas=[5.0])
    assert _row(ev, "CAM1")["pointing_S"] == pytest.approx(1 / 3)
    assert ev["overlap"] == {"mean": pytest.approx(1 / 3), "cam1_points_at_S": 1, "cam1_points_at_F1": 2,
                             "auc_S_over_F1": 1.0, "scores_at_S": [1.0], "scores_at_F1": [0.0, 0.0]}
    assert "CAM1 points at S in 1 images, at F1 in 2; AUC of overlap ranking the S ones first 1.000" in format_table(ev)


def test_schema_1_outputs_evaluate_alike(tmp_path):
    """Outputs written before the overlap column: the same figures, the overlap recomputed from the CAMs."""
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    for version in (1, 2):
        _write_results(tmp_path / f"v{version}" / "results", tmp_path / f"v{version}" / "boxes.csv",
                       cam1_on_s=[1], schema=version)
    v1 = read_results(str(tmp_path / "v1" / "results"))
    assert "overlap" not in v1.column_names and set(v1.column("schema_version").to_pylist()) == {1}
    assert read_run_spec(str(tmp_path / "v1" / "results")).schema_version == 1
    old, new = (evaluate(str(tmp_path / f"v{v}" / "results"), str(tmp_path / f"v{v}" / "boxes.csv"), alphas=[5.0])
                for v in (1, 2))
    where = {"results": None, "boxes": None}
    assert {**old, **where} == {**new, **where}
    assert old["overlap"]["auc_S_over_F1"] == 1.0


def test_cli_writes_json_next_to_the_results(tmp_path, capsys):
    results, boxes = tmp_path / "results", tmp_path / "boxes.csv"
    _write_results(results, boxes)
    args = ["--results", str(results), "--boxes", str(boxes), "--alphas", "5", "--kernels", "gated"]
    assert main(["evaluate", *args]) == 0
    written = json.loads((results / "_evaluation.json").read_text())
    maps = ["CAM1", "CAM2", "gated", "CAM1 sharpened", "uniform", "F1 box pooled"]
    assert [r["map"] for r in written["localization"]] == maps
    assert "localization of C1 on 3 images" in capsys.readouterr().out


def test_clear_errors(tmp_path, capsys):
    results, boxes = tmp_path / "results", tmp_path / "boxes.csv"
    _write_results(results, boxes)
    assert main(["evaluate", "--results", str(results), "--boxes", str(boxes), "--kernels", "nope"]) == 2
    assert "unknown kernel 'nope'" in capsys.readouterr().err
    boxes.write_text("uri,x,y,w,h,kind\nimages/other.png,1,1,1,1,F1\n")
    assert main(["evaluate", "--results", str(results), "--boxes", str(boxes)]) == 2
    assert "no F1 box for 3 of the 3 images" in capsys.readouterr().err
    assert main(["evaluate", "--results", str(tmp_path / "nothing"), "--boxes", str(boxes)]) == 2
    assert "_run.json" in capsys.readouterr().err


def test_a_target_is_the_union_of_its_boxes(tmp_path):
    results, boxes = tmp_path / "results", tmp_path / "boxes.csv"
    _write_results(results, boxes)
    decoy = "0,0,10,10"
    lines = boxes.read_text().splitlines()
    only_decoy = [lines[0]] + [f"{line.split(',')[0]},{decoy},F1" for line in lines[1:] if line.endswith(",F1")]
    boxes.write_text("\n".join(only_decoy) + "\n")
    assert _row(evaluate(str(results), str(boxes), alphas=[5.0]), "CAM1")["pointing_F1"] == 0
    boxes.write_text("\n".join(lines + only_decoy[1:]) + "\n")  # each image: the decoy and the real F1 box
    assert _row(evaluate(str(results), str(boxes), alphas=[5.0]), "CAM1")["pointing_F1"] == 1


def test_drift_outputs_are_refused_by_evaluate_and_render(tmp_path):
    from dualcam.reports.score_page import render_results

    results, boxes = tmp_path / "results", tmp_path / "boxes.csv"
    _write_results(results, boxes)
    spec = json.loads((results / RUN_FILE).read_text())
    (results / RUN_FILE).write_text(json.dumps({**spec, "kind": "drift", "old": spec["c1"], "new": spec["c2"]}))
    with pytest.raises(ValueError, match="a dualcam drift output; evaluate needs the output of dualcam score"):
        evaluate(str(results), str(boxes))
    with pytest.raises(ValueError, match="a dualcam drift output; render draws dualcam score outputs"):
        render_results(str(results), tmp_path / "report")


def test_a_centre_crop_run_measures_its_maps_against_the_boxes_within_the_square_the_experts_saw(tmp_path):
    results, boxes = tmp_path / "results", tmp_path / "boxes.csv"
    _write_results(results, boxes)
    spec = read_run_spec(str(results))
    # a 30 px input cut from the 60 px image resized to 60: the maps cover image pixels 15 to 45 each way
    cropped = RunSpec(spec.first, spec.second, spec.alpha, geometry=InputGeometry(30, "center-crop", 60))
    (results / RUN_FILE).write_text(cropped.to_json())
    uniform = _row(evaluate(str(results), str(boxes), alphas=[5.0], kernels=["addk"]), "uniform")
    # F1 (10, 20, 20, 10) keeps x 15-30, y 20-30 of the 30 x 30 window; S (40, 40, 10, 10) x and y 40-45
    assert uniform["energy_F1"] == pytest.approx(150 / 900) and uniform["energy_S"] == pytest.approx(25 / 900)
