"""``make gpu-check``, after the GPU tests: what this machine's GPU does with dualcam (docs/operations/gpus.md).

1. the bare forward of a ResNet-18, -50 and -152 pair at 224 px in fp32, fp16 and bf16: image
   pairs/s and peak GPU memory (``speed.bare_forward``, randomly initialized experts);
2. batched JPEG decoding on the GPU (``device_decode``) of real-size X-rays, to model inputs: images/s;
3. the Ray pipeline end to end from local real-size JPEGs (steady-state images/s, as ``make bench``),
   and its ratio to (1) for that pair and precision;
4. the largest heatmap difference between the GPU and the CPU at alpha 50 (``numerics.deviation``,
   max |d| / max): on the same model inputs (the forward alone), and from the same files (each
   device decoding them its own way).

Without CUDA it says so and exits 0. ``python -m dualcam.bench.gpu_check --help``.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dualcam.bench.fixtures import random_experts, real_size_xray
from dualcam.bench.speed import bare_forward, steady_part
from dualcam.io.checkpoints import ExpertMeta
from dualcam.io.device_decode import DeviceDecoder
from dualcam.io.imaging import model_input
from dualcam.io.results import to_numpy
from dualcam.maps.numerics import DEFAULT_PRECISION, PRECISIONS, deviation
from dualcam.scoring.scorers import DualScorer, score_images

ARCHS = ("resnet18", "resnet50", "resnet152")
FORWARD_PRECISIONS = ("fp32", "fp16", "bf16")


def forward_rates(root: Path, batch_size: int, seconds: float) -> dict[tuple[str, str], tuple[float, float]]:
    """(arch, precision) -> (image pairs/s, peak GPU GiB) of the bare forward at 224 px."""
    out = {}
    x = torch.randn(batch_size, 3, 224, 224, device="cuda")  # on the GPU already: the forward alone is timed
    for arch in ARCHS:
        experts = random_experts(root / arch, arch)
        for precision in FORWARD_PRECISIONS:
            scorer = DualScorer(*experts, device="cuda", precision=precision)
            bare_forward(scorer, [x] * 3)  # warm-up: cuDNN's algorithm choice, allocations
            torch.cuda.reset_peak_memory_stats()
            batches, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                bare_forward(scorer, [x] * 5)
                batches += 5
            out[arch, precision] = (batches * batch_size / (time.perf_counter() - start),
                                    torch.cuda.max_memory_allocated() / 2**30)
            del scorer
            torch.cuda.empty_cache()
    return out


def real_size_jpegs(folder: Path, n: int, distinct: int = 8) -> list[Path]:
    """``n`` real-size (2500 x 2048) JPEGs at quality 90 in ``folder``: ``distinct`` images, copied."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for _ in range(distinct):
        buf = io.BytesIO()
        Image.fromarray(np.round(real_size_xray(rng) * 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        files.append(buf.getvalue())
    paths = [folder / f"xray-{i:05d}.jpg" for i in range(n)]
    for i, path in enumerate(paths):
        path.write_bytes(files[i % distinct])
    return paths


def decode_rate(files: list[Path], meta: ExpertMeta, batch_size: int, seconds: float) -> float:
    """Images/s of ``DeviceDecoder`` (decode, box average, resize) on batches of ``files``' bytes."""
    decoder = DeviceDecoder(meta, "cuda")
    data = [p.read_bytes() for p in files[:batch_size]]
    decoder(data)  # warm-up
    batches, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        decoder(data)
        batches += 1
    torch.cuda.synchronize()
    return batches * len(data) / (time.perf_counter() - start)


def pipeline_rate(experts: tuple[str, str], folder: Path, output: Path, batch_size: int, precision: str) -> float:
    """Steady-state images/s of ``score_archive`` from ``folder`` (Ray started here, on this machine)."""
    from dualcam.distributed.pipeline import score_archive

    score_archive(*experts, str(folder), str(output), batch_size=batch_size, precision=precision, progress=False)
    start, end, rows = steady_part(str(output))
    return rows / (end - start)


def gpu_against_cpu(experts: tuple[str, str], files: list[Path], alpha: float = 50.0) -> tuple[float, float]:
    """Largest heatmap max |d| / max at ``alpha``, GPU against CPU, both fp32: on the same model
    inputs, and from the same files (the GPU decoding the JPEGs, the CPU with ``model_input``)."""
    gpu, cpu = (DualScorer(*experts, alpha=alpha, device=d) for d in ("cuda", "cpu"))
    x = torch.stack([model_input(p.read_bytes(), str(p), cpu.meta)[0] for p in files])
    same_inputs = deviation(cpu.score(x), gpu.score(x), (alpha,))[f"heatmap {alpha:g}"].max()
    uris = [str(p) for p in files]
    runs = [score_images(s, uris, batch_size=8, device_jpeg=s is gpu) for s in (cpu, gpu)]
    maps = [{k: to_numpy(t.column(k)) for k in ("cam1", "cam2")} for t in runs]
    return float(same_inputs), float(deviation(maps[0], maps[1], (alpha,))[f"heatmap {alpha:g}"].max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualcam.bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=ARCHS, default="resnet152", help="pair of (3) and (4) (default resnet152)")
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                        help=f"precision of (3) (default {DEFAULT_PRECISION})")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass and decode batch (64)")
    parser.add_argument("--images", type=int, default=4096, help="real-size JPEGs for (3) (default 4096)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per forward and decode rate (default 3)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: skipped: no CUDA device (torch.cuda.is_available() is False)")
        return 0
    print(f"dualcam gpu-check on {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"batch {args.batch_size}", flush=True)
    with tempfile.TemporaryDirectory(prefix="dualcam-gpu-check-") as tmp:
        root = Path(tmp)
        rates = forward_rates(root / "experts", args.batch_size, args.seconds)
        print("(1) bare forward of the pair at 224 px: image pairs/s (peak GPU memory)")
        for arch in ARCHS:
            cells = "  ".join(f"{p} {rates[arch, p][0]:8,.0f} ({rates[arch, p][1]:.1f} GiB)"
                              for p in FORWARD_PRECISIONS)
            print(f"    {arch:<10} {cells}", flush=True)
        files = real_size_jpegs(root / "images", args.images)
        experts = (str(root / "experts" / args.arch / "c1"), str(root / "experts" / args.arch / "c2"))
        meta = ExpertMeta(arch=args.arch, class_name="x", input_size=224)
        print(f"(2) GPU JPEG decode of 2500 x 2048 X-rays to model inputs: "
              f"{decode_rate(files, meta, args.batch_size, args.seconds):,.0f} images/s", flush=True)
        pipeline = pipeline_rate(experts, root / "images", root / "out", args.batch_size, args.precision)
        forward = rates.get((args.arch, args.precision)) or (float("nan"),)
        print(f"(3) pipeline, {args.images} local 2500 x 2048 JPEGs -> Parquet, {args.arch} pair, {args.precision}: "
              f"{pipeline:,.0f} images/s, {pipeline / forward[0]:.2f} of (1)", flush=True)
        same, decoded = gpu_against_cpu(experts, files[:16])
        print(f"(4) GPU against CPU, fp32, {args.arch} pair, 16 images, heatmap max |d| / max at alpha 50: "
              f"{same:.1e} on the same inputs, {decoded:.1e} from the same files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
