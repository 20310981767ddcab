"""The tables of ``make experiment``: every regime of a scenario side by side, each cell the mean
over seeds with its 95% t interval (``reports.intervals``), and each map set against CAM1 seed by
seed, a difference stated only where the intervals do not overlap.

The input is the list of evaluations ``synthetic.runs.experiment`` collects, each carrying its
``scenario``, ``regime`` and ``seed``; ``summarize`` gives the same cells as JSON, per-seed values
included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dualcam.maps.kernel import PAPER_ALPHAS
from dualcam.reports.evaluation import DEFAULT_KERNELS, overlap_auc
from dualcam.reports.intervals import LEVEL, difference, format_interval, t_interval

Evaluation = dict[str, Any]
Measure = Callable[[Evaluation], float | None]

COMPARED = [("CAM1", None), ("CAM2", None),
            *((k, a) for k in (*DEFAULT_KERNELS, "CAM1 sharpened") for a in PAPER_ALPHAS),
            ("uniform", None), ("F1 box pooled", None)]
"""The localization rows the tables show, as (map, alpha)."""

_MEASURES = {"pointing game": "pointing", "energy in box": "energy"}
_AGAINST_CAM1 = ("pointing_F1", "pointing_S", "energy_F1")

_REGIME_COLUMNS: dict[str, Measure] = {
    "CAM1-CAM2 correlation": lambda e: e["cam_correlation"]["mean"],
    "expert 1 positive on C2": lambda e: e["experts"][0].get("positive_rate_C2"),
    "expert 2 positive on C1": lambda e: e["experts"][1].get("positive_rate_C1"),
    "expert 1 AUC": lambda e: e["experts"][0]["auc"],
    "expert 2 AUC": lambda e: e["experts"][1]["auc"],
    "mean overlap": lambda e: e["overlap"]["mean"],
    "CAM1 points at S": lambda e: e["overlap"]["cam1_points_at_S"],
    "CAM1 points at F1": lambda e: e["overlap"]["cam1_points_at_F1"],
    "overlap AUC, S over F1": lambda e: e["overlap"]["auc_S_over_F1"],
}


def localization(name: str, alpha: float | None, measure: str) -> Measure:
    """The measure (``pointing_F1``, ...) of the localization row of map ``name`` at ``alpha``."""
    return lambda e: next(r for r in e["localization"] if r["map"] == name and r["alpha"] == alpha)[measure]


def seeds_of(evaluations: Sequence[Evaluation]) -> list[int]:
    """The seeds run, in order."""
    return sorted({e["seed"] for e in evaluations})


def per_seed(evaluations: Sequence[Evaluation], scenario: str, regime: str, measure: Measure) -> list[float | None]:
    """The measure of one regime on one scenario, one value per seed in seed order (None where missing)."""
    by_seed = {e["seed"]: e for e in evaluations if e["scenario"] == scenario and e["regime"]["name"] == regime}
    return [measure(by_seed[s]) if s in by_seed else None for s in seeds_of(evaluations)]


def overlap_aucs(evaluations: Sequence[Evaluation], scenario: str | None = None) -> list[float | None]:
    """Per seed, the overlap score's AUC pooled over the regimes of ``scenario`` (all scenarios: None)."""
    return [overlap_auc([e["overlap"] for e in evaluations
                         if e["seed"] == s and scenario in (None, e["scenario"])]) for s in seeds_of(evaluations)]


def cell(values: Sequence[float | None]) -> dict[str, Any]:
    """A table cell as JSON: the per-seed values, their mean and t interval over the seeds that have one."""
    interval = t_interval(values)
    return {"values": list(values), "mean": interval.mean if interval else None,
            "low": interval.low if interval else None, "high": interval.high if interval else None,
            "n": interval.n if interval else 0}


def summarize(evaluations: Sequence[Evaluation]) -> dict[str, Any]:
    """Every cell of the tables as JSON (``cell``), per scenario and regime, plus the overlap AUCs."""
    scenarios: dict[str, Any] = {}
    for scenario in _ordered(e["scenario"] for e in evaluations):
        regimes = {}
        for name in _regimes(evaluations, scenario):
            rows = [{"map": m, "alpha": a} | {k: cell(per_seed(evaluations, scenario, name, localization(m, a, k)))
                                              for k in ("pointing_F1", "energy_F1", "pointing_S", "energy_S")}
                    for m, a in COMPARED]
            regimes[name] = {"localization": rows} | {
                column: cell(per_seed(evaluations, scenario, name, get)) for column, get in _REGIME_COLUMNS.items()}
        scenarios[scenario] = {"regimes": regimes, "overlap_auc": cell(overlap_aucs(evaluations, scenario))}
    return {"seeds": seeds_of(evaluations), "interval": f"{LEVEL:.0%} t interval over seeds (N - 1 df)",
            "scenarios": scenarios, "overlap_auc": cell(overlap_aucs(evaluations))}


