"""``make bench``: images/s of each layer of scoring, measured in one run so the ratios mean something.

(a) the bare forward of both experts (the limit), (b) the scorer class alone on loaded batches,
(c) the Ray pipeline from local files to Parquet, (d) the same from S3 (moto's server on
127.0.0.1). Pipeline rates are steady-state: rows after the first batch over the time between
the first and last batch's ``scored_at``, so Ray and actor start-up (reported separately, as wall
time) do not count. Peak memory is the largest resident set of this process and its children
(the local Ray) seen while a stage ran. (a) and (b) run ``--repeat`` times, alternated, and
the best of each counts.

Run ``python -m dualcam.benchmark --help``; Ray and moto are needed only for (c) and (d).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import torch

from dualcam import storage
from dualcam.experts import META_FILE, ExpertMeta, build_expert, save_expert
from dualcam.pipeline import score_archive
from dualcam.raycluster import connect
from dualcam.results import read_results, to_numpy
from dualcam.scoring import DualScorer, load_images
from dualcam.synthetic import write_synthetic_xrays


def tree_rss(root: int) -> int:
    """Resident bytes of process ``root`` and all its descendants, from /proc (Linux)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # processes come and go while we look
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo, page = 0, [root], os.sysconf("SC_PAGE_SIZE")
    while todo:
        pid = todo.pop()
        todo += parents.get(pid, [])
        with contextlib.suppress(OSError):  # it may have ended meanwhile
            total += int((Path("/proc") / str(pid) / "statm").read_text().split()[1]) * page
    return total


class PeakMemory:
    """Samples the resident memory of this process tree in the background; ``peak`` in bytes."""

    def __init__(self, every: float = 0.1):
        self.every, self.peak = every, 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            time.sleep(self.every)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def timed(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(images/s, peak bytes) of ``fn``, which processes ``n`` images."""
    with PeakMemory() as memory:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return n / seconds, memory.peak


def bare_forward(scorer: DualScorer, batches: list[torch.Tensor]) -> None:
    """Both experts' plain forward, as in the scorer (same device, layout, autocast): nothing else."""
    autocast = torch.autocast(scorer.device.type, dtype=torch.bfloat16, enabled=scorer.device.type == "cuda")
    with torch.inference_mode(), autocast:
        for x in batches:
            x = x.to(scorer.device).contiguous(memory_format=torch.channels_last)
            scorer.c1.model(x)
            scorer.c2.model(x)
    if scorer.device.type == "cuda":
        torch.cuda.synchronize()


def steady_rate(output: str, batch_size: int) -> float:
    """Rows per second between the first and the last batch of a pipeline run (start-up excluded)."""
    times = read_results(output, ["scored_at"]).column("scored_at")
    first, last = pc.min(times).value, pc.max(times).value  # microseconds
    return (len(times) - batch_size) / max(1e-6, (last - first) / 1e6)


def run(args: argparse.Namespace) -> dict:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dualcam-bench-"))
    torch.manual_seed(0)
    experts = []
    for name in ("c1", "c2"):
        uri = str(work / "experts" / name)
        if not storage.exists(storage.join(uri, META_FILE)):
            save_expert(build_expert(args.arch), uri, ExpertMeta(arch=args.arch, class_name=name, input_size=args.size))
        experts.append(uri)
    images = [str(p) for p in write_synthetic_xrays(work / "images", args.n, size=args.size)]
    scorer = DualScorer(*experts, device=args.device)
    table = pa.table({"uri": images})
    loaded = [load_images(table.slice(i, args.batch_size), scorer.meta) for i in range(0, args.n, args.batch_size)]
    batches = [torch.tensor(to_numpy(b.column("pixels"))) for b in loaded]
    report = {"arch": args.arch, "images": args.n, "size": args.size, "batch_size": args.batch_size,
              "device": str(scorer.device), "torch_threads": torch.get_num_threads()}

    bare_forward(scorer, batches[:1])  # warm-up: first-call allocations and kernel selection
    runs = {"a": [], "b": []}
    for _ in range(args.repeat):  # alternated, best of each: this machine's noise is a few percent
        runs["a"].append(timed(lambda: bare_forward(scorer, batches), args.n))
        runs["b"].append(timed(lambda: [scorer(b) for b in loaded], args.n))
    report["a_bare_forward"], report["a_bare_forward_peak_bytes"] = max(runs["a"])
    report["b_scorer"], report["b_scorer_peak_bytes"] = max(runs["b"])
    report["b_over_a"] = report["b_scorer"] / report["a_bare_forward"]
    if args.no_ray:
        return report

    sources = {"c_local": str(work / "images")}
    if not args.no_s3:
        sources["d_s3"] = _stage_on_moto(images)
    connect()
    for key, source in sources.items():
        output = str(work / f"out-{key}-{time.time_ns()}")
        with PeakMemory() as memory:
            summary = score_archive(*experts, source, output, batch_size=args.batch_size, progress=False)
        report[key] = steady_rate(output, args.batch_size)
        report[f"{key}_wall"] = summary.images_per_second
        report[f"{key}_peak_bytes"] = memory.peak
        report[f"{key}_over_a"] = report[key] / report["a_bare_forward"]
    return report


def _stage_on_moto(images: list[str]) -> str:
    """Start moto's S3 server on loopback, point the AWS settings at it and upload the images."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    ThreadedMotoServer(ip_address="127.0.0.1", port=port).start()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    storage.s3_client.cache_clear()
    storage.s3_client().create_bucket(Bucket="bench")
    for path in images:
        storage.write_bytes(f"s3://bench/images/{Path(path).name}", Path(path).read_bytes())
    return "s3://bench/images"


def print_report(report: dict) -> None:
    print(f"dualcam bench: {report['images']} images, {report['arch']} pair at {report['size']} px, "
          f"batch {report['batch_size']}, {report['device']}, {report['torch_threads']} torch threads")
    stages = [("a_bare_forward", "(a) bare forward of both experts"), ("b_scorer", "(b) scorer class alone"),
              ("c_local", "(c) pipeline, local files -> Parquet"), ("d_s3", "(d) pipeline, S3 (moto) -> Parquet")]
    for key, label in stages:
        if key not in report:
            continue
        line = f"  {label:40s} {report[key]:7.2f} images/s   peak {report[f'{key}_peak_bytes'] / 2**30:5.2f} GiB"
        if f"{key}_wall" in report:
            line += f"   (wall incl. start-up: {report[f'{key}_wall']:.2f} images/s)"
        print(line)
    for key, label in (("b_over_a", "b/a"), ("c_local_over_a", "c/a"), ("d_s3_over_a", "d/a")):
        if key in report:
            print(f"  {label} = {report[key]:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualcam.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=320, help="generated images (default 320)")
    parser.add_argument("--size", type=int, default=224, help="expert input size = image size (default 224)")
    parser.add_argument("--arch", default="resnet18", help="expert architecture (default resnet18)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of (a) and (b), alternated; the best counts (default 2)")
    parser.add_argument("--device", default=None, help="torch device for (a) and (b) (default: cuda if available)")
    parser.add_argument("--no-ray", action="store_true", help="only (a) and (b): for machines without Ray")
    parser.add_argument("--no-s3", action="store_true", help="skip (d)")
    parser.add_argument("--workdir", default=None, help="where images, experts and outputs go (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    report = run(args)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
