"""The summaries of a drift output folder: ``_drift.json`` for machines, ``_report/index.html`` for people.

Reads the rows of every run into the folder (no Ray), so a resumed run or another threshold
summarizes the whole folder, and writes both summaries beside the rows (local or s3://). The page
shows the run, each measure's distribution and, for the most drifted images, the figure triple:
old CAM, new CAM and ADDK(new, old), each over the image (``drawing.panel_row``).
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import TypedDict

import numpy as np
import pyarrow.compute as pc

from dualcam.io import storage
from dualcam.io.imaging import DecodeError, decode_image
from dualcam.io.inputs import read_input
from dualcam.io.results import DRIFT, RunSpec, read_results, read_run_spec, to_numpy
from dualcam.maps import drift_measures
from dualcam.reports.drawing import panel_row
from dualcam.reports.html_page import Report, short_names

SUMMARY_FILE = "_drift.json"
PAGE_DIR = "_report"
LISTED = ("p_old", "p_new", "gained_peak_x", "gained_peak_y")
"""Per-image values listed with the measures for each of the most drifted images."""
_RANGES = {"cam_correlation": (-1.0, 1.0), "extra_mass_outside_old_top": (-1.0, 1.0), "delta_p": (-1.0, 1.0)}
_AXES = {
    "cam_correlation": "cam_correlation: Pearson correlation of the old and new CAM (1: unchanged)",
    "peak_shift_px": "peak_shift_px: distance between the two CAMs' peaks, image pixels",
    "extra_mass_outside_old_top": "extra_mass_outside_old_top: share of positive mass (0: unchanged)",
    "delta_p": "delta_p: p_new - p_old",
}


class ExpertVersion(TypedDict):
    """One of the two versions compared, as ``_drift.json`` names it."""

    class_name: str
    version: str
    sha256: str


class DriftReport(drift_measures.DriftStats):
    """The content of ``_drift.json``: the run, the threshold and alert, and ``drift_measures.summarize``'s
    statistics (``DriftStats``)."""

    kind: str
    output: str
    old: ExpertVersion
    new: ExpertVersion
    alpha: float
    primary_measure: str
    threshold: float
    drifted_when: str
    max_drift_share: float
    alert: bool
    errors: int
    page: str
    created_at: str


def summarize(
    output: str, threshold: float = drift_measures.DRIFT_THRESHOLD,
    max_drift_share: float = drift_measures.MAX_DRIFT_SHARE,
    top_k: int = drift_measures.TOP_K,
) -> DriftReport:
    """Summarize the drift rows in ``output``: write the page, then ``_drift.json``; returns the JSON's content.

    ``alert`` is true when the share of drifted images (``drift_measures.PRIMARY_MEASURE`` below
    ``threshold``) exceeds ``max_drift_share``.
    """
    spec = read_run_spec(output)
    if spec is None or spec.kind != DRIFT.kind:
        raise ValueError(f"{output} holds no drift results" + (f" ({spec.describe()})" if spec else ""))
    table = read_results(output, ["uri", "status", *drift_measures.MEASURES, *LISTED])
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    rows = {name: ok.column(name).to_numpy(zero_copy_only=False) for name in ("uri", *drift_measures.MEASURES, *LISTED)}
    stats = drift_measures.summarize(rows, threshold, top_k)
    old, new = (ExpertVersion(class_name=e.class_name, version=e.version, sha256=e.sha256) for e in spec.experts)
    summary: DriftReport = {
        "kind": DRIFT.kind, "output": output, "old": old, "new": new, "alpha": spec.alpha,
        "primary_measure": drift_measures.PRIMARY_MEASURE, "threshold": threshold,
        "drifted_when": f"{drift_measures.PRIMARY_MEASURE} < {threshold:g}",
        "max_drift_share": max_drift_share, "alert": stats["drifted_share"] > max_drift_share,
        "errors": table.num_rows - ok.num_rows, **stats,
        "page": storage.join(output, PAGE_DIR, "index.html"),
        "created_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    _write_page(output, summary, spec, rows)
    storage.write_json(storage.join(output, SUMMARY_FILE), summary)
    return summary


def _write_page(output: str, summary: DriftReport, spec: RunSpec, rows: dict[str, np.ndarray]) -> None:
    """``<output>/_report/``, built in place, or in a temporary folder and uploaded for s3://."""
    if not storage.is_s3(output):
        shutil.rmtree(Path(output) / PAGE_DIR, ignore_errors=True)  # no figures of an earlier summary
        _page(output, summary, spec, rows, Path(output) / PAGE_DIR)
        return
    with tempfile.TemporaryDirectory() as tmp:
        _page(output, summary, spec, rows, Path(tmp))
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                storage.write_bytes(storage.join(output, PAGE_DIR, path.relative_to(tmp).as_posix()), path.read_bytes())


