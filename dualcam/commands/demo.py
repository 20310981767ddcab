"""``dualcam demo`` (``make demo``): the class-overlap scenario end to end in the paper's regime
(``synthetic.runs.demo``) on the local Ray or the one at RAY_ADDRESS."""

from __future__ import annotations

import argparse
from dataclasses import replace

from dualcam.commands.common import add_scenario_run, check_output_folder
from dualcam.distributed.connect import connect
from dualcam.synthetic.runs import DEMO_RECIPE, demo
from dualcam.synthetic.scenarios import check_overlap_arguments

HELP = "the class-overlap scenario end to end in the paper's regime (make demo)"
DESCRIPTION = (
    "Generate the class-overlap scenario, train both experts in the paper's regime on Ray Train, "
    "score the test split on Ray Data, evaluate localization and render the figures and an HTML report."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder for data, experts, results and the report")
    add_scenario_run(parser, n=100, epochs=DEMO_RECIPE.epochs)


def run(*, out: str, n: int, size: int, seed: int, epochs: int) -> int:
    recipe = replace(DEMO_RECIPE, epochs=epochs)  # checked here, before Ray starts
    check_overlap_arguments(n, size, seed)
    check_output_folder(out, "--out")
    connect(quiet=True)
    demo(out, n, size, seed, recipe)
    return 0
