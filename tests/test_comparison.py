"""The experiment's tables from hand-made evaluations of two seeds: means, intervals, differences."""

import pytest

from dualcam.reports.comparison import COMPARED, comparison_tables, summarize

ROW = {"energy_F1": 0.1, "pointing_S": 0.0, "energy_S": 0.2}


def evaluation(seed, name, cam1_f1, at_s, at_f1):
    """CAM1 points at F1 in ``cam1_f1`` of the images, every other map in half of them."""
    overlap = {"mean": 0.4, "cam1_points_at_S": len(at_s), "cam1_points_at_F1": len(at_f1),
               "auc_S_over_F1": None, "scores_at_S": at_s, "scores_at_F1": at_f1}
    rows = [{"map": m, "alpha": a, "pointing_F1": cam1_f1 if m == "CAM1" else 0.5, **ROW} for m, a in COMPARED]
    return {"seed": seed, "scenario": "salient-shared", "regime": {"name": name}, "images": 3,
            "cam_correlation": {"mean": 0.9 + seed / 50}, "localization": rows, "overlap": overlap,
            "experts": [{"auc": 1.0, "positive_rate_C2": 0.0}, {"auc": 0.7, "positive_rate_C1": 1.0}]}


# CAM1 on S only in normals-only, on F1 only in paper: the pooled ranking puts 1 of 2 pairs right in seed 0,
# both in seed 1
EVALUATIONS = [evaluation(0, "paper", 0.9, [], [0.2, 0.5]), evaluation(0, "normals-only", 0.4, [0.3], []),
               evaluation(1, "paper", 0.9, [], [0.1, 0.5]), evaluation(1, "normals-only", 0.5, [0.6], [])]


def test_tables_give_means_with_intervals_over_seeds():
    table = comparison_tables(EVALUATIONS)
    assert table.startswith("Seeds 0, 1: each cell is the mean over seeds [its 95% t interval, 1 df]")
    # normals-only's CAM1: 0.4 and 0.5, mean 0.45, half-width 12.706 * 0.0707 / sqrt(2) = 0.635
    assert "| CAM1 |  | 0.90 [0.90, 0.90] | 0.45 [-0.19, 1.09] | 0.00 [0.00, 0.00] | 0.00 [0.00, 0.00] |" in table
    assert "| unshared | 15 | 0.50 [0.50, 0.50] | 0.50 [0.50, 0.50] |" in table
    # against CAM1: in paper, 0.5 is below CAM1's interval in both seeds; in normals-only the intervals overlap
    assert "| addk | 5 | lower by 0.40 (2/2 seeds) | none stated (1/2 seeds higher) |" in table
    assert "| gated | 50 | none stated (mean difference 0) | none stated (mean difference 0) |" in table  # PG S
    assert "| paper | 0.91 [0.78, 1.04] | 0.00 [0.00, 0.00] | 1.00 [1.00, 1.00] |" in table
    assert "| 0.00 [0.00, 0.00] | 2.00 [2.00, 2.00] | – |" in table  # a regime's own AUC: never both kinds of image
    assert "over all 2 regimes of salient-shared, AUC ranking the S images first: 0.75 [-2.43, 3.93]" in table
    assert table.endswith("pooled over every regime of both scenarios: 0.75 [-2.43, 3.93]")


def test_one_seed_gives_values_without_intervals():
    table = comparison_tables(EVALUATIONS[:2])
    assert table.startswith("Seed 0 alone: each cell is its value (no interval); on the C1 test images")
    assert "| CAM1 |  | 0.90 | 0.40 | 0.00 | 0.00 |" in table
    assert "| addk | 5 | none stated (1/1 seeds lower) |" in table


def test_summary_keeps_the_per_seed_values():
    summary = summarize(EVALUATIONS)
    assert summary["seeds"] == [0, 1] and summary["interval"] == "95% t interval over seeds (N - 1 df)"
    paper = summary["scenarios"]["salient-shared"]["regimes"]["paper"]
    cam1 = next(r for r in paper["localization"] if r["map"] == "CAM1")
    assert cam1["pointing_F1"] == {"values": [0.9, 0.9], "mean": pytest.approx(0.9), "low": pytest.approx(0.9),
                                   "high": pytest.approx(0.9), "n": 2}
    correlation = paper["CAM1-CAM2 correlation"]
    assert correlation["values"] == [0.9, 0.92] and correlation["low"] == pytest.approx(0.91 - 12.7062 * 0.01, abs=1e-4)
    assert paper["CAM1 points at F1"]["values"] == [2, 2]
    assert paper["overlap AUC, S over F1"] == {"values": [None, None], "mean": None, "low": None, "high": None, "n": 0}
    assert summary["scenarios"]["salient-shared"]["overlap_auc"]["values"] == [0.5, 1.0]
    assert summary["overlap_auc"]["values"] == [0.5, 1.0]
