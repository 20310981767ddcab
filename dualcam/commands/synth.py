"""``dualcam synth``: write the class-overlap scenario (``synthetic.write_overlap_dataset``)."""

from __future__ import annotations

import argparse

from dualcam.commands.common import check_output_folder
from dualcam.synthetic import OVERLAP_CLASSES, write_overlap_dataset

HELP = "write the class-overlap scenario: images, manifest and feature boxes"
DESCRIPTION = (
    "Write chest-X-ray-like images of three classes with known answers: C1 holds a shared feature "
    "S (a blurred disc) and its own F1 (a ring), C2 holds S and its own F2 (a cross), normal holds neither; "
    "distractors in every class. Writes images/<label>/, manifest.csv (uri, label, split 60/20/20) and "
    "boxes.csv (uri, x, y, w, h, kind)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder or s3:// prefix")
    parser.add_argument("--n", type=int, default=100, help="images per class (default 100)")
    parser.add_argument("--size", type=int, default=96, help="side in pixels (default 96)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def run(*, out: str, n: int, size: int, seed: int) -> int:
    check_output_folder(out, "--out")
    data = write_overlap_dataset(out, n, size, seed)
    print(f"wrote {data.images} synthetic {size} px images ({n} each of {', '.join(OVERLAP_CLASSES)}) "
          f"under {out}; manifest {data.manifest}, boxes {data.boxes}")
    return 0
