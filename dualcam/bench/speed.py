"""``make bench``: images/s of each layer of scoring, measured in one run so the ratios mean something.

(a) the bare forward of both experts (the limit), (b) the scorer class alone on loaded batches, and
beside it a pair from one model (two classes of one network: one forward pass per batch),
(c) the Ray pipeline from local files to Parquet, (d) the same from S3 (moto's server on
127.0.0.1), all on generated images of the experts' input size; (g) the pipeline on real-size
12-bit DICOM files (``--copies`` of them), read locally and from a PACS (Orthanc over DICOMweb on
127.0.0.1, when installed); then real sizes: (e) loading
alone (read, decode, preprocess: ``model_input``), in CPU milliseconds per image on one core,
beside the exact path it replaced (the whole image decoded to float32, then resized), for
generated 2500 x 2048 files (8-bit JPEG, 16-bit PNG, 12-bit DICOM) and the sample X-rays when
present; (f) the pipeline on those files, against what (a) and (e) say it can do. (b) and (e)
give the rates ``dualcam score --dry-run --rates`` plans a run from (``--json`` writes them).

Pipeline rates are steady-state: the rows scored between the times when a tenth and nine tenths
of them were (``scored_at``), over that time, so neither Ray's and the actors' start-up (reported
separately, as wall time) nor the last batches, which leave actors idle, count. Peak memory is the
largest resident set of this process and its children (the local Ray) seen while a stage ran;
their CPU time in the same window is counted too, process by process, and shown for a pipeline
that falls short. (a) and (b) run ``--repeat`` times, alternated, and the best of each
counts.

Run ``python -m dualcam.bench.speed --help``; Ray and moto are needed only for (c), (d), (f) and (g).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import io
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from pydicom.uid import generate_uid

from dualcam.bench import pacs
from dualcam.bench.fixtures import real_size_xray
from dualcam.bench.s3server import MotoServer
from dualcam.distributed.connect import connect
from dualcam.distributed.pipeline import score_archive
from dualcam.io import dicomweb, storage
from dualcam.io.checkpoints import META_FILE, ExpertMeta, build_expert, save_expert
from dualcam.io.imaging import decode_image, model_input, preprocess
from dualcam.io.results import read_results, to_numpy
from dualcam.maps.numerics import DEFAULT_PRECISION, PRECISIONS, computing_in
from dualcam.scoring.scorers import DualScorer, load_images
from dualcam.synthetic.scenarios import write_synthetic_xrays

RATE_GROUPS = ("sample X-rays (PNG, JPEG)", "generated 2500x2048 8-bit JPEG")
"""(e) groups the loading rate of ``rates`` comes from, the first present."""


def write_real_size_inputs(out_dir: str | Path, seed: int = 0) -> list[Path]:
    """One ``real_size_xray`` as an 8-bit JPEG (quality 90), a 16-bit PNG (12-bit values scaled to
    16 bits, as the PNG specification asks) and a 12-bit MONOCHROME2 DICOM (uncompressed, with a
    window), written to ``out_dir``; same seed, same files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image = real_size_xray(np.random.default_rng(seed))
    twelve = np.round(image * 4095).astype(np.uint16)
    paths = [out / "real-size-8bit.jpg", out / "real-size-16bit.png", out / "real-size-12bit.dcm"]
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(paths[0], quality=90)
    Image.fromarray(twelve << 4).save(paths[1])
    paths[2].write_bytes(_dicom_bytes(twelve))
    return paths


def _dicom_bytes(pixels: np.ndarray) -> bytes:
    """A CR DICOM file of 12-bit ``pixels`` (uint16), explicit VR little endian, windowed over its range."""
    import pydicom
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid(entropy_srcs=["dualcam real-size"])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality, (ds.Rows, ds.Columns) = "CR", pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _tree(root: int) -> list[int]:
    """``root`` and all its descendants, from the kernel's per-thread child lists (Linux)."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):  # processes come and go while we look
                todo += [int(child) for child in children.read_text().split()]
    return pids


def _process(pid: int) -> tuple[float, int, str] | None:
    """(CPU seconds so far, resident bytes, a short name) of one process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        args = [arg.decode(errors="replace").strip() for arg in argv if arg.strip()]
        args = args or [Path(f"/proc/{pid}/comm").read_text().strip()]  # a title being rewritten reads empty
    except OSError:
        return None
    if pid == os.getpid():
        name = "driver (this process)"
    elif args and args[0].startswith("ray::"):  # a Ray worker's title: ray::MapWorker(MapBatches(...)).submit
        name = args[0].split("(")[0]
    else:  # a program, or the script it runs
        name = next((Path(arg).name for arg in args if arg.endswith(".py")), Path(args[0]).name if args else "?")
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"), rss, name


