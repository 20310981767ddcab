"""The report of a ``dualcam score`` output: the paper's figures and a static HTML page (``dualcam render``).

For a few scored rows it draws the paper's figure triple (CAM1, CAM2 and the kernel over the
image; Figs. 4-5) and the alpha strip (the kernel at several alphas; Fig. 6), recomputing the
kernel from the stored raw CAMs, so any kernel and alpha can be shown without scoring again. The
report adds a review list (the images expert 1 calls positive whose evidence expert 2 claims
most, by ``overlap``, with their triples), the run's spec, histograms of p1 and p2 per label,
and an evaluation's tables.
Reads results, boxes and images from local paths or s3://; writes a local folder. No Ray.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dualcam.io import storage
from dualcam.io.imaging import DecodeError, decode_image
from dualcam.io.inputs import read_input
from dualcam.io.labelled import read_boxes
from dualcam.io.results import ExpertId, RunSpec, read_results, read_run_spec, to_numpy
from dualcam.maps.kernel import ALPHAS, KERNELS, check_alphas, get_kernel, overlap
from dualcam.maps.regions import Box
from dualcam.reports.drawing import DEFAULT_SIDE, panel_row
from dualcam.reports.html_page import Report, format_value, short_names

DEFAULT_N = 8
"""Rows drawn by default."""
DEFAULT_KERNEL = "addk"
"""The kernel drawn by default: the paper's."""
DEFAULT_REVIEW = 8
"""Rows listed for review by default."""
POSITIVE = 0.5
"""p1 at or above which expert 1 calls an image its class."""
PANEL_NOTE = (
    "Each panel shows its map upsampled to the image (to the part of it the experts saw, where they take a centre "
    "crop) and scaled on its own: the colour bar under it runs from "
    "that map's minimum (black) to its maximum (yellow), both given. Colours are not comparable across panels; "
    "the numbers under them are. Stored maps stay raw."
)


@dataclass
class Rendered:
    """What ``render_results`` wrote."""

    report: Path
    """The report's ``index.html``."""
    images: int
    """Rows drawn, each as a triple and an alpha strip."""
    figures: int
    """PNGs written: triples, strips and histograms."""
    skipped: list[str] = field(default_factory=list)
    """``uri: reason`` for each chosen row whose image could not be read or decoded."""
    reviewed: int = 0
    """Rows of the review list drawn, each as a triple."""


def render_results(
    results: str,
    out: str | Path,
    *,
    n: int = DEFAULT_N,
    alphas: Sequence[float] = ALPHAS,
    kernel: str = DEFAULT_KERNEL,
    boxes: str | None = None,
    evaluation: str | None = None,
    side: int | None = DEFAULT_SIDE,
    review: int = DEFAULT_REVIEW,
) -> Rendered:
    """Write ``out/index.html`` and its images for the results folder ``results``.

    Chooses up to ``n`` ok rows (``choose_rows``), and lists up to ``review`` rows for review
    (``review_rows``; 0: no list). Each figure is a ``drawing.panel_row`` with
    panels of longer side ``side``. ``boxes`` is a CSV/Parquet of (uri, x, y, w, h, kind) in image
    pixels, outlined on that image's panels; ``evaluation`` a JSON object whose lists of flat
    objects become tables and whose scalars a key/value table. ValueError/OSError for missing
    results, an unknown kernel, bad ``n`` or ``alphas``, unreadable boxes or evaluation, all before
    anything is drawn; an image that cannot be decoded is skipped and named in ``skipped``.
    """
    _check_arguments(out, n=n, alphas=alphas, kernel=kernel, review=review)
    table, ok, spec = _read_scored(results)
    boxes_by_uri = read_boxes(boxes) if boxes else {}
    evaluated = _read_evaluation(evaluation) if evaluation else None

    report = Report(out, f"dualcam report: {results}")
    report.heading("Run")
    report.table(_run_rows(results, table, ok, spec, kernel, alphas))
    chosen, how = choose_rows(ok, n)
    listed, review_how = review_rows(ok, review, spec.first.class_name) if review else (None, "")
    # one naming for the whole page: figures and review list alike
    names, root = short_names(chosen.column("uri").to_pylist()
                              + (listed.column("uri").to_pylist() if listed is not None else []))
    report.heading("Figures")
    report.paragraph(how + (f" Image paths are relative to {root}." if root else ""))
    report.paragraph(PANEL_NOTE)
    drawn, skipped = _draw(report, chosen, names, spec, kernel, alphas, boxes_by_uri, side)
    if skipped:
        report.paragraph("Skipped: " + "; ".join(skipped))
    reviewed = 0
    if listed is not None:
        report.heading(f"Review: {spec.first.class_name} calls that rest on evidence expert 2 also claims")
        report.paragraph(review_how)
        if listed.num_rows:
            report.table([{"rank": i + 1, **row, "uri": names[row["uri"]]} for i, row in enumerate(
                listed.select(["uri", *_optional(listed, "label"), "p1", "p2", "overlap"]).to_pylist())])
        reviewed, missed = _draw(report, listed, names, spec, kernel, (), boxes_by_uri, side, prefix="review-")
        if missed:
            report.paragraph("Skipped: " + "; ".join(missed))
        skipped += [line for line in missed if line not in skipped]
    _add_scores(report, ok, spec)
    if evaluation is not None and evaluated is not None:
        _add_evaluation(report, evaluation, evaluated)
    return Rendered(report.write(), drawn, 2 * drawn + reviewed + 2, skipped, reviewed)


