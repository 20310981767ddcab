"""How a run over an archive runs (``dualcam score``, ``dualcam drift``): its options, defined once.

``ArchiveOptions`` holds them and checks itself when made, so an unusable value stops a command
(exit status 2) before Ray starts or any output is touched. ``add_alpha`` and ``add_arguments`` put
its fields on a command's parser as long options (``batch_size`` is ``--batch-size``; ``progress=False`` is
``--no-progress``), with the defaults given here; ``ArchiveOptions.from_arguments`` turns the parsed
options, or a job spec's keys, back into one. ``pipeline.score_archive``, ``drift_archive`` and
``run_archive`` take it. A new run option is a field here, once. No Ray.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dualcam.io.dicomweb import MAX_REQUESTS
from dualcam.io.inputs import MAX_INPUT_BYTES
from dualcam.io.lease import LEASE_SECONDS
from dualcam.io.storage import READ_TIMEOUT
from dualcam.maps.kernel import DEFAULT_ALPHA
from dualcam.maps.numerics import DEFAULT_PRECISION, PRECISIONS, check_precision
from dualcam.scoring.planning import Cluster, Rates

MAX_ERROR_FRACTION = 0.05
"""Default for ``max_error_fraction``: a run with more than 5% error rows is reported as failed."""
ROWS_PER_FILE = 1024
"""Default rows per Parquet file (the last may hold fewer). A killed run loses at most the files being written."""
ALPHA_HELP = "ADDK amplification (paper: 5, 15, 50; default 5)"


@dataclass(frozen=True)
class ArchiveOptions:
    """The options of one pass over an archive; ValueError naming the option for one that cannot be used."""

    alpha: float = DEFAULT_ALPHA
    """ADDK amplification, finite and >= 0."""
    batch_size: int = 16
    """Images per forward pass."""
    precision: str = DEFAULT_PRECISION
    """How the experts compute (``dualcam.maps.numerics.PRECISIONS``): float32 unless told otherwise."""
    actors: int | None = None
    """Scoring actors; None: one per GPU, on CPU clusters one per CPU (``planning.plan_placement``)."""
    gpus_per_actor: float | None = None
    """None: 1 when the cluster has GPUs, else 0."""
    cpus_per_actor: float | None = None
    """None: 1 (one torch thread per actor on CPU clusters)."""
    limit: int | None = None
    """Score at most this many of the inputs not yet scored; None: all."""
    max_error_fraction: float = MAX_ERROR_FRACTION
    """The run counts as failed (exit status 1) when a larger share of the inputs failed."""
    retry_errors: bool = False
    """Take every error row of earlier runs out of the output first, so those inputs are tried again
    (transient error rows are taken out either way)."""
    rows_per_file: int = ROWS_PER_FILE
    """Rows per Parquet file (Python only; no command-line option)."""
    progress: bool = True
    """Ray's progress bars (the line saying what the run will score is printed either way)."""
    read_timeout: float = READ_TIMEOUT
    """Seconds one input's read may take; a read still waiting then becomes that input's error row."""
    wait_for_lease: bool = False
    """When another run is writing into the output: wait for it to end instead of stopping (exit status 2)."""
    lease_wait_timeout: float | None = None
    """With ``wait_for_lease``: give up (exit status 2) after waiting this many seconds; None: wait as long
    as it takes (a local output's lease lasts as long as its holder's process, paused or not)."""
    lease_seconds: float = LEASE_SECONDS
    """How long the output's lease lasts unless renewed, so how long the output of a killed driver stays
    locked on S3 (Python only; see ``dualcam.io.lease``)."""
    max_input_bytes: int = MAX_INPUT_BYTES
    """An input larger than this is an error row, unread (``inputs.MAX_INPUT_BYTES`` says why the default)."""
    pacs_requests: int = MAX_REQUESTS
    """Most DICOMweb requests in flight at once across the run's loaders (a clinical PACS has other users)."""
    dry_run: bool = False
    """Print what the run would do (``pipeline.plan_archive``) instead: nothing started, nothing written."""
    rates: str | None = None
    """For the plan's hours: a ``make bench`` JSON report, or ``decode=N,gpu=N,cpu=N`` (``planning.Rates.parse``)."""
    cluster: str | None = None
    """For the plan: a cluster to plan on besides the one at hand, ``NODES,CPUS[,GPUS]`` per node."""

    def __post_init__(self) -> None:
        check_value(self.alpha, "alpha", "a finite number >= 0", float, lambda v: v >= 0)
        check_value(self.batch_size, "batch_size", "an integer >= 1", int, lambda v: v >= 1)
        check_precision(self.precision)
        check_value(self.actors, "actors", "an integer >= 1", int, lambda v: v >= 1, optional=True)
        check_value(self.gpus_per_actor, "gpus_per_actor", "a number >= 0", float, lambda v: v >= 0, optional=True)
        check_value(self.cpus_per_actor, "cpus_per_actor", "a number > 0", float, lambda v: v > 0, optional=True)
        check_value(self.limit, "limit", "an integer >= 0", int, lambda v: v >= 0, optional=True)
        check_value(self.max_error_fraction, "max_error_fraction", "a share in [0, 1]", float, lambda v: 0 <= v <= 1)
        check_value(self.rows_per_file, "rows_per_file", "an integer >= 1", int, lambda v: v >= 1)
        check_value(self.read_timeout, "read_timeout", "a number of seconds > 0", float, lambda v: v > 0)
        check_value(self.max_input_bytes, "max_input_bytes", "an integer >= 1", int, lambda v: v >= 1)
        check_value(self.pacs_requests, "pacs_requests", "an integer >= 1", int, lambda v: v >= 1)
        check_value(self.lease_wait_timeout, "lease_wait_timeout", "a number of seconds > 0", float,
                    lambda v: v > 0, optional=True)
        check_value(self.lease_seconds, "lease_seconds", "a number of seconds > 0", float, lambda v: v > 0)
        for name in ("retry_errors", "progress", "wait_for_lease", "dry_run"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.rates is not None and "=" in str(self.rates):
            Rates.parse(str(self.rates))  # given numbers are checked now; a report when the plan reads it
        if self.cluster is not None:
            Cluster.parse(str(self.cluster))

    @classmethod
    def from_arguments(cls, *, no_progress: bool = False, **fields: Any) -> ArchiveOptions:
        """The options as a command line or a job spec gives them: ``no_progress`` for ``progress``."""
        return cls(progress=not no_progress, **fields)


def check_value(
    value: Any, name: str, what: str, kind: type, valid: Callable[[Any], bool], optional: bool = False,
) -> None:
    """ValueError "``name`` must be ``what``, got ``value``" unless ``value`` is of ``kind`` (an int
    counts as a float, a bool as neither; a float must be finite) and ``valid``; None passes when
    ``optional``. How every run option with a range is checked (``ArchiveOptions``, ``Recipe``...)."""
    if value is None and optional:
        return
    kinds = (int, float) if kind is float else (int,)
    if (isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value)
            or not valid(value)):
        raise ValueError(f"{name} must be {what}, got {value!r}")


