"""``make precision``: the error each precision causes against float32, the precision table of docs/operations/gpus.md.

Both experts score the same model inputs (``imaging.model_input`` of each file, made once) in
every precision on one device; each run's raw CAMs are compared with the float32 run's by
``numerics.deviation``: CAM1's max error relative to its max, the heatmap's max error relative to
its max at alpha 5 and 50 (median over images, and the worst image), and the share of images
whose heatmap peak moved to another cell. On CPU the GPU's arithmetic is emulated: fp16 and bf16
by torch's CPU autocast (the same casts around each convolution as on CUDA, other kernels), and
tf32 (which torch's CPU kernels do not have) by rounding every convolution's and linear layer's
inputs and weights to TF32's 10 mantissa bits, as tensor cores do, then computing in float32.
``make gpu-check`` prints the same table measured on CUDA.

``python -m dualcam.bench.precision_table --help``; no Ray.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dualcam.bench.fixtures import random_experts
from dualcam.io.checkpoints import load_meta, resolve_expert
from dualcam.io.imaging import IMAGE_SUFFIXES, model_input
from dualcam.maps.numerics import DEFAULT_PRECISION, PRECISIONS, deviation
from dualcam.scoring.scorers import DualScorer

ALPHAS = (5.0, 50.0)


def measure(
    experts: tuple[str, str], files: Sequence[str | Path], device: str = "cpu",
    precisions: Sequence[str] = PRECISIONS, batch_size: int = 16, alphas: Sequence[float] = ALPHAS,
) -> dict[str, dict[str, np.ndarray]]:
    """Per precision, ``numerics.deviation`` of its maps from float32's on ``files``: per-image arrays."""
    scorers = {p: DualScorer(*experts, device=device, precision=p) for p in {DEFAULT_PRECISION, *precisions}}
    if "tf32" in scorers and scorers["tf32"].device.type == "cpu":
        for expert in scorers["tf32"].experts:
            emulate_tf32(expert.model)
    meta = scorers[DEFAULT_PRECISION].meta
    inputs = torch.stack([model_input(Path(f).read_bytes(), str(f), meta)[0] for f in files])

    def maps(scorer: DualScorer) -> dict[str, np.ndarray]:
        parts = [scorer.score(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
        return {name: np.concatenate([part[name] for part in parts]) for name in ("cam1", "cam2")}

    reference = maps(scorers[DEFAULT_PRECISION])
    return {p: deviation(reference, maps(scorers[p]) if p != DEFAULT_PRECISION else reference, alphas)
            for p in precisions}


def emulate_tf32(model: nn.Module) -> None:
    """Round the weights and, at every call, the inputs of ``model``'s convolutions and linear layers
    to TF32 (to nearest, ties to even), in place: what TF32 tensor cores compute, on a CPU."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.weight.data = _to_tf32(module.weight.data)
            module.register_forward_pre_hook(lambda _, args: (_to_tf32(args[0]), *args[1:]))


def _to_tf32(t: torch.Tensor) -> torch.Tensor:
    """float32 values rounded to 10 mantissa bits (TF32), still float32; finite inputs."""
    bits = t.float().contiguous().view(torch.int32)
    bits = (bits + 0xFFF + ((bits >> 13) & 1)) & ~0x1FFF
    return bits.view(torch.float32)


def table(deviations: dict[str, dict[str, np.ndarray]], alphas: Sequence[float] = ALPHAS, what: str = "precision",
          ) -> str:
    """The table (Markdown) of ``measure``'s output in docs/operations/gpus.md, a row per ``what`` compared with
    float32's maps."""
    heads = [f"heatmap max error / its max, alpha {a:g}: median (worst image)" for a in alphas]
    lines = [f"| {what} | CAM1 max error / its max (median) | " + " | ".join(heads)
             + " | heatmap peak in another cell |", "|---" * (len(alphas) + 3) + "|"]
    for precision, d in deviations.items():
        cells = [f"{np.median(d[f'heatmap {a:g}']):.2%} ({d[f'heatmap {a:g}'].max():.2%})" for a in alphas]
        lines.append(f"| {precision} | {np.median(d['cam1']):.3%} | " + " | ".join(cells)
                     + f" | {d['peak moved'].mean():.1%} of {len(d['peak moved'])} images |")
    return "\n".join(lines)


def sample_files(folder: Path, n: int) -> list[Path]:
    """The first ``n`` image files of ``folder``, by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualcam.bench.precision_table",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--expert1", help="expert 1 (default: a randomly initialized --arch, seed --seed)")
    parser.add_argument("--expert2", help="expert 2 (default: a randomly initialized --arch, seed --seed + 1)")
    parser.add_argument("--arch", default="resnet18", help="architecture of the random experts (default resnet18)")
    parser.add_argument("--size", type=int, default=224, help="input size of the random experts (default 224)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random experts (default 0)")
    parser.add_argument("--images", type=Path,
                        default=Path(os.environ.get("DUALCAM_XRAY_SAMPLES", "../shared/data/xray")) / "images",
                        help="folder of X-rays (default ../shared/data/xray/images)")
    parser.add_argument("--n", type=int, default=48, help="images: the first N of --images by name (default 48)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu: autocast emulation)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="default: all")
    args = parser.parse_args(argv)
    if (args.expert1 is None) != (args.expert2 is None):
        parser.error("give both --expert1 and --expert2, or neither")
    files = sample_files(args.images, args.n)
    if not files:
        parser.error(f"no images in {args.images}")
    with tempfile.TemporaryDirectory(prefix="dualcam-precision-") as tmp:
        experts = (args.expert1, args.expert2) if args.expert1 else random_experts(tmp, args.arch, args.size, args.seed)
        start = time.process_time()
        deviations = measure(experts, files, args.device, args.precisions.split(","))
        size = load_meta(resolve_expert(experts[0])).input_size
    pair = (f"{experts[0]} and {experts[1]}" if args.expert1
            else f"random {args.arch} pair (seeds {args.seed}, {args.seed + 1})")
    print(f"{len(files)} images of {args.images}; {pair} at {size} px; {args.device}; "
          f"{time.process_time() - start:.0f} CPU s")
    print(table(deviations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
