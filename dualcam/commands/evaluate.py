"""``dualcam evaluate``: localization of CAM1, CAM2 and the kernels against known boxes
(``evaluation.evaluate``), printed as a table and written as JSON."""

from __future__ import annotations

import argparse

from dualcam.commands.common import floats, labels
from dualcam.io import storage
from dualcam.maps.kernel import ALPHAS, KERNELS
from dualcam.reports.evaluation import DEFAULT_KERNELS, EVALUATION_FILE, evaluate, format_table

HELP = "localization of CAM1, CAM2 and the kernels against known boxes, from stored results"
DESCRIPTION = (
    "Measure, on expert 1's class in the test split, how well CAM1, CAM2 and each kernel at each "
    "alpha point at the F1 box and at the shared S box (pointing game, energy in box, IoU of the top region), "
    "next to references (uniform map, the true box pooled to the CAM grid, CAM1 sharpened alone), plus the "
    "CAM1-CAM2 correlation, the overlap score and how well it flags the images where CAM1 points at S, and "
    "each expert's accuracy. Maps are recomputed from the stored raw CAMs."
)
RENAMED = {"--json": "--output", "--kernel": "--kernels"}
EXITS = {0: "", 2: ""}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", required=True, help="a dualcam score output (of a manifest with uri, label, "
                        "split)")
    parser.add_argument("--boxes", required=True, help="boxes file: CSV/Parquet with uri, x, y, w, h, kind (F1, S)")
    parser.add_argument("--alphas", default=",".join(f"{a:g}" for a in ALPHAS),
                        help="comma-separated alphas (default 1,5,15,50)")
    parser.add_argument("--kernels", default=",".join(DEFAULT_KERNELS),
                        help=f"comma-separated kernels of {', '.join(KERNELS)} (default: all): addk is the paper's, "
                        "gated (ReLU(CAM1)/max * ADDK) and unshared (CAM1 sharpened less what CAM2 claims) "
                        "dualcam's own")
    parser.add_argument("--split", default="test", help="the split measured when results have a split column "
                        "(default test; '' for all)")
    parser.add_argument("--output",
                        help=f"where the JSON goes: a path or s3:// URI (default <results>/{EVALUATION_FILE})")


def run(*, results: str, boxes: str, alphas: str, kernels: str, split: str, output: str | None) -> int:
    """Evaluate, write the JSON, print the table and where the JSON went. ``alphas``, ``kernels``: comma-separated."""
    evaluation = evaluate(results, boxes, alphas=floats(alphas), kernels=labels(kernels) or [], split=split or None)
    out = output or storage.join(results, EVALUATION_FILE)
    storage.write_json(out, evaluation)
    print(format_table(evaluation))
    print(f"evaluation written to {out}")
    return 0
