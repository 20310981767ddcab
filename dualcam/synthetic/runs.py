"""The class-overlap scenario end to end: synthetic data with known boxes, both experts trained
under a chosen regime on Ray Train, the test split scored on Ray Data, then localization measured.

``make demo`` runs one regime (the paper's) on the ``overlap`` data; ``make experiment`` compares
all of them on each data scenario (``dualcam.synthetic.scenarios.SCENARIOS``). Everything
here calls the same library functions as the CLI commands ``synth``, ``train``, ``score`` and
``evaluate``, so each step can be rerun by hand.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from dualcam.distributed.pipeline import score_archive
from dualcam.distributed.training import Recipe, train_experts
from dualcam.io import storage
from dualcam.io.inputs import read_manifest
from dualcam.maps.kernel import ALPHAS, PAPER_ALPHAS
from dualcam.reports.evaluation import (
    DEFAULT_KERNELS,
    EVALUATION_FILE,
    evaluate,
    format_number,
    format_table,
    overlap_auc,
)
from dualcam.reports.score_page import render_results
from dualcam.synthetic.scenarios import DEFAULT_SCENARIO, SCENARIOS, OverlapDataset, get_scenario, write_overlap_dataset

DEMO_RECIPE = Recipe(arch="resnet18", weights="none", epochs=8, lr=0.01, momentum=0.9, batch_size=16,
                     image_size=96, output_stride=16, seed=0)
"""Small and fast on CPU: resnet18 from scratch at 96 px, last stage at stride 16 so the CAM grid
is 6x6 (at stride 32 it would be 3x3, too coarse to localize anything). lr 0.01 instead of the
paper's 0.001, which suits fine-tuning pretrained weights, not training from scratch."""


@dataclass(frozen=True)
class Regime:
    """Which negatives each expert learns against, and whether expert 1 is data-starved."""

    name: str
    description: str
    negatives: tuple[tuple[str, ...], tuple[str, ...]]
    c1_train_positives: int | None = None


REGIMES = (
    Regime("paper", "expert 1: C1 vs C2 + normal; expert 2: C2 vs normal (the paper's)",
           (("C2", "normal"), ("normal",))),
    Regime("paper-starved", "the paper's, with expert 1 trained on 30 C1 images", (("C2", "normal"), ("normal",)), 30),
    Regime("normals-only", "both experts against normal images only", (("normal",), ("normal",))),
    Regime("one-vs-rest", "each expert against everything else", (("C2", "normal"), ("C1", "normal"))),
)
_REGIME_NAMES = tuple(r.name for r in REGIMES)  # here, not in experiment's defaults: mypy misreads a generator there


def regime(name: str) -> Regime:
    """The regime called ``name``; ValueError naming the known ones otherwise."""
    for r in REGIMES:
        if r.name == name:
            return r
    raise ValueError(f"unknown regime {name!r}; known: {', '.join(r.name for r in REGIMES)}")