class TreeMonitor:
    """Samples this process tree (this process and the local Ray it starts) in the background:
    ``peak`` resident bytes, and CPU seconds spent by each kind of process in a time window."""

    def __init__(self, every: float = 0.5):
        self.every, self.peak = every, 0
        self._samples: list[tuple[float, dict[int, tuple[float, str]]]] = []
        self._stop = threading.Event()

    def __enter__(self) -> TreeMonitor:
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def _sample(self) -> None:
        rss, cpu = 0, {}
        for pid in _tree(os.getpid()):
            if (seen := _process(pid)) is not None:
                cpu[pid] = seen[0], seen[2]
                rss += seen[1]
        self._samples.append((time.time(), cpu))
        self.peak = max(self.peak, rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def cpu_seconds(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds by process name between the samples nearest to ``start`` and ``end`` (Unix
        times; processes that started meanwhile count from zero, those that ended are left out), most first."""
        (_, first), (_, last) = (min(self._samples, key=lambda s: abs(s[0] - t)) for t in (start, end))
        spent: dict[str, float] = {}
        for pid, (cpu, name) in last.items():
            spent[name] = spent.get(name, 0.0) + cpu - first.get(pid, (0.0, name))[0]
        return dict(sorted(spent.items(), key=lambda item: -item[1]))


def timed(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(images/s, peak bytes) of ``fn``, which processes ``n`` images."""
    with TreeMonitor() as memory:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return n / seconds, memory.peak


def bare_forward(scorer: DualScorer, batches: list[torch.Tensor]) -> None:
    """Both experts' plain forward, as in the scorer (same device, layout, precision): nothing else."""
    with torch.inference_mode(), computing_in(scorer.precision, scorer.device):
        for x in batches:
            x = x.to(scorer.device).contiguous(memory_format=torch.channels_last)
            scorer.c1.model(x)
            scorer.c2.model(x)
    if scorer.device.type == "cuda":
        torch.cuda.synchronize()


STEADY = (0.1, 0.9)
"""The steady part of a pipeline run: from when a tenth of its rows were scored to when nine tenths
were. Start-up (Ray, actors, the experts) comes before it, and the drain after it, where the last
batches leave actors idle; an archive of millions of images is all steady part."""


def steady_window(scored_at: np.ndarray) -> tuple[float, float, int]:
    """(start, end) of the steady part (``STEADY``) of a run whose rows were scored at ``scored_at``
    (seconds; each batch's rows share one time), and the rows scored after start, up to end."""
    times = np.sort(scored_at)
    start, end = (times[int(q * (len(times) - 1))] for q in STEADY)
    if end <= start:
        raise ValueError(f"{len(times)} rows in too few batches for a steady part: score more images")
    return float(start), float(end), int(np.sum((times > start) & (times <= end)))


def steady_part(output: str) -> tuple[float, float, int]:
    """``steady_window`` of the pipeline run that wrote ``output``."""
    return steady_window(read_results(output, ["scored_at"]).column("scored_at").to_numpy().astype("int64") / 1e6)


def pipeline_bounds(a: float, load_ms: float, cpus: float, gpu: bool) -> tuple[float, float]:
    """(the most images/s a pipeline can score, min(a, cores x 1000 / load_ms)), given the bare forward's
    rate ``a`` and ``load_ms`` of CPU per image to load it.

    With a GPU, the loaders have the cores the (one) actor leaves, and the slower side sets the pace:
    min(a, loading). On CPUs, loaders and model take turns on the same cores: every image costs them
    cpus / a core-seconds of forward and load_ms of loading, so no split of the cores beats
    1 / (1/a + load_ms / 1000 / cpus), below min(a, loading) whenever loading costs anything.
    """
    loading = cpus * 1000 / load_ms
    bound = min(a, (cpus - 1) * 1000 / load_ms) if gpu else 1 / (1 / a + 1 / loading)
    return bound, min(a, loading)


def _experts(work: Path, arch: str, size: int) -> tuple[str, str]:
    """The pair the bench scores with: two untrained ``arch`` experts (seed 0), written once per work folder."""
    torch.manual_seed(0)
    uris = []
    for name in ("c1", "c2"):
        uri = str(work / "experts" / name)
        if not storage.exists(storage.join(uri, META_FILE)):
            save_expert(build_expert(arch), uri, ExpertMeta(arch=arch, class_name=name, input_size=size))
        uris.append(uri)
    return uris[0], uris[1]


def _one_model_experts(work: Path, arch: str, size: int) -> tuple[str, str]:
    """A pair from one model: outputs 1 and 0 of one untrained ``arch`` (seed 0), two experts of the same weights."""
    torch.manual_seed(0)
    model, uris = build_expert(arch), []
    for name, index in (("one-c1", 1), ("one-c2", 0)):
        uri = str(work / "experts" / name)
        if not storage.exists(storage.join(uri, META_FILE)):
            save_expert(model, uri, ExpertMeta(arch=arch, class_name=name, input_size=size, class_index=index))
        uris.append(uri)
    return uris[0], uris[1]


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dualcam-bench-"))
    c1, c2 = _experts(work, args.arch, args.size)
    images = [str(p) for p in write_synthetic_xrays(work / "images", args.n, size=args.size)]
    scorer = DualScorer(c1, c2, device=args.device, precision=args.precision)
    table = pa.table({"uri": images})
    loaded = [load_images(table.slice(i, args.batch_size), scorer.meta) for i in range(0, args.n, args.batch_size)]
    batches = [torch.tensor(to_numpy(b.column("pixels"))) for b in loaded]
    report = {"arch": args.arch, "images": args.n, "size": args.size, "batch_size": args.batch_size,
              "device": str(scorer.device), "precision": args.precision, "torch_threads": torch.get_num_threads()}

    one_model = DualScorer(*_one_model_experts(work, args.arch, args.size), device=args.device,
                           precision=args.precision)
    bare_forward(scorer, batches[:1])  # warm-up: first-call allocations and kernel selection
    runs: dict[str, list[tuple[float, float]]] = {"a": [], "b": [], "b_one": []}
    for _ in range(args.repeat):  # alternated, best of each: this machine's noise is a few percent
        runs["a"].append(timed(lambda: bare_forward(scorer, batches), args.n))
        runs["b"].append(timed(lambda: [scorer(b) for b in loaded], args.n))
        runs["b_one"].append(timed(lambda: [one_model(b) for b in loaded], args.n))
    report["a_bare_forward"], report["a_bare_forward_peak_bytes"] = max(runs["a"])
    report["b_scorer"], report["b_scorer_peak_bytes"] = max(runs["b"])
    report["b_one_model"], report["b_one_model_peak_bytes"] = max(runs["b_one"])
    report["b_over_a"] = report["b_scorer"] / report["a_bare_forward"]
    groups = {} if args.no_real_size else real_size_groups(work / "real-size", args.samples)
    report["e_load"] = {name: load_costs(paths, scorer.meta, args.repeat + 1) for name, paths in groups.items()}
    if rates := planning_rates(report):
        report["rates"] = rates
    if args.no_ray:
        return report

    sources = {"c_local": str(work / "images")}
    if not args.no_s3:
        sources["d_s3"] = _stage_on_moto(images)
    if not args.no_pacs:
        sources.update(_stage_on_pacs(work, args.copies))
    if groups:
        sources["f_real_size"] = _real_size_archive(work / "real-size-archive", groups, args.copies)
    ray = connect()
    report["cpus"], report["cpus_per_actor"] = ray.cluster_resources().get("CPU", 1.0), args.cpus_per_actor
    for key, source in sources.items():
        output = str(work / f"out-{key}-{time.time_ns()}")
        with TreeMonitor() as monitor:
            summary = score_archive(c1, c2, source, output, batch_size=args.batch_size, precision=args.precision,
                                    cpus_per_actor=args.cpus_per_actor, progress=False)
        start, end, rows = steady_part(output)
        report[key] = rows / (end - start)
        report[f"{key}_wall"] = summary.images_per_second
        report[f"{key}_peak_bytes"] = monitor.peak
        report[f"{key}_over_a"] = report[key] / report["a_bare_forward"]
        spent = monitor.cpu_seconds(start, end)
        report[f"{key}_cpu_ms"] = {name: 1000 * sec / rows for name, sec in spent.items()}
    if groups:
        mix = {name: len(paths) * (args.copies if name.startswith("generated") else 1)
               for name, paths in groups.items()}
        load_ms = sum(report["e_load"][name]["model_input_ms"] * n for name, n in mix.items())
        report["f_load_ms"] = load_ms / sum(mix.values())
        report["f_bound"], report["f_min_bound"] = pipeline_bounds(
            report["a_bare_forward"], report["f_load_ms"], report["cpus"], report["device"].startswith("cuda"))
        report["f_real_size_over_bound"] = report["f_real_size"] / report["f_bound"]
    return report


def real_size_groups(out_dir: Path, samples: Path | None) -> dict[str, list[Path]]:
    """The real-size inputs of (e) and (f) by kind: the generated files, and the sample X-rays
    and DICOMs (by transfer syntax) when ``samples`` holds them."""
    jpeg, png, dicom = write_real_size_inputs(out_dir)
    groups = {"generated 2500x2048 8-bit JPEG": [jpeg], "generated 2500x2048 16-bit PNG": [png],
              "generated 2500x2048 12-bit DICOM": [dicom]}
    if samples is None or not (samples / "images").is_dir():
        return groups
    groups["sample X-rays (PNG, JPEG)"] = sorted((samples / "images").iterdir())
    import pydicom

    for path in sorted((samples / "dicom").glob("*.dcm")):
        syntax = pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta.get("TransferSyntaxUID")
        kind = syntax.keyword if syntax is not None and syntax.is_compressed else "uncompressed"
        groups.setdefault(f"sample DICOMs, {kind}", []).append(path)
    return groups


def load_costs(paths: list[Path], meta: ExpertMeta, rounds: int) -> dict[str, float]:
    """(e) for some files: CPU milliseconds per image on one core to read, decode and preprocess
    them, by ``model_input`` and by the exact path (the whole image, then ``preprocess``); the
    best of ``rounds`` passes after a warm-up."""
    paths_by_name = [(str(p), p) for p in paths]
    ways = {"model_input_ms": lambda data, name: model_input(data, name, meta),
            "exact_ms": lambda data, name: preprocess(decode_image(data, name), meta)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        costs: dict[str, float] = {"files": len(paths)}  # the count stays an int
        for key, way in ways.items():
            passes = []
            for _ in range(rounds + 1):
                start = time.process_time()
                for name, path in paths_by_name:
                    way(path.read_bytes(), name)
                passes.append((time.process_time() - start) * 1000 / len(paths))
            costs[key] = min(passes[1:])
    finally:
        torch.set_num_threads(threads)
    return costs


def _real_size_archive(root: Path, groups: dict[str, list[Path]], copies: int) -> str:
    """A folder for (f): ``copies`` links to each generated file and one to each sample file."""
    root.mkdir(parents=True, exist_ok=True)
    for name, paths in groups.items():
        for path in paths:
            for i in range(copies if name.startswith("generated") else 1):
                (root / f"{i:03d}-{path.name}").symlink_to(path.resolve())
    return str(root)


def planning_rates(report: dict) -> dict | None:
    """The rates ``dualcam score --dry-run --rates`` reads: loading per CPU core (``model_input`` on the
    sample X-rays when present, else on the generated 2500 x 2048 JPEG), and the scorer per GPU (measured
    on one) or per CPU core (the scorer's rate over its torch threads: an upper bound, as threads do not
    scale perfectly). None without (e)."""
    load = report.get("e_load", {})
    group = next((name for name in RATE_GROUPS if name in load), None)
    if group is None:
        return None
    model = ("model_per_gpu", report["b_scorer"]) if report["device"].startswith("cuda") else (
        "model_per_cpu", report["b_scorer"] / report["torch_threads"])
    return {"decode_per_cpu": 1000 / load[group]["model_input_ms"], model[0]: model[1],
            "measured": f"make bench: {report['arch']} pair at {report['size']} px on {report['device']}, "
                        f"loading {group}"}


def _stage_on_moto(images: list[str]) -> str:
    """Start moto's S3 server on loopback (for the rest of this process), point the AWS settings at it
    and upload the images."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    os.environ.update(MotoServer().start().env)
    storage.s3_client.cache_clear()
    storage.s3_client().create_bucket(Bucket="bench")
    for path in images:
        storage.write_bytes(f"s3://bench/images/{Path(path).name}", Path(path).read_bytes())
    return "s3://bench/images"


def _stage_on_pacs(work: Path, copies: int) -> dict[str, str]:
    """(g)'s two inputs: ``copies`` real-size 12-bit radiographs (2500 x 2048, 10 MB each, one SOP instance
    each) as DICOM files in a local folder, and the same files in an Orthanc started for the rest of this
    process (its account put in this process's environment, for Ray's workers); none without Orthanc."""
    if (why := pacs.missing()) is not None:
        print(f"dualcam bench: (g) skipped: {why}", file=sys.stderr)
        return {}
    server = pacs.OrthancServer(work / "orthanc").start()
    atexit.register(server.stop)
    os.environ.update({dicomweb.ENV_USER: pacs.USER, dicomweb.ENV_PASSWORD: pacs.PASSWORD})
    folder = work / "dicom"
    folder.mkdir(exist_ok=True)
    pixels = np.round(real_size_xray(np.random.default_rng(0)) * 4095).astype(np.uint16)
    study, series = str(generate_uid()), str(generate_uid())
    for i in range(copies):
        _, data = pacs.radiograph_dicom(pixels, study, series, BENCH_DAY)
        (folder / f"real-size-{i:03d}.dcm").write_bytes(data)
        server.store(data)
    return {"g_dicom_local": str(folder), "g_dicom_pacs": server.dicomweb(f"StudyInstanceUID={study}")}


BENCH_DAY = datetime.date(2026, 12, 6)
"""The study date of (g)'s DICOM files (any date; none is queried by it)."""


def print_report(report: dict) -> None:
    print(f"dualcam bench: {report['images']} images, {report['arch']} pair at {report['size']} px, "
          f"batch {report['batch_size']}, {report['device']}, {report['precision']}, "
          f"{report['torch_threads']} torch threads" + (
              f"; pipeline actors of {report['cpus_per_actor']:g} CPUs" if report.get("cpus_per_actor") else ""))
    stages = [("a_bare_forward", "(a) bare forward of both experts"), ("b_scorer", "(b) scorer class alone"),
              ("b_one_model", "(b) the same, pair from one model"),
              ("c_local", "(c) pipeline, local files -> Parquet"), ("d_s3", "(d) pipeline, S3 (moto) -> Parquet")]
    for key, label in stages:
        if key in report:
            _print_stage(report, key, label)
    for key, label in (("b_over_a", "b/a"), ("c_local_over_a", "c/a"), ("d_s3_over_a", "d/a")):
        if key in report:
            print(f"  {label} = {report[key]:.3f}")
    if report.get("c_local_over_a", 1.0) < 0.9:
        _print_cpu(report, "c_local")
    if report.get("e_load"):
        print(f"(e) load alone at {report['size']} px (read + decode + preprocess), CPU ms per image on one core:")
        print(f"  {'input':40s} {'files':>5s} {'model_input':>12s} {'exact path':>11s} {'speed-up':>9s}")
        for name, cost in report["e_load"].items():
            print(f"  {name:40s} {cost['files']:5d} {cost['model_input_ms']:12.1f} {cost['exact_ms']:11.1f} "
                  f"{cost['exact_ms'] / cost['model_input_ms']:8.2f}x")
    if "rates" in report:
        rates = report["rates"]
        model = ", ".join(f"scoring {rates[key]:.1f} images/s per {unit}"
                          for key, unit in (("model_per_gpu", "GPU"), ("model_per_cpu", "CPU core")) if key in rates)
        print(f"  rates for --dry-run --rates: loading {rates['decode_per_cpu']:.1f} images/s per CPU core, {model} "
              f"({rates['measured']})")
    if "f_real_size" in report:
        _print_stage(report, "f_real_size", "(f) pipeline, real-size files -> Parquet")
        cores, e = f"{report['cpus']:g} cores", f"{report['f_load_ms']:.1f} ms"
        bound = (f"min(a, ({cores} - 1) x 1000 / {e})" if report["device"].startswith("cuda")
                 else f"1 / (1/a + {e} / {cores}), loaders and model taking turns on the same cores")
        print(f"  f / {bound} = {report['f_real_size']:.2f} / {report['f_bound']:.2f} = "
              f"{report['f_real_size_over_bound']:.3f}   (f / min(a, {cores} x 1000 / {e}) = "
              f"{report['f_real_size'] / report['f_min_bound']:.3f})")
        if report["f_real_size_over_bound"] < 0.9:
            _print_cpu(report, "f_real_size")
    if "g_dicom_pacs" in report:
        _print_stage(report, "g_dicom_local", "(g) pipeline, real-size DICOM files")
        _print_stage(report, "g_dicom_pacs", "(g) the same from Orthanc (DICOMweb)")
        print(f"  g: DICOMweb / files = {report['g_dicom_pacs'] / report['g_dicom_local']:.3f}")


def _print_stage(report: dict, key: str, label: str) -> None:
    line = f"  {label:40s} {report[key]:7.2f} images/s   peak {report[f'{key}_peak_bytes'] / 2**30:5.2f} GiB"
    if f"{key}_wall" in report:
        line += f"   (wall incl. start-up: {report[f'{key}_wall']:.2f} images/s)"
    print(line)


def _print_cpu(report: dict, key: str) -> None:
    """Where the CPU time of a pipeline stage went, by process, beside what the model alone needs."""
    spent = report[f"{key}_cpu_ms"]
    model = report["torch_threads"] * 1000 / report["a_bare_forward"]
    load = f" and loading about {report['f_load_ms']:.0f}" if key == "f_real_size" else ""
    print(f"  where the time went in {key[0]}'s steady part, CPU ms per image (the forward alone needs about "
          f"{model:.0f} on {report['torch_threads']} threads{load}; total {sum(spent.values()):.0f}):")
    print("    " + ", ".join(f"{name} {ms:.1f}" for name, ms in list(spent.items())[:8]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualcam.bench.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=320, help="generated images (default 320)")
    parser.add_argument("--size", type=int, default=224, help="expert input size = image size (default 224)")
    parser.add_argument("--arch", default="resnet18", help="expert architecture (default resnet18)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of (a) and (b), alternated; the best counts (default 2)")
    parser.add_argument("--device", default=None, help="torch device for (a) and (b) (default: cuda if available)")
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                        help=f"how the experts compute (default {DEFAULT_PRECISION})")
    parser.add_argument("--cpus-per-actor", type=float, default=None,
                        help="CPUs and torch threads per scoring actor in (c), (d), (f) (default: the pipeline's, 1)")
    parser.add_argument("--no-ray", action="store_true", help="only (a) and (b): for machines without Ray")
    parser.add_argument("--no-s3", action="store_true", help="skip (d)")
    parser.add_argument("--no-pacs", action="store_true", help="skip (g)")
    parser.add_argument("--no-real-size", action="store_true", help="skip (e) and (f)")
    parser.add_argument("--copies", type=int, default=64,
                        help="links to each generated real-size file in (f)'s input; (g)'s DICOM files (default 64)")
    parser.add_argument("--samples", type=Path,
                        default=Path(os.environ.get("DUALCAM_XRAY_SAMPLES", "../shared/data/xray")),
                        help="the sample X-rays, used in (e) and (f) when present (default ../shared/data/xray)")
    parser.add_argument("--workdir", default=None, help="where images, experts and outputs go (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.n < 2 * args.batch_size:
        parser.error(f"--n must be at least two batches ({2 * args.batch_size}) for the pipelines' steady part")
    report = run(args)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
