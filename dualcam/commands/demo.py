"""``dualcam demo`` (``make demo``): the class-overlap scenario end to end in the paper's regime
(``scenario.demo``) on the local Ray or the one at RAY_ADDRESS."""

from __future__ import annotations

import argparse
from dataclasses import replace

from dualcam.raycluster import connect
from dualcam.scenario import DEMO_RECIPE, demo

HELP = "the class-overlap scenario end to end in the paper's regime (make demo)"
DESCRIPTION = (
    "Generate the class-overlap scenario, train both experts in the paper's regime on Ray Train, "
    "score the test split on Ray Data, evaluate localization and render the figures and an HTML report."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder for data, experts, results and the report")
    parser.add_argument("--n", type=int, default=100, help="images per class (default 100)")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    parser.add_argument("--seed", type=int, default=0, help="data, splits and training seed (default 0)")
    parser.add_argument("--epochs", type=int, default=DEMO_RECIPE.epochs, help=f"default {DEMO_RECIPE.epochs}")


def run(*, out: str, n: int, size: int, seed: int, epochs: int) -> int:
    connect(quiet=True)
    demo(out, n, size, seed, replace(DEMO_RECIPE, epochs=epochs))
    return 0