def comparison_tables(evaluations: Sequence[Evaluation]) -> str:
    """Markdown, per scenario: pointing game and energy in box per map and regime; the maps against
    CAM1; what explains them (correlation, positive rates, AUCs, overlap); then the overlap AUCs."""
    seeds = seeds_of(evaluations)
    cells = (f"Seeds {', '.join(map(str, seeds))}: each cell is the mean over seeds [its {LEVEL:.0%} t interval, "
             f"{len(seeds) - 1} df]" if len(seeds) > 1
             else f"Seed {seeds[0]} alone: each cell is its value (no interval)")
    lines = [f"{cells}; on the C1 test images, F1 is C1's own feature, S the shared one."]
    for scenario in _ordered(e["scenario"] for e in evaluations):
        lines += _scenario_tables(evaluations, scenario, _regimes(evaluations, scenario), len(seeds))
    lines += ["", "Overlap score, AUC ranking the images where CAM1 points at S above those where it points at F1, "
              f"pooled over every regime of both scenarios: {_text(overlap_aucs(evaluations), len(seeds))}"]
    return "\n".join(lines)


def _scenario_tables(evaluations: Sequence[Evaluation], scenario: str, regimes: list[str], seeds: int) -> list[str]:
    def cells(get: Measure) -> list[str]:
        return [_text(per_seed(evaluations, scenario, r, get), seeds) for r in regimes]

    lines: list[str] = []
    for title, measure in _MEASURES.items():
        lines += ["", f"Scenario {scenario}: {title}", "",
                  "| map | alpha | " + " | ".join(f"{r}: {t}" for t in ("F1", "S") for r in regimes) + " |",
                  "|---|---|" + "---|" * (2 * len(regimes))]
        lines += [f"| {m} | {_alpha(a)} | " + " | ".join(
            cells(localization(m, a, f"{measure}_F1")) + cells(localization(m, a, f"{measure}_S"))) + " |"
            for m, a in COMPARED]
    for measure in _AGAINST_CAM1:
        lines += ["", f"Scenario {scenario}: {_short(measure)} of each map against CAM1's, paired by seed (a "
                  "difference is stated only where the intervals do not overlap; then how many seeds agree on its "
                  "sign)",
                  "", "| map | alpha | " + " | ".join(regimes) + " |", "|---|---|" + "---|" * len(regimes)]
        for m, a in COMPARED[1:]:  # every row but CAM1's own
            found = [difference(per_seed(evaluations, scenario, r, localization(m, a, measure)),
                                per_seed(evaluations, scenario, r, localization("CAM1", None, measure)))
                     for r in regimes]
            lines.append(f"| {m} | {_alpha(a)} | " + " | ".join(d.describe() if d else "–" for d in found) + " |")
    lines += ["", "| regime | " + " | ".join(_REGIME_COLUMNS) + " |", "|---|" + "---|" * len(_REGIME_COLUMNS)]
    lines += [f"| {r} | " + " | ".join(_text(per_seed(evaluations, scenario, r, get), seeds)
                                      for get in _REGIME_COLUMNS.values()) + " |" for r in regimes]
    lines += ["", f"Overlap score over all {len(regimes)} regimes of {scenario}, AUC ranking the S images first: "
              f"{_text(overlap_aucs(evaluations, scenario), seeds)}"]
    return lines


def _text(values: Sequence[float | None], seeds: int) -> str:
    return format_interval(t_interval(values), seeds)


def _regimes(evaluations: Sequence[Evaluation], scenario: str) -> list[str]:
    return _ordered(e["regime"]["name"] for e in evaluations if e["scenario"] == scenario)


def _ordered(names: Any) -> list[str]:
    """Distinct, in first-seen order."""
    return list(dict.fromkeys(names))


def _alpha(alpha: float | None) -> str:
    return "" if alpha is None else f"{alpha:g}"


def _short(measure: str) -> str:
    kind, target = measure.split("_")
    return f"{'PG' if kind == 'pointing' else 'E'} {target}"
