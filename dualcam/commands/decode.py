"""``dualcam decode``: check that files decode, one line each; exit 1 if any fails."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from dualcam.commands.common import decoded, input_files

HELP = "check that images decode; one line per file"
DESCRIPTION = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="files, folders or s3:// prefixes")


def run(*, inputs: Sequence[str]) -> int:
    failed = 0
    files = input_files(inputs)
    for uri, _, image, err in decoded(files):
        if err:
            failed += 1
            print(f"error  {err}")
            continue
        mode = "RGB" if image.ndim == 3 else "gray"
        print(f"ok     {uri}  {image.shape[1]}x{image.shape[0]} {mode}  range [{image.min():.3f}, {image.max():.3f}]")
    print(f"{len(files) - failed} decoded, {failed} failed, of {len(files)} files")
    return 1 if failed else 0
