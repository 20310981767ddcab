"""``dualcam score``: score an archive on Ray into Parquet, with both experts (``pipeline.score_archive``)."""

from __future__ import annotations

import argparse
from typing import Any

from dualcam.commands import renamed
from dualcam.commands.common import (
    LEASE_HELD,
    RAY_FAILED,
    add_expert_pair,
    add_input_output,
    check_output_folder,
    dry_run,
    failure_status,
)
from dualcam.distributed.pipeline import score_archive
from dualcam.scoring import archive_options
from dualcam.scoring.archive_options import ArchiveOptions
from dualcam.scoring.scorers import DualScorer

HELP = "score an archive on Ray: CAMs, ADDK heatmaps and scores to Parquet"
DESCRIPTION = (
    "Score every image of an archive with both experts on Ray (the cluster at RAY_ADDRESS, "
    "else a local one) and write one Parquet row per input. Rerunning the same command resumes; "
    "--dry-run says what it would do and how long it would take, and starts nothing."
)
RENAMED = renamed.EXPERT_PAIR
EXITS = {0: "", 1: f"more than --max-error-fraction of the inputs failed or none could be scored, {RAY_FAILED}, or "
         "--output holds an input twice (see dualcam repair)", 2: LEASE_HELD}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_expert_pair(parser)
    archive_options.add_alpha(parser)
    add_input_output(parser)
    archive_options.add_arguments(parser)


def run(*, expert1: str, expert2: str, input: str, output: str, **options: Any) -> int:
    """Score the archive, print the summary (it ends with where the results are); the exit status.

    ``options``: ``ArchiveOptions``' fields as the command line names them (``batch_size=8``,
    ``no_progress=True``). 1 when more than ``max_error_fraction`` of the inputs failed or none
    could be scored.
    """
    run_options = ArchiveOptions.from_arguments(**options)
    check_output_folder(output, "--output")
    if run_options.dry_run:
        return dry_run(DualScorer, expert1, expert2, input, output, run_options)
    summary = score_archive(expert1, expert2, input, output, run_options)
    print(summary.line(), flush=True)
    return failure_status(summary, run_options.max_error_fraction)
