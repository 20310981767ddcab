"""``dualcam render``: the paper's figures for a few scored rows and a static HTML report
(``reports.score_page.render_results``; no Ray)."""

from __future__ import annotations

import argparse

from dualcam.commands import renamed
from dualcam.commands.common import check_output_folder, floats
from dualcam.maps.kernel import ALPHAS, KERNELS
from dualcam.reports.score_page import DEFAULT_KERNEL, DEFAULT_N, DEFAULT_REVIEW, render_results

HELP = "the paper's figures for a few scored rows, and a static HTML report of a results folder"
DESCRIPTION = (
    "Draw, for up to --rows scored rows, the figure triple (CAM1, CAM2 and the kernel over the image) and "
    "an alpha strip, recomputing the kernel from the stored CAMs, and write them with a review list (the rows "
    "expert 1 calls positive whose overlap is highest, with their triples), the run's spec, histograms "
    "of p1 and p2 per label and an evaluation's tables to OUTPUT/index.html (opens from disk). Rows: the test split "
    "when there is one; those labelled as expert 1's class, first by uri, when there is a label column, else the "
    "highest p1."
)
RENAMED = {**renamed.OUT, "--n": "--rows", "--review": "--review-rows"}
EXITS = {0: "", 2: ""}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", required=True, metavar="URI", help="results folder of dualcam score: path or "
                        "s3:// prefix")
    parser.add_argument("--output", required=True, help="local folder for index.html and images/")
    parser.add_argument("--rows", type=int, default=DEFAULT_N, help=f"rows to draw (default {DEFAULT_N})")
    parser.add_argument("--review-rows", type=int, default=DEFAULT_REVIEW, metavar="N",
                        help=f"list for review the N rows expert 1 calls positive whose overlap (the share of its "
                        f"evidence expert 2 also claims) is highest, with their triples; 0: no list (default "
                        f"{DEFAULT_REVIEW})")
    parser.add_argument("--alphas", default=",".join(f"{a:g}" for a in ALPHAS),
                        help="comma-separated alphas of the alpha strip (default %(default)s)")
    parser.add_argument("--kernel", default=DEFAULT_KERNEL, help=f"kernel recomputed from the CAMs: "
                        f"{', '.join(KERNELS)} (default {DEFAULT_KERNEL}, the paper's)")
    parser.add_argument("--boxes", metavar="URI", help="CSV/Parquet of boxes to outline: uri, x, y, w, h (image "
                        "pixels), kind")
    parser.add_argument("--evaluation", metavar="JSON", help="JSON of dualcam evaluate: its lists of rows and scalars "
                        "become tables")


def run(*, results: str, output: str, rows: int, alphas: str, kernel: str, boxes: str | None,
        evaluation: str | None, review_rows: int) -> int:
    """Write the report; print each skipped image and where the report is. ``alphas``: comma-separated."""
    check_output_folder(output, "--output")
    rendered = render_results(results, output, n=rows, alphas=floats(alphas), kernel=kernel, boxes=boxes,
                              evaluation=evaluation, review=review_rows)
    for line in rendered.skipped:
        print(f"skipped  {line}")
    print(f"{rendered.images} images drawn, {rendered.reviewed} listed for review ({rendered.figures} figures, "
          f"{len(rendered.skipped)} skipped); report: {rendered.report}")
    return 0
