"""``make scale``: the driver's start-up at 10^4 to 10^6 inputs, and listing a fanned-out S3 prefix.

Everything a run does before Ray gets its first block, on generated archives whose files need not
exist:

* **manifest**: ``read_inputs`` of a CSV manifest of n relative URIs with two more columns (read,
  resolved, checked for duplicates); **inventory**: the same n objects as an S3 Inventory Parquet
  file;
* **resume**: ``planning.progress`` against an output folder already holding half of them, in
  Parquet files of 1,024 score rows (CAMs and heatmap included, as a run writes them);
* **split**: ``planning.block_rows`` and ``planning.blocks`` for a cluster of 1,000 CPUs.

Each size runs in fresh processes (``--repeat``, the fastest counts); memory is the process's peak
resident set above what it held after its imports, less the inputs table itself, per input.
Listing: a moto S3 server (its own process, as S3 is another machine) holding a tree of
``--objects`` small objects (``archive/<site>/<patient>/<image>``), listed by one paginator, as
dualcam listed before, and by ``storage.list_uris``, in the same run. Finally the client's CPU for
one 1,000-key page, which bounds any listing of real S3 from one process.

Run ``python -m dualcam.bench.scale --help``; ``--no-listing`` skips moto.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dualcam.bench.s3server import MotoServer

SIZES = (10_000, 100_000, 1_000_000)
CLUSTER_CPUS = 1000
ROWS_PER_FILE = 1024
GRID = (7, 7)  # CAMs and heatmaps of a 224 px expert


def entry(i: int) -> str:
    """Manifest entry i, laid out as an archive's: cxr/<patient>/<study>/<DICOM UID>.dcm."""
    return f"cxr/p{i // 7:07d}/s{i % 3}/1.2.840.113619.2.55.3.{i:09d}.dcm"


def write_archive(root: Path, n: int) -> None:
    """The manifest, the inventory file and the half-done output folder for n inputs under ``root``."""
    entries = pa.array([entry(i) for i in range(n)], pa.string())
    manifest = pa.table({"uri": entries, "patient_id": pa.array([f"p{i // 7:07d}" for i in range(n)]),
                         "label": pa.array(np.where(np.arange(n) % 5 == 0, "COVID-19", "normal"))})
    pacsv.write_csv(manifest, root / "manifest.csv")
    pq.write_table(pa.table({"bucket": pa.array(["archive"] * n), "key": entries,
                             "size": pa.array(np.full(n, 2_500_000, np.int64))}), root / "inventory.parquet")
    done = np.arange(0, n, 2)  # every other input is already in the output
    (root / "out").mkdir()
    for part, start in enumerate(range(0, len(done), ROWS_PER_FILE)):
        rows = done[start:start + ROWS_PER_FILE]
        pq.write_table(_score_rows(root, rows), root / "out" / f"part-{part:06d}.parquet")


def _score_rows(root: Path, rows: np.ndarray) -> pa.Table:
    from dualcam.io.results import tensor_array

    k, rng = len(rows), np.random.default_rng(int(rows[0]))
    maps = {name: tensor_array(rng.standard_normal((k, *GRID), dtype=np.float32))
            for name in ("cam1", "cam2", "heatmap")}
    ok = rows % 100 != 0
    return pa.table({
        "uri": pa.array([f"{root.resolve()}/{entry(i)}" for i in rows]),
        "status": pa.array(np.where(ok, "ok", "error")),
        "error": pa.array([None if o else "x: corrupt" for o in ok], pa.string()),
        "error_kind": pa.array([None if o else "permanent" for o in ok], pa.string()),
        "input_version": pa.array([f"{200_000 + i}:1796600000000000000" for i in rows]),
        "p1": pa.array(rng.random(k, dtype=np.float32)), "p2": pa.array(rng.random(k, dtype=np.float32)), **maps,
    })


def startup(root: Path, kind: str, warm: Path) -> dict:
    """One driver start-up over the archive under ``root``, in this process, after one over the small
    archive ``warm`` (what a driver pays once whatever its size: imports on first use, thread pools)."""
    started, before = time.perf_counter(), _rss()
    _phases(warm, kind)
    fixed_s, fixed_bytes = time.perf_counter() - started, _rss() - before
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak resident set (VmHWM) starts again from now
    baseline = _rss()
    result = _phases(root, kind)
    peak = _rss("VmHWM")
    return {**result, "fixed_s": fixed_s, "fixed_bytes": fixed_bytes,
            "above_table_bytes": peak - baseline - result["table_bytes"]}