def _check_arguments(out: str | Path, *, n: int, alphas: Sequence[float], kernel: str, review: int) -> None:
    """``render_results``' arguments, checked before any reading."""
    get_kernel(kernel)
    if storage.is_s3(str(out)):
        raise ValueError(f"render: the report is written to a local folder, not {out}")
    if n < 1:
        raise ValueError(f"render: --rows must be at least 1, got {n}")
    if review < 0:
        raise ValueError(f"render: --review-rows must be at least 0, got {review}")
    check_alphas(alphas, "render")


def _read_scored(results: str) -> tuple[pa.Table, pa.Table, RunSpec]:
    """(every row, the ok rows, the run's spec) of a score output; ValueError when nothing was scored."""
    spec = read_run_spec(results)
    if spec is not None and spec.kind != "score":
        raise ValueError(f"{results}: a dualcam {spec.kind} output; render draws dualcam score outputs "
                         f"(a drift run writes its own page)")
    table = read_results(results)
    if table.num_rows == 0:
        raise ValueError(f"{results}: no results (no Parquet files there)")
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    if ok.num_rows == 0:
        raise ValueError(f"{results}: none of its {table.num_rows} rows was scored (status ok)")
    return table, ok, spec or _spec_of(results, ok)


def _add_scores(report: Report, ok: pa.Table, spec: RunSpec) -> None:
    """The histograms of p1 and p2, per label where the rows carry one."""
    report.heading("Scores")
    per_label = ", per label" if "label" in ok.column_names else ""
    for i, expert in enumerate((spec.first, spec.second), 1):
        report.histogram(_by_label(ok, f"p{i}"), f"p{i}", f"p{i} of the {ok.num_rows} scored rows{per_label}",
                         f"p{i}: expert {i}'s probability of {expert.class_name}", value_range=(0.0, 1.0))


def choose_rows(ok: pa.Table, n: int) -> tuple[pa.Table, str]:
    """Up to ``n`` of the ok rows, in uri order, and a sentence saying how they were chosen.

    Rows of the ``test`` split when a ``split`` column has any; of those, the first ``n`` by uri
    whose ``label`` is expert 1's class when a ``label`` column has any, else the ``n`` with the
    highest p1.
    """
    rows, scope = ok, "scored rows"
    if "split" in ok.column_names:
        test = ok.filter(pc.equal(ok.column("split").cast(pa.string()), "test"))
        if test.num_rows:
            rows, scope = test, "scored rows of the test split"
    c1 = rows.column("c1_class")[0].as_py()
    if "label" in rows.column_names:
        labelled = rows.filter(pc.equal(rows.column("label").cast(pa.string()), rows.column("c1_class")))
        if labelled.num_rows:
            chosen = labelled.sort_by("uri").slice(0, n)
            return chosen, f"{chosen.num_rows} of the {labelled.num_rows} {scope} labelled {c1}: the first by uri."
        scope += f" (none labelled {c1})"
    chosen = rows.sort_by([("p1", "descending"), ("uri", "ascending")]).slice(0, n).sort_by("uri")
    return chosen, f"The {chosen.num_rows} of the {rows.num_rows} {scope} with the highest p1, in uri order."


