"""``dualcam synth``: write the class-overlap scenario (``synthetic.scenarios.write_overlap_dataset``)."""

from __future__ import annotations

import argparse

from dualcam.commands import renamed
from dualcam.commands.common import SCENARIO_RENAMED, add_scenario_data, check_output_folder
from dualcam.synthetic.scenarios import DEFAULT_SCENARIO, OVERLAP_CLASSES, SCENARIOS, write_overlap_dataset

HELP = "write the class-overlap scenario: images, manifest and feature boxes"
DESCRIPTION = (
    "Write chest-X-ray-like images of three classes with known answers: C1 holds a shared feature "
    "S (a blurred disc) and its own F1 (a ring), C2 holds S and its own F2 (a cross), normal holds neither; "
    "distractors in every class. --scenario salient-shared draws S larger and brighter than F1. Writes "
    "images/<label>/, manifest.csv (uri, label, split 60/20/20) and boxes.csv (uri, x, y, w, h, kind)."
)
RENAMED = {**renamed.OUT, **SCENARIO_RENAMED}
EXITS = {0: "", 2: ""}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="output folder or s3:// prefix")
    add_scenario_data(parser, 100)
    parser.add_argument("--scenario", choices=tuple(SCENARIOS), default=DEFAULT_SCENARIO,
                        help="overlap: S a faint disc, dimmer than F1 and F2; salient-shared: S larger and brighter "
                        "than F1 (default %(default)s)")


def run(*, output: str, per_class: int, image_side: int, seed: int, scenario: str) -> int:
    check_output_folder(output, "--output")
    data = write_overlap_dataset(output, per_class, image_side, seed, scenario)
    print(f"wrote {data.images} synthetic {image_side} px images of the {data.scenario} scenario ({per_class} each "
          f"of {', '.join(OVERLAP_CLASSES)}) under {output}; manifest {data.manifest}, boxes {data.boxes}")
    return 0