def _phases(root: Path, kind: str) -> dict:
    from dualcam.io.inputs import read_inputs
    from dualcam.scoring import planning

    t0 = time.perf_counter()
    found = read_inputs(str(root / ("manifest.csv" if kind == "manifest" else "inventory.parquet")))
    t1 = time.perf_counter()
    state = planning.progress(found.table, str(root / "out")) if kind == "manifest" else None
    t2 = time.perf_counter()
    pending = state.pending if state else pa.array(range(found.table.num_rows), pa.uint64())
    rows_per_block = planning.block_rows(len(pending), CLUSTER_CPUS, 16)
    blocks = sum(1 for _ in planning.blocks(found.table, pending, rows_per_block))  # each made, then dropped
    t3 = time.perf_counter()
    return {"inputs": found.table.num_rows, "done": state.done if state else 0, "blocks": blocks,
            "read_s": t1 - t0, "resume_s": t2 - t1, "split_s": t3 - t2, "total_s": t3 - t0,
            "table_bytes": found.table.nbytes}


def _rss(field: str = "VmRSS") -> int:
    """This process's resident bytes now (VmRSS) or at their peak (VmHWM), from /proc (Linux)."""
    found = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    if found is None:
        raise OSError(f"no {field} in /proc/self/status")
    return int(found.group(1)) * 1024


def _in_child(*args: str) -> dict:
    command = [sys.executable, "-m", "dualcam.bench.scale", *args]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_sizes(work: Path, sizes: list[int], repeat: int) -> list[dict]:
    warm = work / "warm"
    warm.mkdir()
    _in_child("--generate", str(warm), "100")
    rows = []
    for n in sizes:
        root = work / f"n{n}"
        root.mkdir()
        _in_child("--generate", str(root), str(n))
        for kind in ("manifest", "inventory"):
            runs = [_in_child("--startup", str(root), kind, str(warm)) for _ in range(repeat)]
            best = min(runs, key=lambda r: r["total_s"])
            best.update(kind=kind, n=n, spread=max(r["total_s"] for r in runs) / best["total_s"] - 1)
            rows.append(best)
    return rows


def moto_server() -> MotoServer:
    """moto's S3 server in its own process on 127.0.0.1; the AWS settings of this process point at it."""
    server = MotoServer(own_process=True).start()
    os.environ.update(server.env)
    return server


def tree_keys(objects: int) -> list[str]:
    """An archive's layout: 16 sites, patients of 25 images each."""
    per_site = -(-objects // 16)
    return [f"archive/{i // per_site:02d}/{(i % per_site) // 25:05d}/{i % 25:03d}.dcm" for i in range(objects)]


def measure_listing(objects: int, workers: int) -> dict:
    import boto3

    from dualcam.io import storage

    logging.getLogger("botocore").setLevel(logging.WARNING)
    server = moto_server()
    try:
        storage.s3_client.cache_clear()
        client = storage.s3_client()
        client.create_bucket(Bucket="bench")
        keys = tree_keys(objects)
        start = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda key: client.put_object(Bucket="bench", Key=key, Body=b"x"), keys))
        populate = time.perf_counter() - start

        start = time.perf_counter()  # dualcam's listing before: one paginator, a default boto3 client
        paginator = boto3.session.Session().client("s3").get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket="bench", Prefix="archive/")
        serial = sorted(f"s3://bench/{obj['Key']}" for page in pages for obj in page.get("Contents", ()))
        serial_s = time.perf_counter() - start
        start = time.perf_counter()
        parallel = storage.list_uris("s3://bench/archive", workers=workers)
        parallel_s = time.perf_counter() - start
        assert parallel.to_pylist() == serial and len(serial) == objects, "the listings differ"
        return {"objects": objects, "workers": workers, "populate_s": populate, "serial_s": serial_s,
                "parallel_s": parallel_s, "speedup": serial_s / parallel_s}
    finally:
        server.stop()


