"""``dualcam explain``: p1, p2 and the heatmap's peak per image, and an ADDK overlay PNG each (no Ray)."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import torch

from dualcam.commands import renamed
from dualcam.commands.common import add_expert_pair, check_output_folder, decoded, input_files
from dualcam.io.imaging import image_window, model_input
from dualcam.io.inputs import skipped_files
from dualcam.maps import regions
from dualcam.maps.cam import upsample
from dualcam.reports.drawing import panel_row
from dualcam.scoring.archive_options import add_alpha, add_precision
from dualcam.scoring.scorers import DualScorer

HELP = "score a few images with both experts and write ADDK overlays"
DESCRIPTION = (
    "Score each image with both experts on this machine (no Ray) and print p1, p2 and the peak of the ADDK "
    "heatmap in image pixels; write the heatmap over the image to OUTPUT/<name>.addk.png (<name>: the file's stem, "
    "or where stems repeat its path below the folder the files share, / as __), titled with alpha, p1 and "
    "p2, its colour scale (that map's own min to max) below it and the peak ringed in green. Folders and s3:// "
    "prefixes are searched for image names, as dualcam score does; other files there are counted as skipped."
)
RENAMED = {**renamed.EXPERT_PAIR, **renamed.OUT}
EXITS = {0: "every image explained", 1: "an image could not be read or decoded (each is named)",
         2: "or no image files found"}
OVERLAY_SIDE = 640
"""Longer side of an overlay in pixels: X-rays of any size give overlays whose titles can be read."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_expert_pair(parser)
    add_alpha(parser)
    parser.add_argument("--output", default="explain", help="folder for the overlay PNGs (default ./explain)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_precision(parser)
    parser.add_argument("inputs", nargs="+", help="files, folders or s3:// prefixes")


def overlay_names(files: Sequence[str]) -> dict[str, str]:
    """A distinct overlay name per file: its stem; where stems repeat (``p1/IM0001.dcm``, ``p2/IM0001.dcm``),
    its path below the folder the files share, ``/`` as ``__`` (``p1__IM0001``), so none overwrites another."""
    stems = Counter(PurePosixPath(f).stem for f in files)
    parts = [f.split("/") for f in files]
    shared = 0
    while all(len(p) > shared + 1 and p[shared] == parts[0][shared] for p in parts):
        shared += 1
    names = {f: PurePosixPath(f).stem if stems[PurePosixPath(f).stem] == 1
             else "__".join([*p[shared:-1], PurePosixPath(p[-1]).stem]) for f, p in zip(files, parts)}
    taken = Counter(names.values())
    return {f: name if taken[name] == 1 else f"{name}-{i}" for i, (f, name) in enumerate(names.items())}


def run(
    *, expert1: str, expert2: str, alpha: float, output: str, device: str | None, precision: str, inputs: Sequence[str],
) -> int:
    check_output_folder(output, "--output")
    files, skipped = input_files(inputs)
    scorer = DualScorer(expert1, expert2, alpha=alpha, device=device, precision=precision)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"expert 1: {scorer.c1.meta.class_name} {scorer.c1.meta.version}; expert 2: {scorer.c2.meta.class_name} "
          f"{scorer.c2.meta.version}; alpha {scorer.alpha:g}; device {scorer.device}, {scorer.precision}")
    print(f"{'p1':>6} {'p2':>6}  {'peak (x, y)':>12}  file")
    start, failed, names = time.perf_counter(), 0, overlay_names(files)
    for uri, data, image, err in decoded(files):
        if err or data is None or image is None:  # no bytes or image only with an error
            failed += 1
            print(f"{'-':>6} {'-':>6}  {'-':>12}  {err}")
            continue
        model_x, _ = model_input(data, uri, scorer.meta)  # what `dualcam score` gives the model
        result = scorer.score(model_x[None])
        p1, p2 = float(result["p1"][0]), float(result["p2"][0])
        top, left, bottom, right = image_window(scorer.meta, *image.shape[:2])  # overlay: what the model saw
        seen = image[top:bottom, left:right]
        heat = upsample(result["heatmap"][0], seen.shape[:2])
        x, y = (round(v) for v in regions.peak(torch.from_numpy(heat)[None])[0].tolist())
        title = f"ADDK(CAM1, CAM2) alpha={scorer.alpha:g}  p1={p1:.3f} p2={p2:.3f}  peak ({x + left}, {y + top})"
        panel_row(seen, [(title, heat)], marks=[(x, y)], side=OVERLAY_SIDE).save(folder / f"{names[uri]}.addk.png")
        print(f"{p1:6.3f} {p2:6.3f}  {f'({x + left}, {y + top})':>12}  {uri}")
    elapsed = time.perf_counter() - start
    skipped_note = f"; {skipped_files(skipped)}" if skipped else ""
    print(f"{len(files) - failed} explained, {failed} failed, in {elapsed:.1f} s; overlays in {folder}/{skipped_note}")
    return 1 if failed else 0