def _page(output: str, summary: DriftReport, spec: RunSpec, rows: dict[str, np.ndarray], out: Path) -> None:
    old, new = summary["old"], summary["new"]
    report = Report(out, f"dualcam drift: {old['class_name']} {old['version']} to {new['version']}")
    report.heading("Run")
    report.table([{"": key, "value": value} for key, value in {
        "results": output,
        "old version": f"{old['class_name']} {old['version']} sha256 {old['sha256'][:12]}",
        "new version": f"{new['class_name']} {new['version']} sha256 {new['sha256'][:12]}",
        "alpha": summary["alpha"],
        "images": f"{summary['images']} scored, {summary['errors']} errors",
        "drifted": f"{summary['drifted']} ({summary['drifted_share']:.1%}), {summary['drifted_when']}",
        "alert": f"{summary['alert']} (more than {summary['max_drift_share']:.1%} drifted)",
    }.items()])
    report.heading("Measures")
    report.paragraph("cam_correlation: Pearson correlation of the two CAMs, [-1, 1], 1 when unchanged. "
                     "peak_shift_px: distance between their peaks in image pixels, 0 when unchanged. "
                     "extra_mass_outside_old_top: share of the new CAM's positive mass outside the old CAM's top "
                     "region minus the old CAM's own, [-1, 1], 0 when unchanged. delta_p: p_new - p_old, [-1, 1].")
    report.table([{"measure": name, **summary["measures"][name]} for name in drift_measures.MEASURES])
    for name in drift_measures.MEASURES:
        report.histogram({"images": rows[name]}, name, f"{name} of the {summary['images']} scored images",
                         _AXES[name], value_range=_RANGES.get(name))
    top = summary["top"]
    names, root = short_names([row["uri"] for row in top])
    report.heading(f"The {len(top)} most drifted images")
    report.paragraph(f"Lowest {drift_measures.PRIMARY_MEASURE} first"
                     + (f"; image paths relative to {root}" if root else "")
                     + f". Each figure: the old version's CAM, the new version's CAM and ADDK(new, old) at alpha "
                     f"{summary['alpha']:g} over the image: ADDK of the two CAMs' positive parts, bright where the "
                     "new version gained attention. Each map is scaled on its own for display: the colour bar "
                     "under it runs from its minimum (black) to its maximum (yellow), both given. An ADDK panel "
                     "marked constant has nothing to show: neither version has positive evidence anywhere on that "
                     "image (both CAMs <= 0), so no attention was gained or lost.")
    report.table([{**row, "uri": names[row["uri"]]} for row in top])
    skipped = _figures(report, output, summary, spec, names)
    if skipped:
        report.paragraph("Skipped: " + "; ".join(skipped))
    report.write()


def _figures(
    report: Report, output: str, summary: DriftReport, spec: RunSpec, names: dict[str, str],
) -> list[str]:
    """The figure triple of each top image, in rank order, captioned with its name in ``names``;
    ``uri: reason`` of images that could not be read."""
    top = [row["uri"] for row in summary["top"]]
    if not top:  # nothing scored ok: no figures (and no rows to read)
        return []
    maps = read_results(output, ["uri", "cam_old", "cam_new", "gained"], uris=top)
    index = {uri: i for i, uri in enumerate(maps.column("uri").to_pylist())}
    cam_old, cam_new, gained = (to_numpy(maps.column(c)) for c in ("cam_old", "cam_new", "gained"))
    skipped = []
    for rank, row in enumerate(summary["top"], 1):
        uri, i = row["uri"], index[row["uri"]]
        try:
            image = decode_image(read_input(uri).data, uri)
        except (DecodeError, OSError) as err:
            skipped.append(str(err) if uri in str(err) else f"{uri}: {err}")
            continue
        y0, x0, y1, x1 = spec.window(*image.shape[:2])  # the part of the image the experts saw
        image = image[y0:y1, x0:x1]
        panels = [(f"old {spec.first.version} p={row['p_old']:.3f}", cam_old[i]),
                  (f"new {spec.second.version} p={row['p_new']:.3f}", cam_new[i]),
                  (f"ADDK(new, old) alpha={summary['alpha']:g}", gained[i])]
        caption = (f"{rank}. {names[uri]}: cam_correlation {row['cam_correlation']:.3f}, peak shift "
                   f"{row['peak_shift_px']:.1f} px, extra mass outside the old top region "
                   f"{row['extra_mass_outside_old_top']:.3f}, delta_p {row['delta_p']:+.3f}"
                   + ("; drifted" if row["drifted"] else "")
                   + ("; ADDK(new, old) is constant: neither version has positive evidence on this image"
                      if np.ptp(gained[i]) == 0 else ""))
        report.figure(panel_row(image, panels), f"{rank:02d}-{PurePosixPath(uri).stem}", caption)
    return skipped
