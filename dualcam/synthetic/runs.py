"""The class-overlap scenario end to end: synthetic data with known boxes, both experts trained
under a chosen regime on Ray Train, the test split scored on Ray Data, then localization measured.

``make demo`` runs one regime (the paper's) on the ``overlap`` data; ``make experiment`` compares
all of them on each data scenario (``dualcam.synthetic.scenarios.SCENARIOS``), once per seed. Everything
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
from dualcam.maps.kernel import ALPHAS
from dualcam.reports.comparison import comparison_tables, summarize
from dualcam.reports.evaluation import DEFAULT_KERNELS, EVALUATION_FILE, evaluate, format_table
from dualcam.reports.score_page import render_results
from dualcam.synthetic.scenarios import SCENARIOS, OverlapDataset, get_scenario, write_overlap_dataset

DEMO_RECIPE = Recipe(arch="resnet18", weights="none", epochs=8, lr=0.01, momentum=0.9, batch_size=16,
                     image_size=96, output_stride=16, seed=0)
"""Small and fast on CPU: resnet18 from scratch at 96 px, last stage at stride 16 so the CAM grid
is 6x6 (at stride 32 it would be 3x3, too coarse to localize anything). lr 0.01 instead of the
paper's 0.001, which suits fine-tuning pretrained weights, not training from scratch."""


SEEDS = 3
"""``make experiment``'s runs per regime: the fewest that give an interval with some width to it."""

EXPERIMENT_N = 100
EXPERIMENT_RECIPE = replace(DEMO_RECIPE, epochs=6)
"""``make experiment``'s size per seed: 100 images per class (20 C1 test images) and 6 epochs, half
the images and three quarters of the epochs of its one-seed version, so that three seeds take not
much longer than that one did (50.9 min against 39.7, both on a shared 2-core machine). It costs
the experts: in the three-seed run half of them ended below 0.9 validation accuracy
(docs/science/does-addk-help.md); ``--epochs 8`` trains them further, for longer."""


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


def check_seeds(seeds: int) -> None:
    """ValueError unless ``seeds`` is a count of runs, checked before Ray starts."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")


def experiment(out: str, n: int = EXPERIMENT_N, size: int = 96, seed: int = 0, recipe: Recipe = EXPERIMENT_RECIPE,
               regimes: Sequence[str] = _REGIME_NAMES, scenarios: Sequence[str] = tuple(SCENARIOS),
               seeds: int = SEEDS, log: Callable[[str], None] = print) -> str:
    """Run every regime on each scenario once per seed (``seed`` to ``seed + seeds - 1``), under
    ``out/seed-<seed>/<scenario>/``; returns the comparison tables (means with t intervals over
    the seeds), also written to ``out/experiment.md``, with every evaluation and every cell's
    per-seed values in ``out/experiment.json``.

    Each seed draws its own data as well as its own initial weights and batch order: the claims
    are about a scenario, not about one draw of its test images, so the intervals take in
    both sources of variation."""
    chosen = [regime(name) for name in regimes]
    drawn = [get_scenario(name) for name in scenarios]  # unknown names fail before any work
    check_seeds(seeds)
    started = time.perf_counter()
    evaluations: list[dict[str, Any]] = []
    for s in range(seed, seed + seeds):
        for scenario in drawn:
            root = storage.join(out, f"seed-{s}", scenario.name)
            data = write_overlap_dataset(storage.join(root, "data"), n, size, s, scenario.name)
            log(f"[seed {s}, {scenario.name}] wrote {data.images} images ({n} per class, {size} px; "
                f"{scenario.description}) to {storage.join(root, 'data')}")
            evaluations += [run_regime(data, r, root, replace(recipe, seed=s), log=log) | {"seed": s} for r in chosen]
        log(f"seed {s} done at {(time.perf_counter() - started) / 60:.1f} min")
    text = comparison_tables(evaluations)
    minutes = (time.perf_counter() - started) / 60
    storage.write_bytes(storage.join(out, "experiment.md"), f"{text}\n\n(run time {minutes:.1f} min)\n".encode())
    storage.write_json(storage.join(out, "experiment.json"), {"summary": summarize(evaluations),
                                                            "evaluations": evaluations})
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
