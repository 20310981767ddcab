"""``dualcam explain``: p1, p2 and the heatmap's peak per image, and an ADDK overlay PNG each (no Ray)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from dualcam import regions
from dualcam.cam import upsample
from dualcam.commands.common import add_expert_pair, decoded, input_files
from dualcam.drawing import overlay
from dualcam.imaging import model_input
from dualcam.options import add_alpha, add_precision
from dualcam.scoring import DualScorer

HELP = "score a few images with both experts and write ADDK overlays"
DESCRIPTION = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_expert_pair(parser)
    add_alpha(parser)
    parser.add_argument("--out", default="explain", help="folder for the overlay PNGs (default ./explain)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_precision(parser)
    parser.add_argument("inputs", nargs="+", help="files, folders or s3:// prefixes")


def run(
    *, c1: str, c2: str, alpha: float, out: str, device: str | None, precision: str, inputs: Sequence[str],
) -> int:
    scorer = DualScorer(c1, c2, alpha=alpha, device=device, precision=precision)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    files = input_files(inputs)
    print(f"expert 1: {scorer.c1.meta.class_name} {scorer.c1.meta.version}; expert 2: {scorer.c2.meta.class_name} "
          f"{scorer.c2.meta.version}; alpha {scorer.alpha}; device {scorer.device}, {scorer.precision}")
    print(f"{'p1':>6} {'p2':>6}  {'peak (x, y)':>12}  file")
    start, failed = time.perf_counter(), 0
    for uri, data, image, err in decoded(files):
        if err:
            failed += 1
            print(f"{'-':>6} {'-':>6}  {'-':>12}  {err}")
            continue
        x, _ = model_input(data, uri, scorer.meta)  # what `dualcam score` gives the model; the overlay: the whole image
        result = scorer.score(x[None])
        heat = upsample(result["heatmap"][0], image.shape[:2])
        x, y = (round(v) for v in regions.peak(torch.from_numpy(heat)[None])[0].tolist())
        overlay(image, heat).save(folder / f"{Path(uri).stem}.addk.png")
        print(f"{result['p1'][0]:6.3f} {result['p2'][0]:6.3f}  {f'({x}, {y})':>12}  {uri}")
    elapsed = time.perf_counter() - start
    print(f"{len(files) - failed} explained, {failed} failed, in {elapsed:.1f} s; overlays in {folder}/")
    return 1 if failed and failed == len(files) else 0
