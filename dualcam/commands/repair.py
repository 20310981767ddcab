"""``dualcam repair``: keep one row per input in an output that holds some twice (``results.drop_duplicates``).

An output gets an input twice only when two runs wrote into it at once, which the output's lease
(``dualcam.io.lease``) now prevents; this mends outputs written before. No Ray.
"""

from __future__ import annotations

import argparse

from dualcam.commands.common import LEASE_HELD
from dualcam.commands.renamed import notice
from dualcam.io import storage
from dualcam.io.lease import Lease
from dualcam.io.results import RUN_FILE, drop_duplicates, read_results, read_run_spec

HELP = "keep one row per input in a results folder that holds some inputs twice"
DESCRIPTION = (
    "Rewrite the Parquet files of a results folder of dualcam score or drift so that each input is on one row: "
    "its first ok row, else its first error row. Files are replaced whole, one at a time, so the folder stays "
    "readable throughout and each input stays in it. Holds the folder's lease, as a run does."
)
RENAMED: dict[str, str] = {}
"""(Its old spelling, the folder as a positional argument, is ``add_arguments``' own.)"""
EXITS = {0: "", 1: "storage failed once the repair wrote, or the output's lease was lost",
         2: f"or --output is not a results folder or not writable, {LEASE_HELD}"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s [-h] --output OUTPUT [--wait-for-lease]"  # required, but checked by run: see below
    parser.add_argument("--output", help="results folder: path or s3:// prefix (required)")
    parser.add_argument("old_output", nargs="?", metavar="OUTPUT", help=argparse.SUPPRESS)  # the old spelling
    parser.add_argument("--wait-for-lease", action="store_true",
                        help="when a run is writing into --output, wait for it to end (default: stop, exit status 2)")


def run(*, output: str | None = None, old_output: str | None = None, wait_for_lease: bool = False) -> int:
    """Repair ``output`` (or the old positional spelling's folder); prints how many rows went and what the folder
    holds now."""
    if old_output is not None:
        if output is not None:
            raise ValueError(f"give the results folder once: --output {output} or {old_output}")
        notice(f"dualcam repair {old_output}", f"dualcam repair --output {old_output}", "dualcam repair")
        output = old_output
    if output is None:
        raise ValueError("the following argument is required: --output")
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
