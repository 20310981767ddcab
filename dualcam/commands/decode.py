"""``dualcam decode``: check that files decode, one line each; exit 1 if any fails."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from dualcam.commands.common import decoded, input_files
from dualcam.io.inputs import skipped_files

HELP = "check that images decode; one line per file"
DESCRIPTION = (
    "Decode each file as dualcam score would and print one line per file: its size, colour and value range, or "
    "why it cannot be read. Folders and s3:// prefixes are searched for image names, as score does; other files "
    "there are counted as skipped."
)
RENAMED: dict[str, str] = {}
EXITS = {0: "every file decoded", 1: "a file failed (each is listed, on stdout)", 2: "or no image files found"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="files, folders or s3:// prefixes")


def run(*, inputs: Sequence[str]) -> int:
    failed = 0
    files, skipped = input_files(inputs)
    for uri, _, image, err in decoded(files):
        if err or image is None:  # no image only with an error
            failed += 1
            print(f"error  {err}")
            continue
        mode = "RGB" if image.ndim == 3 else "gray"
        print(f"ok     {uri}  {image.shape[1]}x{image.shape[0]} {mode}  range [{image.min():.3f}, {image.max():.3f}]")
    skipped_note = f"; {skipped_files(skipped)}" if skipped else ""
    print(f"{len(files) - failed} decoded, {failed} failed, of {len(files)} files{skipped_note}")
    return 1 if failed else 0
