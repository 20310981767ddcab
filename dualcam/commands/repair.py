"""``dualcam repair``: keep one row per input in an output that holds some twice (``results.drop_duplicates``).

An output gets an input twice only when two runs wrote into it at once, which the output's lease
(``dualcam.io.lease``) now prevents; this mends outputs written before. No Ray.
"""

from __future__ import annotations

import argparse

from dualcam.io import storage
from dualcam.io.lease import Lease
from dualcam.io.results import RUN_FILE, drop_duplicates, read_results, read_run_spec

HELP = "keep one row per input in a results folder that holds some inputs twice"
DESCRIPTION = (
    "Rewrite the Parquet files of a results folder of dualcam score or drift so that each input is on one row: "
    "its first ok row, else its first error row. Files are replaced whole, one at a time, so the folder stays "
    "readable throughout and each input stays in it. Holds the folder's lease, as a run does. Exit status: 0 "
    "done; 2 not a results folder, not writable, or a run is writing into it (see --wait-for-lease)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="results folder: path or s3:// prefix")
    parser.add_argument("--wait-for-lease", action="store_true",
                        help="when a run is writing into OUTPUT, wait for it to end (default: stop, exit status 2)")


def run(*, output: str, wait_for_lease: bool = False) -> int:
    """Repair ``output``; prints how many rows went and what the folder holds now."""
    spec = read_run_spec(output)
    if spec is None:
        raise ValueError(f"{output}: no {RUN_FILE}; not a results folder of dualcam score or drift")
    storage.check_writable(output)
    with Lease(output, wait=wait_for_lease):
        removed = drop_duplicates(output)
        rows = read_results(output, ["uri"], warn_duplicates=False).num_rows
    print(f"removed {removed} rows that repeated an input; {output} holds {rows} rows, one per input", flush=True)
    if spec.kind == "drift" and removed:
        print("rerun the same dualcam drift command to summarize the repaired folder again (_drift.json)")
    return 0
