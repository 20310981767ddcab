"""``dualcam synth``: write the class-overlap scenario (``synthetic.scenarios.write_overlap_dataset``)."""

from __future__ import annotations

import argparse

from dualcam.commands.common import check_output_folder
from dualcam.synthetic.scenarios import DEFAULT_SCENARIO, OVERLAP_CLASSES, SCENARIOS, write_overlap_dataset

HELP = "write the class-overlap scenario: images, manifest and feature boxes"
DESCRIPTION = (
    "Write chest-X-ray-like images of three classes with known answers: C1 holds a shared feature "
    "S (a blurred disc) and its own F1 (a ring), C2 holds S and its own F2 (a cross), normal holds neither; "
    "distractors in every class. --scenario salient-shared draws S larger and brighter than F1. Writes "
    "images/<label>/, manifest.csv (uri, label, split 60/20/20) and boxes.csv (uri, x, y, w, h, kind)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder or s3:// prefix")
    parser.add_argument("--n", type=int, default=100, help="images per class (default 100)")
    parser.add_argument("--size", type=int, default=96, help="side in pixels (default 96)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--scenario", choices=tuple(SCENARIOS), default=DEFAULT_SCENARIO,
                        help="overlap: S a faint disc, dimmer than F1 and F2; salient-shared: S larger and brighter "
                        "than F1 (default %(default)s)")


def run(*, out: str, n: int, size: int, seed: int, scenario: str) -> int:
    check_output_folder(out, "--out")
    data = write_overlap_dataset(out, n, size, seed, scenario)
    print(f"wrote {data.images} synthetic {size} px images of the {data.scenario} scenario ({n} each of "
          f"{', '.join(OVERLAP_CLASSES)}) under {out}; manifest {data.manifest}, boxes {data.boxes}")
    return 0
