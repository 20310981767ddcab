"""What several commands share: exit statuses, comma-separated values, the options of the expert pair
and of an archive's input and output, and the files named on a command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from dualcam.distributed.pipeline import ScoreSummary, plan_archive
from dualcam.io import errorlog, storage
from dualcam.io.checkpoints import CheckpointError
from dualcam.io.imaging import DecodeError, decode_image, is_image_name
from dualcam.io.inputs import skipped_files
from dualcam.io.lease import LeaseLost
from dualcam.maps import architectures
from dualcam.maps.architectures import ARCHITECTURES, OUTPUT_STRIDES
from dualcam.scoring.archive_options import ArchiveOptions
from dualcam.scoring.scorers import PairScorer

USAGE_ERRORS = (CheckpointError, DecodeError, ValueError, OSError)
"""What the library raises for unusable arguments, experts, input or output: exit status 2."""

EXIT_STATUSES = {
    0: "done",
    1: "the work ran but failed",
    2: "nothing was done (the reason is on stderr): unusable arguments, experts, input or output, found before any "
       "work",
    3: "more than --max-drift-share of the images drifted",
}
"""What each exit status means for every command; a command's ``EXITS`` say what more it means there."""

RAY_FAILED = ("or Ray, storage once the run wrote, or the output's lease failed (one line on stderr, the traceback "
              "in the log file it names)")
"""What else exit status 1 means for a command that runs on Ray (``exit_status``)."""
LEASE_HELD = "or another run is writing into --output (see --wait-for-lease)"
"""What else exit status 2 means for a command that holds an output's lease (``dualcam.io.lease``)."""


def exit_epilog(exits: dict[int, str]) -> str:
    """The end of a command's ``--help``, one line per exit status it returns: the status, its meaning in
    ``EXIT_STATUSES`` and what more it means for this command (``exits``)."""
    lines = (f"{status}: {EXIT_STATUSES[status]}{f'; {detail}' if detail else ''}" for status, detail in exits.items())
    return "\n".join(("Exit status:", *lines))


def exit_status(run: Callable[[], int], output: Callable[[], str | None] = lambda: None) -> int:
    """``run()``'s exit status; 2, with the reason on stderr, when it raised for unusable input.

    A failure inside Ray's workers (an S3 write that keeps failing, say; Ray re-raises it as a
    subclass of the original error), storage failing under the driver once the run writes
    (``errorlog.RunFailed``) or a lease lost to another run is a failed run, not unusable input:
    exit 1, with one line on stderr (``errorlog.one_line``) and the full traceback in a log file
    whose path it names, beside the run's output (``output()``, asked only then:
    ``<output>/_logs/``) when it has one.
    """
    try:
        return run()
    except Exception as err:
        if errorlog.raised_by_ray(err) or isinstance(err, (LeaseLost, errorlog.RunFailed)):
            log = errorlog.write_log(err, output())
            print(f"dualcam: error: {errorlog.one_line(err)} (full traceback: {log})", file=sys.stderr)
            return 1
        if isinstance(err, USAGE_ERRORS):
            print(f"dualcam: error: {err}", file=sys.stderr)
            return 2
        raise


def failure_status(summary: ScoreSummary, max_error_fraction: float) -> int:
    """1, with the reason on stderr, when more than ``max_error_fraction`` of the inputs failed or none
    could be scored; else 0."""
    failure = summary.failure(max_error_fraction)
    if failure:
        print(f"dualcam: run failed: {failure}", file=sys.stderr)
        return 1
    return 0


def dry_run(
    scorer: type[PairScorer], first: str, second: str, input: str, output: str, options: ArchiveOptions,
) -> int:
    """``--dry-run``: print what the run would do (``pipeline.plan_archive``); exit status 0."""
    for line in plan_archive(scorer, first, second, input, output, options).lines():
        print(line, flush=True)
    return 0


def check_output_folder(uri: str, option: str) -> None:
    """ValueError, before any work, for a local output folder that cannot be made or written to: it,
    or a folder above it, is a file, or the nearest folder that exists is not writable. (An s3://
    prefix is never a file; access to it shows when the run writes.)"""
    if storage.is_s3(uri):
        return
    path = Path(uri).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under {existing}, which is a file"
        raise ValueError(f"{option} {uri} {where}, not a folder; give a folder (it is created if missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {uri}: no permission to write in {existing}")


def options_of(command: ModuleType) -> dict[str, argparse.Action]:
    """A command's options by the keyword ``run`` takes them as (``--batch-size``: ``batch_size``)."""
    parser = argparse.ArgumentParser(prog=f"dualcam {command.__name__.rsplit('.', 1)[-1]}")
    command.add_arguments(parser)
    return {action.dest: action for action in parser._actions if action.dest != "help"}


