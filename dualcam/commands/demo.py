"""``dualcam demo`` (``make demo``): the class-overlap scenario end to end in the paper's regime
(``synthetic.runs.demo``) on the local Ray or the one at RAY_ADDRESS."""

from __future__ import annotations

import argparse
from dataclasses import replace

from dualcam.commands import renamed
from dualcam.commands.common import RAY_FAILED, SCENARIO_RENAMED, add_scenario_run, check_output_folder
from dualcam.distributed.connect import connect
from dualcam.synthetic.runs import DEMO_RECIPE, demo
from dualcam.synthetic.scenarios import check_overlap_arguments

HELP = "the class-overlap scenario end to end in the paper's regime (make demo)"
DESCRIPTION = (
    "Generate the class-overlap scenario, train both experts in the paper's regime on Ray Train, "
    "score the test split on Ray Data, evaluate localization and render the figures and an HTML report."
)
RENAMED = {**renamed.OUT, **SCENARIO_RENAMED}
EXITS = {0: "", 1: RAY_FAILED.removeprefix("or "), 2: ""}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="folder for data, experts, results and the report")
    add_scenario_run(parser, n=100, epochs=DEMO_RECIPE.epochs)


def run(*, output: str, per_class: int, image_side: int, seed: int, epochs: int) -> int:
    recipe = replace(DEMO_RECIPE, epochs=epochs)  # checked here, before Ray starts
    check_overlap_arguments(per_class, image_side, seed)
    check_output_folder(output, "--output")
    connect(quiet=True)
    demo(output, per_class, image_side, seed, recipe)
    return 0
