"""``dualcam drift``: compare two versions of one expert on an archive (``pipeline.drift_archive``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dualcam.commands.common import (
    LEASE_HELD,
    RAY_FAILED,
    add_input_output,
    check_output_folder,
    dry_run,
    failure_status,
)
from dualcam.distributed.pipeline import drift_archive
from dualcam.maps.drift_measures import DRIFT_THRESHOLD, MAX_DRIFT_SHARE, PRIMARY_MEASURE, TOP_K, check_options
from dualcam.scoring import archive_options
from dualcam.scoring.archive_options import ArchiveOptions
from dualcam.scoring.scorers import SAME_EXPERT, DriftScorer

DRIFT_EXIT = 3
"""Exit status of ``dualcam drift`` when more than ``max_drift_share`` of the images drifted."""

HELP = "compare two versions of one expert on an archive: where did the new one start looking?"
DESCRIPTION = (
    "Score every image of an archive with an old and a new version of one expert (or two epochs "
    "of one training run) on Ray, in one pass, and write one Parquet row per input: both CAMs, ADDK(new, old) "
    "(where attention was gained) and ADDK(old, new) (where it was lost), and the drift measures "
    "cam_correlation, peak_shift_px, extra_mass_outside_old_top and delta_p (docs/guide/drift.md). An image has "
    f"drifted when {PRIMARY_MEASURE} < --threshold. Summaries: <output>/_drift.json and a page, "
    "<output>/_report/index.html, with the figure triples of the most drifted images. Rerunning "
    "the same command resumes. The two checkpoints must agree on " + ", ".join(SAME_EXPERT) + "."
)
RENAMED = {"--old": "--old-expert", "--new": "--new-expert", "--top-k": "--rows"}
EXITS = {0: "drift within --max-drift-share",
         1: f"more than --max-error-fraction of the inputs failed or none could be scored, {RAY_FAILED}",
         2: f"{LEASE_HELD}; or the checkpoints are not versions of one expert", DRIFT_EXIT: ""}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--old-expert", required=True,
                        help="the old version: a checkpoint or a folder of versions (latest "
                        "used), path or s3:// (an exported epoch, <output>/<class>/_epochs/<run>/epoch-NNN, is one "
                        "too)")
    parser.add_argument("--new-expert", required=True,
                        help="the new version: a checkpoint or a folder of versions (latest "
                        "used), path or s3://")
    archive_options.add_alpha(parser)
    parser.add_argument("--threshold", type=float, default=DRIFT_THRESHOLD,
                        help=f"an image has drifted when {PRIMARY_MEASURE} is below this (default {DRIFT_THRESHOLD})")
    parser.add_argument("--max-drift-share", type=float, default=MAX_DRIFT_SHARE,
                        help=f"exit {DRIFT_EXIT} when a larger share of the images drifted (default {MAX_DRIFT_SHARE})")
    parser.add_argument("--rows", type=int, default=TOP_K,
                        help=f"the most drifted images listed in the summary (default {TOP_K})")
    add_input_output(parser)
    archive_options.add_arguments(parser)


def run(
    *, old_expert: str, new_expert: str, input: str, output: str, threshold: float = DRIFT_THRESHOLD,
    max_drift_share: float = MAX_DRIFT_SHARE, rows: int = TOP_K, **options: Any,
) -> int:
    """Compare the two versions on the archive, print the pass and the drift; the exit status.

    ``options`` as for ``dualcam score`` (``commands.score.run``). 1 as for score (a run with too
    many errors says nothing reliable about drift), else ``DRIFT_EXIT`` when more than
    ``max_drift_share`` of the images drifted.
    """
    run_options = ArchiveOptions.from_arguments(**options)
    check_output_folder(output, "--output")
    if run_options.dry_run:
        check_options(threshold, max_drift_share, rows)
        return dry_run(DriftScorer, old_expert, new_expert, input, output, run_options)
    summary = drift_archive(old_expert, new_expert, input, output, run_options, threshold=threshold,
                            max_drift_share=max_drift_share, top_k=rows)
    print(summary.run.line(), flush=True)
    print(summary.line(), flush=True)
    failed = failure_status(summary.run, run_options.max_error_fraction)
    if failed:
        return failed
    if summary.alert:
        print(f"dualcam: drift: {summary.drifted_share:.1%} of the images drifted, more than the allowed "
              f"{max_drift_share:.1%}", file=sys.stderr)
        return DRIFT_EXIT
    return 0