def run_regime(data: OverlapDataset, chosen: Regime, out: str, recipe: Recipe = DEMO_RECIPE, *,
               alphas: Sequence[float] = ALPHAS, kernels: Sequence[str] = DEFAULT_KERNELS,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train both experts under ``chosen`` into ``out/experts``, score the test split into
    ``out/<regime>/results`` and evaluate it; returns the evaluation (also written as JSON there).

    Experts are versioned by data and recipe, so a regime that shares an expert with an earlier
    one (the paper's expert 1 in one-vs-rest, say) reuses it instead of training it again.
    """
    c1_data = _starved(data, chosen.c1_train_positives) if chosen.c1_train_positives else None
    started = time.perf_counter()
    log(f"[{chosen.name}] training both experts ({chosen.description}; {recipe.arch}, {recipe.epochs} epochs)")
    experts = train_experts(storage.join(out, "experts"), ["C1", "C2"], data=data.manifest,
                            negatives=[list(n) for n in chosen.negatives], per_expert_data=[c1_data, None],
                            recipe=recipe, log=lambda line: None)
    for e in experts:
        val = e.meta.metrics.get("val", {})
        log(f"[{chosen.name}]   expert {e.label}: best epoch {e.best_epoch}, val accuracy "
            f"{val.get('accuracy', float('nan')):.3f}, {e.uri}")
    log(f"[{chosen.name}] trained in {time.perf_counter() - started:.0f} s; scoring the test split")
    results = storage.join(out, chosen.name, "results")
    summary = score_archive(experts[0].uri, experts[1].uri, _test_manifest(data), results, progress=False)
    failure = summary.failure()
    if failure:
        raise RuntimeError(f"scoring the test split failed: {failure}")
    log(f"[{chosen.name}] {summary.line()}")
    evaluation = evaluate(results, data.boxes, alphas=alphas, kernels=kernels)
    evaluation["scenario"] = data.scenario
    evaluation["regime"] = asdict(chosen)
    evaluation["recipe"] = asdict(recipe)
    storage.write_json(storage.join(results, EVALUATION_FILE), evaluation)
    return evaluation


def _test_manifest(data: OverlapDataset) -> str:
    """The test rows of the manifest, next to it: only they are scored and measured."""
    return _write_subset(data, "manifest-test.csv", lambda t: pc.equal(t.column("split"), "test"))


def _starved(data: OverlapDataset, positives: int) -> str:
    """The manifest with all but the first ``positives`` C1 training images left out."""
    def keep(table: pa.Table) -> pa.Array:
        c1_train = pc.and_(pc.equal(table.column("label"), "C1"), pc.equal(table.column("split"), "train"))
        rank = pc.cumulative_sum(pc.cast(c1_train, pa.int64()))
        return pc.or_(pc.invert(c1_train), pc.less_equal(rank, positives))
    return _write_subset(data, f"manifest-c1-{positives}.csv", keep)


def _write_subset(data: OverlapDataset, name: str, keep: Callable[[pa.Table], pa.Array]) -> str:
    table = read_manifest(data.manifest)
    uri = storage.join(data.manifest.rsplit("/", 1)[0], name)
    buf = io.BytesIO()
    pacsv.write_csv(table.filter(keep(table)), buf)
    storage.write_bytes(uri, buf.getvalue())
    return uri


# --- Comparing regimes ------------------------------------------------------------------------

_COMPARED = [("CAM1", None), ("CAM2", None),
             *((k, a) for k in (*DEFAULT_KERNELS, "CAM1 sharpened") for a in PAPER_ALPHAS),
             ("uniform", None), ("F1 box pooled", None)]


def comparison_tables(evaluations: Sequence[dict[str, Any]]) -> str:
    """Markdown: F1 and S localization per map and regime, then what explains it (correlation,
    each expert's positive rate on the other class, AUC). The evaluations are of one scenario."""
    names = [e["regime"]["name"] for e in evaluations]
    scenario = evaluations[0].get("scenario", DEFAULT_SCENARIO)
    lines = [f"Scenario {scenario}: pointing game / energy in box on the C1 test images "
             "(F1: C1's own feature; S: the shared one)", "",
             "| map | alpha | " + " | ".join(f"{n}: F1" for n in names) + " | "
             + " | ".join(f"{n}: S" for n in names) + " |",
             "|---|---|" + "---|" * (2 * len(names))]
    for name, alpha in _COMPARED:
        rows = [next(r for r in e["localization"] if r["map"] == name and r["alpha"] == alpha) for e in evaluations]
        cells = [f"{format_number(r['pointing_F1'])} / {format_number(r['energy_F1'])}" for r in rows] + \
                [f"{format_number(r['pointing_S'])} / {format_number(r['energy_S'])}" for r in rows]
        lines.append(f"| {name} | {'' if alpha is None else f'{alpha:g}'} | " + " | ".join(cells) + " |")
    lines += ["", "| regime | C1 test images | CAM1-CAM2 correlation | expert 1 positive on C2 "
              "| expert 2 positive on C1 | expert 1 AUC | expert 2 AUC | mean overlap | CAM1 points at S / F1 "
              "| overlap AUC, S over F1 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in evaluations:
        (one, two), o = e["experts"], e["overlap"]
        lines.append(f"| {e['regime']['name']} | {e['images']} | {format_number(e['cam_correlation']['mean'])} | "
                     f"{format_number(one.get('positive_rate_C2'))} | {format_number(two.get('positive_rate_C1'))} | "
                     f"{format_number(one['auc'])} | {format_number(two['auc'])} | {format_number(o['mean'])} | "
                     f"{o['cam1_points_at_S']} / {o['cam1_points_at_F1']} | {format_number(o['auc_S_over_F1'])} |")
    rankings = [e["overlap"] for e in evaluations]
    lines += ["", f"Overlap score over all {len(evaluations)} regimes of {scenario}: CAM1 points at S in "
              f"{sum(r['cam1_points_at_S'] for r in rankings)} and at F1 in "
              f"{sum(r['cam1_points_at_F1'] for r in rankings)} of the C1 test images; AUC of the overlap score "
              f"ranking the S ones first: {format_number(overlap_auc(rankings))}"]
    return "\n".join(lines)


def experiment(out: str, n: int = 200, size: int = 96, seed: int = 0, recipe: Recipe = DEMO_RECIPE,
               regimes: Sequence[str] = _REGIME_NAMES, scenarios: Sequence[str] = tuple(SCENARIOS),
               log: Callable[[str], None] = print) -> str:
    """Run every regime on each scenario's data set, under ``out/<scenario>/``; returns the
    comparison tables, one set per scenario, also written to ``out/experiment.md`` with every
    evaluation in ``out/experiment.json``."""
    chosen = [regime(name) for name in regimes]
    drawn = [get_scenario(name) for name in scenarios]  # unknown names fail before any work
    started = time.perf_counter()
    evaluations: list[dict[str, Any]] = []
    tables: list[str] = []
    for scenario in drawn:
        root = storage.join(out, scenario.name)
        data = write_overlap_dataset(storage.join(root, "data"), n, size, seed, scenario.name)
        log(f"[{scenario.name}] wrote {data.images} images ({n} per class, {size} px, seed {seed}; "
            f"{scenario.description}) to {storage.join(root, 'data')}")
        found = [run_regime(data, r, root, replace(recipe, seed=seed), log=log) for r in chosen]
        evaluations += found
        tables.append(comparison_tables(found))
    text = "\n\n".join(tables)
    minutes = (time.perf_counter() - started) / 60
    storage.write_bytes(storage.join(out, "experiment.md"), f"{text}\n\n(run time {minutes:.1f} min)\n".encode())
    storage.write_json(storage.join(out, "experiment.json"), evaluations)
    log(f"experiment done in {minutes:.1f} min; tables in {storage.join(out, 'experiment.md')}")
    return text


def demo(out: str, n: int = 100, size: int = 96, seed: int = 0, recipe: Recipe = DEMO_RECIPE,
         log: Callable[[str], None] = print) -> dict[str, Any]:
    """``make demo``: the paper's regime on fresh synthetic data, then the localization table and
    an HTML report with the paper's figures. Returns the evaluation (with ``report``: its path)."""
    started = time.perf_counter()
    data = write_overlap_dataset(storage.join(out, "data"), n, size, seed)
    log(f"wrote {data.images} images ({n} per class, {size} px, seed {seed}): {data.manifest}, {data.boxes}")
    evaluation = run_regime(data, regime("paper"), out, replace(recipe, seed=seed), log=log)
    results = storage.join(out, "paper", "results")
    report = render_results(results, storage.join(out, "report"), boxes=data.boxes,
                            evaluation=storage.join(results, EVALUATION_FILE)).report
    log("")
    log(format_table(evaluation))
    log(f"\nreport: {report}\ndemo done in {time.perf_counter() - started:.0f} s")
    return evaluation | {"report": str(report)}
