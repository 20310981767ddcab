"""What decoding JPEGs in libjpeg's draft mode would change, against the full-scale decoding dualcam does.

``imaging.model_input`` decodes every JPEG at full scale on every device, so that a CPU run and a GPU run
(nvJPEG has no DCT scaling) get the same inputs. libjpeg can instead decode at 1/2, 1/4 or 1/8 scale
(Pillow's ``draft``), which costs less on a CPU. Here each sample JPEG becomes a model input both ways (the
draft one: ``draft`` to the smallest scale that keeps both sides at least ``REDUCE_MARGIN`` times the
model's resized side, as ``model_input`` keeps its box-reduced images, then the same ``preprocess``); both
experts score both, and ``numerics.deviation`` says how far the draft maps are from the full ones (the
precision table's measures), beside each path's CPU time per image, on one thread.

``python -m dualcam.bench.draft_decoding --expert1 .demo/experts/C1 --expert2 .demo/experts/C2``; no Ray.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dualcam.bench.precision_table import ALPHAS, table
from dualcam.io.checkpoints import ExpertMeta
from dualcam.io.imaging import REDUCE_MARGIN, model_input, preprocess
from dualcam.maps.numerics import deviation
from dualcam.scoring.scorers import DualScorer


def draft_input(data: bytes, meta: ExpertMeta) -> torch.Tensor:
    """The model input of a JPEG decoded at the smallest draft scale that keeps ``REDUCE_MARGIN`` x the resized side."""
    im = Image.open(io.BytesIO(data))
    size = (im.height, im.width)
    side = REDUCE_MARGIN * meta.resized_side
    mode = "L" if meta.color_mode == "L" else "RGB"
    im.draft(mode, (side, side))
    return preprocess(np.asarray(im.convert(mode), dtype=np.float32) / 255.0, meta, size=size)


def cpu_ms(make: Callable[[bytes], torch.Tensor], files: Sequence[bytes]) -> tuple[torch.Tensor, float]:
    """The inputs ``make`` gives for ``files``, stacked, and its CPU milliseconds per file."""
    start = time.process_time()
    inputs = torch.stack([make(data) for data in files])
    return inputs, (time.process_time() - start) * 1000 / len(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualcam.bench.draft_decoding",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--expert1", required=True, help="expert 1 (e.g. make demo's .demo/experts/C1)")
    parser.add_argument("--expert2", required=True, help="expert 2 (e.g. make demo's .demo/experts/C2)")
    parser.add_argument("--images", type=Path,
                        default=Path(os.environ.get("DUALCAM_XRAY_SAMPLES", "../shared/data/xray")) / "images",
                        help="folder of X-rays; its JPEGs are used (default ../shared/data/xray/images)")
    args = parser.parse_args(argv)
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not paths:
        parser.error(f"no JPEGs in {args.images}")
    torch.set_num_threads(1)
    scorer = DualScorer(args.expert1, args.expert2, device="cpu")
    files = [p.read_bytes() for p in paths]
    full, full_ms = cpu_ms(lambda data: model_input(data, "x.jpg", scorer.meta)[0], files)
    draft, draft_ms = cpu_ms(lambda data: draft_input(data, scorer.meta), files)

    def maps(inputs: torch.Tensor) -> dict[str, np.ndarray]:
        parts = [scorer.score(inputs[i:i + 16]) for i in range(0, len(inputs), 16)]
        return {name: np.concatenate([part[name] for part in parts]) for name in ("cam1", "cam2")}

    pixels = (draft - full).abs().amax(dim=(1, 2, 3))
    print(f"{len(files)} JPEGs of {args.images} ({sum(map(len, files)) / len(files) / 1e6:.2f} MB mean); "
          f"{args.expert1} and {args.expert2} at {scorer.meta.input_size} px; CPU, one thread")
    print(f"model input, CPU ms per image: full-scale decode {full_ms:.1f}, draft {draft_ms:.1f} "
          f"({full_ms / draft_ms:.2f}x); largest input difference (normalized units): median "
          f"{pixels.median():.3f}, worst {pixels.max():.3f}")
    print(table({"draft": deviation(maps(full), maps(draft), ALPHAS)}, ALPHAS, "decoding against full scale"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