def add_alpha(parser: argparse.ArgumentParser) -> None:
    """--alpha, default ``DEFAULT_ALPHA``: every command that computes ADDK takes it."""
    parser.add_argument("--alpha", type=float, default=ArchiveOptions.alpha, help=ALPHA_HELP)


def add_precision(parser: argparse.ArgumentParser) -> None:
    """--precision, default ``DEFAULT_PRECISION``: every command that runs the experts takes it."""
    parser.add_argument("--precision", choices=PRECISIONS, default=ArchiveOptions.precision,
                        help=f"how the experts compute (default {DEFAULT_PRECISION}, the same on CPU and GPU; "
                        "tf32, fp16 and bf16 are faster on GPUs and move heatmaps: docs/operations/gpus.md)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``ArchiveOptions``' fields as long options, with its defaults: all but ``alpha`` (``add_alpha``,
    which commands put beside their experts), ``rows_per_file`` and ``lease_seconds``."""
    parser.add_argument("--batch-size", type=int, default=ArchiveOptions.batch_size,
                        help=f"images per forward pass (default {ArchiveOptions.batch_size})")
    add_precision(parser)
    parser.add_argument("--actors", type=int, default=ArchiveOptions.actors,
                        help="scoring actors (default: one per GPU; on CPU clusters, one per CPU)")
    parser.add_argument("--gpus-per-actor", type=float, default=ArchiveOptions.gpus_per_actor,
                        help="GPUs per actor (default 1 when the cluster has GPUs, else 0)")
    parser.add_argument("--cpus-per-actor", type=float, default=ArchiveOptions.cpus_per_actor,
                        help="CPUs per actor, and its torch threads on CPU clusters (default 1; more for "
                             "fewer actors where memory is short)")
    parser.add_argument("--limit", type=int, default=ArchiveOptions.limit,
                        help="score at most N of the inputs not yet scored")
    parser.add_argument("--max-error-fraction", type=float, default=ArchiveOptions.max_error_fraction,
                        help=f"exit 1 when a larger share of the inputs failed (default {MAX_ERROR_FRACTION})")
    parser.add_argument("--retry-errors", action="store_true",
                        help="score again every input that failed in earlier runs into this --output, "
                        "permanent errors too (their rows are replaced; transient ones are retried by every run)")
    parser.add_argument("--read-timeout", type=float, default=ArchiveOptions.read_timeout, metavar="SECONDS",
                        help="a read of one input that takes longer becomes its error row, and the run goes on "
                        f"(default {READ_TIMEOUT:g})")
    parser.add_argument("--max-input-bytes", type=int, default=ArchiveOptions.max_input_bytes, metavar="N",
                        help="an input larger than this becomes its error row, unread (default "
                        f"{MAX_INPUT_BYTES:,}: 512 MiB)")
    parser.add_argument("--pacs-requests", type=int, default=ArchiveOptions.pacs_requests, metavar="N",
                        help="most DICOMweb requests in flight at once, across the whole run, so that a nightly run "
                        f"cannot overload a clinical PACS (default {MAX_REQUESTS})")
    parser.add_argument("--wait-for-lease", action="store_true",
                        help="when another run is writing into --output, wait for it to end (default: stop, "
                        "exit status 2)")
    parser.add_argument("--lease-wait-timeout", type=float, default=ArchiveOptions.lease_wait_timeout,
                        metavar="SECONDS", help="with --wait-for-lease, give up (exit status 2) after waiting this "
                        "long (default: as long as it takes)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs; the line "
                        "saying what the run will score is still printed)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what the run would do (inputs found, already done, to score, skipped names, "
                        "blocks, hours with --rates) and stop: nothing started, nothing written")
    parser.add_argument("--rates", default=ArchiveOptions.rates, metavar="BENCH.json|decode=N,gpu=N,cpu=N",
                        help="with --dry-run: images/s to plan from, a make bench JSON report (--json) or numbers: "
                        "decoding per CPU core, scoring per GPU or per CPU core")
    parser.add_argument("--cluster", default=ArchiveOptions.cluster, metavar="NODES,CPUS[,GPUS]",
                        help="with --dry-run: plan on this many nodes alike too, say 8,16,1")
