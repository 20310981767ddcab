"""``dualcam experiment`` (``make experiment``): the training regimes compared on each data scenario
of the class-overlap setting (``synthetic.runs.experiment``)."""

from __future__ import annotations

import argparse
from dataclasses import replace

from dualcam.commands import renamed
from dualcam.commands.common import RAY_FAILED, SCENARIO_RENAMED, add_scenario_run, check_output_folder, labels
from dualcam.distributed.connect import connect
from dualcam.synthetic.runs import EXPERIMENT_N, EXPERIMENT_RECIPE, REGIMES, SEEDS, check_seeds, experiment, regime
from dualcam.synthetic.scenarios import SCENARIOS, check_overlap_arguments, get_scenario

HELP = "compare training regimes on the class-overlap scenarios (make experiment)"
DESCRIPTION = (
    "For each seed and each data scenario (overlap, salient-shared), generate its data, then for each regime train "
    "both experts, score the test split and evaluate; print tables comparing CAM1, CAM2, the kernels and the "
    "references across regimes, one set per scenario. Seed s (--seed to --seed + --seeds - 1) draws its own data, "
    "splits, initial weights and batch order, so the intervals cover the data as well as the training. Each cell "
    "is the mean over seeds with its 95% t interval (N - 1 degrees of freedom), the per-seed values in "
    "experiment.json. Experts are reused across regimes when their data and recipe match."
)
RENAMED = {**renamed.OUT, **SCENARIO_RENAMED}
EXITS = {0: "", 1: RAY_FAILED.removeprefix("or "), 2: ""}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="folder or s3:// prefix for data, experts, results and tables")
    add_scenario_run(parser, n=EXPERIMENT_N, epochs=EXPERIMENT_RECIPE.epochs)
    parser.add_argument("--regimes", default=",".join(r.name for r in REGIMES), help="comma-separated (default: all)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated data scenarios (default: all)")
    parser.add_argument("--seeds", type=int, default=SEEDS,
                        help=f"runs per regime, seeds --seed, --seed + 1, ... (default {SEEDS})")


def run(*, output: str, per_class: int, image_side: int, seed: int, epochs: int, regimes: str, scenarios: str,
        seeds: int) -> int:
    recipe = replace(EXPERIMENT_RECIPE, epochs=epochs)  # checked here, before Ray starts
    check_overlap_arguments(per_class, image_side, seed)
    check_seeds(seeds)
    names = [regime(name).name for name in labels(regimes) or []]
    if not names:
        raise ValueError("--regimes names no regime")
    drawn = [get_scenario(name).name for name in labels(scenarios) or []]
    if not drawn:
        raise ValueError("--scenarios names no scenario")
    check_output_folder(output, "--output")
    connect(quiet=True)
    print(experiment(output, per_class, image_side, seed, recipe, names, drawn, seeds))
    return 0