def page_parse_ms(repeat: int = 20) -> dict:
    """Client CPU for one 1,000-key ListObjectsV2 page: botocore's default parser and dualcam's (dates as text)."""
    import botocore.session
    from botocore.parsers import RestXMLParser

    shape = botocore.session.get_session().get_service_model("s3").operation_model("ListObjectsV2").output_shape
    items = "".join(f"<Contents><Key>archive/{i:02d}/{i:05d}/{i:03d}.dcm</Key><LastModified>2026-11-29T10:00:00.000Z"
                    "</LastModified><ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag><Size>2500000</Size>"
                    "<StorageClass>STANDARD</StorageClass></Contents>" for i in range(1000))
    body = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>bench</Name><KeyCount>1000</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>{items}"
            "</ListBucketResult>").encode()
    response = {"headers": {}, "status_code": 200, "body": body}
    out = {}
    for name, parser in (("default", RestXMLParser()), ("dates_as_text", RestXMLParser(timestamp_parser=lambda t: t))):
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            parser.parse(response, shape)
            times.append(time.perf_counter() - start)
        out[name] = 1000 * min(times)
    return out


def marginal(rows: list[dict]) -> list[dict]:
    """What each input adds between two sizes of one kind (fixed costs cancel): seconds and bytes per input."""
    out = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        sized = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["inputs"])
        for small, large in zip(sized, sized[1:]):
            extra = large["inputs"] - small["inputs"]
            out.append({"kind": kind, "from": small["inputs"], "to": large["inputs"],
                        "seconds": (large["total_s"] - small["total_s"]) / extra,
                        "bytes": (large["above_table_bytes"] - small["above_table_bytes"]) / extra})
    return out


def print_report(report: dict) -> None:
    print(f"dualcam scale: driver start-up, each size in fresh processes, best of {report['repeat']} "
          f"(spread: how much slower the slowest was); split for a cluster of {CLUSTER_CPUS} CPUs")
    print(f"  {'input':9s} {'inputs':>9s} {'read s':>7s} {'resume s':>8s} {'split s':>7s} {'total s':>7s} "
          f"{'us/input':>8s} {'bytes/input':>11s} {'table MB':>8s} {'blocks':>6s} {'spread':>6s}")
    for r in report["sizes"]:
        per_input = 1e6 * r["total_s"] / r["inputs"]
        print(f"  {r['kind']:9s} {r['inputs']:9,d} {r['read_s']:7.2f} {r['resume_s']:8.2f} {r['split_s']:7.3f} "
              f"{r['total_s']:7.2f} {per_input:8.2f} {r['above_table_bytes'] / r['inputs']:11.0f} "
              f"{r['table_bytes'] / 1e6:8.1f} {r['blocks']:6d} {r['spread']:6.0%}")
    print("  what each input adds, between two sizes (fixed costs cancel; bytes: memory above the table):")
    for m in report["marginal"]:
        print(f"  {m['kind']:9s} {m['from']:,} -> {m['to']:,}: {1e6 * m['seconds']:.2f} us, {m['bytes']:.0f} bytes")
    if "listing" in report:
        s = report["listing"]
        print(f"  listing {s['objects']:,} objects on moto (populated in {s['populate_s']:.0f} s): one paginator "
              f"{s['serial_s']:.1f} s, list_uris with {s['workers']} workers {s['parallel_s']:.1f} s: "
              f"{s['speedup']:.1f}x")
    p = report["page_parse_ms"]
    print(f"  client CPU per 1,000-key page: botocore default {p['default']:.0f} ms, "
          f"dates as text {p['dates_as_text']:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualcam.bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="numbers of inputs (default 10000,100000,1000000)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="fresh-process runs per size; the fastest counts (default 3)")
    parser.add_argument("--objects", type=int, default=50_000, help="objects in the moto tree (default 50000)")
    parser.add_argument("--workers", type=int, default=None, help="list_uris workers (default storage.LIST_WORKERS)")
    parser.add_argument("--no-listing", action="store_true", help="skip the moto listing")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--generate", nargs=2, metavar=("ROOT", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--startup", nargs=3, metavar=("ROOT", "KIND", "WARM"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate:
        write_archive(Path(args.generate[0]), int(args.generate[1]))
        print("{}")
        return 0
    if args.startup:
        print(json.dumps(startup(Path(args.startup[0]), args.startup[1], Path(args.startup[2]))))
        return 0

    from dualcam.io import storage

    with tempfile.TemporaryDirectory(prefix="dualcam-scale-") as work:
        sizes = measure_sizes(Path(work), [int(n) for n in args.sizes.split(",")], args.repeat)
    report = {"repeat": args.repeat, "sizes": sizes, "marginal": marginal(sizes)}
    if not args.no_listing:
        report["listing"] = measure_listing(args.objects, args.workers or storage.LIST_WORKERS)
    report["page_parse_ms"] = page_parse_ms()
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