def review_rows(ok: pa.Table, n: int, class_name: str) -> tuple[pa.Table, str]:
    """The ``n`` ok rows that expert 1 calls positive (p1 >= ``POSITIVE``) with the highest
    ``overlap``, highest first (ties by uri), and a sentence saying how they were chosen.

    Results of schema 1 have no ``overlap`` column: it is computed from their stored CAMs.
    """
    positive = ok.filter(pc.greater_equal(ok.column("p1"), POSITIVE))
    if "overlap" not in positive.column_names:
        cams = (np.array(to_numpy(positive.column(c))) for c in ("cam1", "cam2"))
        positive = positive.append_column("overlap", pa.array(overlap(*cams), pa.float32()))
    listed = positive.sort_by([("overlap", "descending"), ("uri", "ascending")]).slice(0, n)
    return listed, (f"The {listed.num_rows} of the {positive.num_rows} scored rows expert 1 calls {class_name} "
                    f"(p1 >= {POSITIVE:g}) whose overlap is highest: the share of expert 1's positive evidence "
                    "that expert 2 also claims, 0 to 1. A high overlap means the call rests on evidence the "
                    "overlapping class shares; look at these first.")


def _draw(
    report: Report, chosen: pa.Table, names: Mapping[str, str], spec: RunSpec, kernel: str, alphas: Sequence[float],
    boxes: Mapping[str, list[tuple[str, Box]]], side: int | None, prefix: str = "",
) -> tuple[int, list[str]]:
    """A triple and, with ``alphas``, an alpha strip per chosen row, in its order, captioned with its name
    in ``names``; (rows drawn, ``uri: reason`` of rows skipped). Figure names start with ``prefix``."""
    kernel_fn = get_kernel(kernel)
    # own copies: Arrow's buffers are read-only, which torch warns about
    cam1, cam2 = (np.array(to_numpy(chosen.column(c))) for c in ("cam1", "cam2"))
    heat = kernel_fn(cam1, cam2, spec.alpha)
    drawn, skipped = 0, []
    for i, row in enumerate(chosen.select(["uri", "p1", "p2", *_optional(chosen, "label", "overlap")]).to_pylist()):
        uri = row["uri"]
        try:
            image = decode_image(read_input(uri).data, uri)
        except (DecodeError, OSError) as err:
            skipped.append(str(err) if uri in str(err) else f"{uri}: {err}")
            continue
        top, left, bottom, right = spec.window(*image.shape[:2])  # the part of the image the experts saw
        image = image[top:bottom, left:right]
        own = [(kind, seen) for kind, box in boxes.get(uri, [])
               if (seen := _within(box, top, left, bottom, right)) is not None]
        triple = [
            (f"CAM1 {spec.first.class_name} p1={row['p1']:.3f}", cam1[i]),
            (f"CAM2 {spec.second.class_name} p2={row['p2']:.3f}", cam2[i]),
            (f"{kernel}(CAM1, CAM2) alpha={spec.alpha:g}", heat[i]),
        ]
        name = f"{prefix}{drawn + 1:02d}-{uri.rstrip('/').rsplit('/', 1)[-1]}"
        about = names[uri] + (f" (label {row['label']})" if "label" in row else "")
        about += f"; overlap {row['overlap']:.3f}" if "overlap" in row else ""
        about += f"; boxes: {', '.join(kind for kind, _ in own)}" if own else ""
        report.figure(panel_row(image, triple, boxes=own, side=side), f"{name}-triple",
                      f"{about}: CAM1, CAM2 and {kernel}(CAM1, CAM2) at the run's alpha {spec.alpha:g}")
        if alphas:
            strip = [(f"{kernel} alpha={a:g}", kernel_fn(cam1[i], cam2[i], a)) for a in alphas]
            report.figure(panel_row(image, strip, boxes=own, side=side), f"{name}-alphas",
                          f"{about}: {kernel} at alpha {', '.join(f'{a:g}' for a in alphas)}")
        drawn += 1
    return drawn, skipped