def labels(value: str | Sequence[str] | None) -> list[str] | None:
    """Labels from a comma-separated string (the command line) or a list (a spec)."""
    parts = value.split(",") if isinstance(value, str) else list(value or [])
    return [part.strip() for part in parts if part.strip()] or None


def floats(text: str) -> list[float]:
    """Numbers from a comma-separated string; ValueError naming the text otherwise."""
    try:
        return [float(part) for part in labels(text) or []]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None


def add_expert_pair(parser: argparse.ArgumentParser) -> None:
    """--expert1 and --expert2: what every command that scores with both experts takes."""
    parser.add_argument("--expert1", required=True,
                        help="expert 1 (class of interest): a checkpoint, or a folder of its "
                        "versions (latest used); path or s3://")
    parser.add_argument("--expert2", required=True,
                        help="expert 2 (the overlapping class): a checkpoint, or a folder of "
                        "its versions (latest used); path or s3://")


def add_input_output(parser: argparse.ArgumentParser) -> None:
    """--input and --output: what every command that runs over an archive on Ray takes."""
    parser.add_argument("--input", required=True, help="folder, s3:// prefix, manifest (.csv/.parquet with a uri "
                        "column; other columns pass through), S3 Inventory manifest.json, or PACS query "
                        "(dicomweb[s]://HOST[:PORT]/ROOT?QUERY, e.g. ...?StudyDate=yesterday; credentials from "
                        "DUALCAM_DICOMWEB_USER/_PASSWORD or _TOKEN)")
    parser.add_argument("--output", required=True, help="results folder: path or s3:// prefix")


def add_arch(parser: argparse.ArgumentParser, default: str) -> None:
    """--arch, one of the registry's (``dualcam.maps.architectures``); a torchvision model whose CAM would not be
    exact (ConvNeXt, MobileNetV3, ViT) is refused saying why (the type runs before the choices, which job specs
    check)."""
    parser.add_argument("--arch", type=_arch, choices=tuple(ARCHITECTURES), default=default, metavar="ARCH",
                        help=f"torchvision architecture, or TorchXRayVision's (xrv-*): {', '.join(ARCHITECTURES)} "
                        f"(default {default})")


def _arch(name: str) -> str:
    try:
        architectures.family(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return name


def add_output_stride(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--output-stride", type=int, choices=OUTPUT_STRIDES, default=default,
                        help=f"16 doubles the CAM grid (ResNets: last stage kept at stride 16; default {default})")


SCENARIO_RENAMED = {"--n": "--per-class", "--size": "--image-side"}
"""Old spellings of the scenario's options (``add_scenario_run``, synth)."""


def add_scenario_run(parser: argparse.ArgumentParser, n: int, epochs: int) -> None:
    """--per-class, --image-side, --seed and --epochs: what the class-overlap scenario's runs (demo, experiment)
    take."""
    add_scenario_data(parser, n)
    parser.add_argument("--epochs", type=int, default=epochs, help=f"default {epochs}")


def add_scenario_data(parser: argparse.ArgumentParser, n: int) -> None:
    """--per-class, --image-side and --seed: what the class-overlap scenario's data are drawn with."""
    parser.add_argument("--per-class", type=int, default=n, help=f"images per class (default {n})")
    parser.add_argument("--image-side", type=int, default=96, help="side of the generated images in pixels "
                        "(default 96)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and splits, and of training where the "
                        "command trains (default 0)")


def input_files(uris: Sequence[str]) -> tuple[list[str], list[str]]:
    """(files named directly plus the image files found under named folders or s3:// prefixes, the
    other files found there). FileNotFoundError when there is nothing to read: exit status 2, as
    for ``dualcam score``."""
    found, skipped = [], []
    for uri in uris:
        listed = storage.list_files(uri)
        if listed == [uri]:
            found.append(uri)
            continue
        found += [u for u in listed if is_image_name(u)]
        skipped += [u for u in listed if not is_image_name(u)]
    if not found:
        detail = f" ({skipped_files(skipped)})" if skipped else ""
        raise FileNotFoundError(f"{', '.join(uris)}: no image files found{detail}")
    return found, skipped


def decoded(files: Sequence[str]) -> Iterator[tuple[str, bytes | None, np.ndarray | None, Exception | None]]:
    """(uri, bytes, image, None) or (uri, None, None, error) per file: one bad file never stops the others."""
    for uri in files:
        try:
            data = storage.read_bytes(uri)
            yield uri, data, decode_image(data, uri), None
        except (DecodeError, OSError) as err:
            yield uri, None, None, err