def _within(box: Box, top: int, left: int, bottom: int, right: int) -> Box | None:
    """``box`` (x, y, w, h) in image pixels as drawn over the window (top, left, bottom, right) of the image: cut to
    it and in its coordinates; None where none of it lies inside."""
    x, y, w, h = box
    x0, y0, x1, y1 = max(x, left), max(y, top), min(x + w, right), min(y + h, bottom)
    return (x0 - left, y0 - top, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def _optional(table: pa.Table, *names: str) -> list[str]:
    return [name for name in names if name in table.column_names]


def _spec_of(results: str, ok: pa.Table) -> RunSpec:
    """The run spec from the rows themselves, for results copied without ``_run.json``."""
    if "c1_class" not in ok.column_names:
        raise ValueError(f"{results}: not a dualcam score output (no _run.json and no c1_class column)")
    row = ok.slice(0, 1).to_pylist()[0]
    c1, c2 = (ExpertId(row[f"c{i}_class"], row[f"c{i}_version"], row[f"c{i}_sha256"]) for i in (1, 2))
    return RunSpec(c1, c2, float(row["alpha"]), int(row["schema_version"]))


def _run_rows(
    results: str, table: pa.Table, ok: pa.Table, spec: RunSpec, kernel: str, alphas: Sequence[float],
) -> list[dict[str, Any]]:
    pairs = {
        "results": results,
        "rows": f"{table.num_rows} ({ok.num_rows} ok, {table.num_rows - ok.num_rows} errors)",
        "expert 1 (class of interest)": _identity(spec.first),
        "expert 2 (overlapping class)": _identity(spec.second),
        "alpha of the run": spec.alpha,
        "kernel": f"{kernel}: {KERNELS[kernel].origin}",
        "alphas of the strips": ", ".join(f"{a:g}" for a in alphas),
        "schema version": spec.schema_version,
    }
    return [{"": key, "value": value} for key, value in pairs.items()]


def _identity(expert: ExpertId) -> str:
    return f"{expert.class_name} {expert.version} sha256 {expert.sha256[:12]}"


def _by_label(ok: pa.Table, score: str) -> dict[str, np.ndarray]:
    """``score`` of every ok row, grouped by label (one group, "all", without a label column)."""
    values = ok.column(score).to_numpy(zero_copy_only=False)
    if "label" not in ok.column_names:
        return {"all": values}
    labels = np.array([str(v) for v in ok.column("label").to_pylist()])
    return {label: values[labels == label] for label in sorted(set(labels))}


def _read_evaluation(uri: str) -> dict[str, Any]:
    try:
        data = json.loads(storage.read_bytes(uri))
    except json.JSONDecodeError as err:
        raise ValueError(f"{uri}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{uri}: an evaluation must be a JSON object, not {type(data).__name__}")
    return data


def _add_evaluation(report: Report, uri: str, data: Mapping[str, Any]) -> None:
    """Scalars (with lists of scalars, and flat objects one row per key: the CAM1-CAM2 correlation's
    mean and median) as one key/value table, then a table per list of flat objects; other keys named,
    not shown."""
    report.heading("Evaluation")
    report.paragraph(f"From {uri}.")
    scalars = [row for key, value in data.items() for row in _summary_rows(key, value)]
    if scalars:
        report.table(scalars, "summary")
    for key, value in data.items():
        if _is_table(value):
            report.table(value, key)
    left_out = [key for key, value in data.items() if not (_summary_rows(key, value) or _is_table(value))]
    if left_out:
        report.paragraph(f"Not shown (neither a number or text nor a list of flat objects): {', '.join(left_out)}.")


def _summary_rows(key: str, value: Any) -> list[dict[str, Any]]:
    """The summary table's rows for one key: a scalar, a list of scalars on one row, a flat object one
    row per key (``cam_correlation mean``); none for anything else."""
    if _is_scalar(value):
        return [{"": key, "value": value}]
    if isinstance(value, list) and value and all(_is_scalar(v) for v in value):
        return [{"": key, "value": ", ".join(format_value(v) for v in value)}]
    if isinstance(value, dict) and value and all(_is_scalar(v) for v in value.values()):
        return [{"": f"{key} {name}", "value": v} for name, v in value.items()]
    return []


def _is_table(value: Any) -> bool:
    """A non-empty list of flat objects (whose values are all scalars)."""
    return isinstance(value, list) and bool(value) and all(
        isinstance(row, dict) and all(_is_scalar(v) for v in row.values()) for row in value
    )


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))
