"""``dualcam evaluate``: localization of CAM1, CAM2 and the kernels against known boxes, and the
experts' accuracy, from stored results (no rescoring).

Every map is recomputed from the raw ``cam1`` and ``cam2`` columns, so one scoring run answers for
any kernel and alpha. Reference rows frame the figures: a uniform map (knows nothing), the true F1
box pooled to the CAM grid (the best any map can do at that resolution), and CAM1 sharpened alone
at each alpha (what a kernel gains over it is what the second expert contributes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from dualcam.io.labelled import read_boxes
from dualcam.io.results import RUN_FILE, RunSpec, read_results, read_run_spec, to_numpy
from dualcam.maps import localization
from dualcam.maps.kernel import ALPHAS, KERNELS, Kernel, check_alphas, get_kernel, overlap, sharpen
from dualcam.maps.metrics import binary_metrics, roc_auc
from dualcam.maps.regions import Box

DEFAULT_KERNELS = tuple(KERNELS)
TARGETS = ("F1", "S")
MEASURES = ("pointing", "energy", "iou")
_SHORT = {"pointing": "PG", "energy": "E", "iou": "IoU"}
EVALUATION_FILE = "_evaluation.json"
_CHUNK = 64


MapMaker = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(CAM1, CAM2, targets) -> the map to localize."""


@dataclass(frozen=True)
class MapKind:
    """One row of the localization table: how to make its map from (cam1, cam2, F1 targets)."""

    name: str
    origin: str
    alpha: float | None
    make: MapMaker


def _kernel_at(kernel: Kernel, alpha: float) -> MapMaker:
    return lambda c1, c2, t: kernel(c1, c2, alpha)


def _sharpened_at(alpha: float) -> MapMaker:
    return lambda c1, c2, t: sharpen(c1, alpha)


def map_kinds(alphas: Sequence[float], kernels: Sequence[str]) -> list[MapKind]:
    """The rows, in table order: the two CAMs, each kernel at each alpha, then the references."""
    kinds = [MapKind("CAM1", "expert 1", None, lambda c1, c2, t: c1),
             MapKind("CAM2", "expert 2", None, lambda c1, c2, t: c2)]
    for name in kernels:
        kernel = get_kernel(name)  # ValueError naming the known ones
        kinds += [MapKind(name, KERNELS[name].origin, a, _kernel_at(kernel, a)) for a in alphas]
    kinds += [MapKind("CAM1 sharpened", "reference: exp(alpha*CAM1/max)", a, _sharpened_at(a)) for a in alphas]
    kinds += [MapKind("uniform", "reference: knows nothing", None, lambda c1, c2, t: torch.ones_like(c1)),
              MapKind("F1 box pooled", "reference: best at this grid", None,
                      lambda c1, c2, t: localization.pooled(t, (c1.shape[-2], c1.shape[-1])))]
    return kinds


def evaluate(results: str, boxes: str, *, alphas: Sequence[float] = ALPHAS,
             kernels: Sequence[str] = DEFAULT_KERNELS, split: str | None = "test") -> dict[str, Any]:
    """The evaluation as a JSON-ready dict: localization rows, CAM1-CAM2 correlation, experts.

    Localization is measured on expert 1's class (the ``label`` column equal to the run's C1
    class) in ``split`` (when the results have a ``split`` column), on the rows scored ok.
    """
    check_alphas(alphas, "evaluate")
    for kernel in kernels:
        get_kernel(kernel)  # an unknown name fails before anything is read
    spec = read_run_spec(results)
    if spec is None or spec.kind != "score":
        what = f"a dualcam {spec.kind} output" if spec else f"without {results.rstrip('/')}/{RUN_FILE}"
        raise ValueError(f"{results}: {what}; evaluate needs the output of dualcam score")
    table = read_results(results)
    if "label" not in table.column_names:
        raise ValueError(f"{results}: the results have no 'label' column; score a manifest with uri and label columns")
    if split and "split" in table.column_names:
        table = table.filter(pc.equal(table.column("split"), split))
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    c1 = ok.filter(pc.equal(ok.column("label"), spec.first.class_name))
    if c1.num_rows == 0:
        where = f" in split {split!r}" if split else ""
        raise ValueError(f"{results}: no {spec.first.class_name!r} images scored ok{where}")
    known: dict[tuple[str, str], list[Box]] = {}
    for uri, found in read_boxes(boxes).items():
        for kind, box in found:
            known.setdefault((uri, kind), []).append(box)
    kinds = map_kinds(alphas, kernels)
    per_image = _localize(c1, known, kinds, boxes, spec)
    cam1, cam2, stored = (_maps(c1, name) for name in ("cam1", "cam2", "heatmap"))
    recomputed = get_kernel("addk")(cam1, cam2, spec.alpha)
    correlation = localization.cam_correlation(cam1, cam2).numpy()
    return {
        "results": results,
        "boxes": boxes,
        "class_of_interest": spec.first.class_name,
        "overlapping_class": spec.second.class_name,
        "split": split if split and "split" in table.column_names else None,
        "images": c1.num_rows,
        "cam_grid": list(cam1.shape[-2:]),
        "scored_alpha": spec.alpha,
        "stored_heatmap_max_rel_error": float(((recomputed - stored).abs().amax((-2, -1))
                                               / stored.abs().amax((-2, -1)).clamp_min(1e-30)).max()),
        "cam_correlation": {"mean": _nan_stat(np.nanmean, correlation), "median": _nan_stat(np.nanmedian, correlation)},
        "localization": [_row(kind, per_image[i]) for i, kind in enumerate(kinds)],
        "overlap": _overlap_ranking(overlap(cam1, cam2).numpy(), per_image[0]),
        "experts": _experts(table, spec),
    }


def _overlap_ranking(scores: np.ndarray, cam1: dict[str, np.ndarray]) -> dict[str, Any]:
    """Does the overlap score flag the images where CAM1 rests on the shared feature? The scores
    of the images where CAM1's peak is in the S box and of those where it is in the F1 box, and
    the AUC of ranking the first above the second (``overlap_auc``)."""
    at_s = (cam1["pointing_S"] == 1) & (cam1["pointing_F1"] != 1)
    at_f1 = (cam1["pointing_F1"] == 1) & (cam1["pointing_S"] != 1)
    ranking = {"scores_at_S": scores[at_s].tolist(), "scores_at_F1": scores[at_f1].tolist()}
    return {"mean": _nan_stat(np.nanmean, scores), "cam1_points_at_S": int(at_s.sum()),
            "cam1_points_at_F1": int(at_f1.sum()), "auc_S_over_F1": overlap_auc([ranking]), **ranking}


def overlap_auc(rankings: Sequence[dict[str, Any]]) -> float | None:
    """AUC of the overlap score ranking CAM1-on-S images above CAM1-on-F1 images, pooled over
    ``rankings`` (evaluations' ``overlap`` entries); None unless both kinds of image occur."""
    at_s = [v for r in rankings for v in r["scores_at_S"]]
    at_f1 = [v for r in rankings for v in r["scores_at_F1"]]
    auc = roc_auc(np.array([True] * len(at_s) + [False] * len(at_f1)), np.array(at_s + at_f1))
    return None if auc != auc else auc


def _localize(
    c1: pa.Table, known: dict, kinds: list[MapKind], boxes_uri: str, spec: RunSpec,
) -> list[dict[str, np.ndarray]]:
    """Per kind, per target and measure: one value per image (NaN where the target has no box).

    An image's target is the union of its boxes of that kind, within the part of the image the experts saw
    (``RunSpec.window``: all of it unless they take a centre crop), which the maps cover."""
    uris = c1.column("uri").to_pylist()
    missing = [u for u in uris if (u, "F1") not in known]
    if missing:
        raise ValueError(f"{boxes_uri}: no F1 box for {len(missing)} of the {len(uris)} images, e.g. {missing[0]}")
    out = [{f"{m}_{t}": np.full(len(uris), np.nan) for t in TARGETS for m in MEASURES} for _ in kinds]
    sizes = list(zip(c1.column("height").to_pylist(), c1.column("width").to_pylist()))
    for size in sorted(set(sizes)):
        index = np.flatnonzero([s == size for s in sizes])
        for chunk in np.array_split(index, max(1, math.ceil(len(index) / _CHUNK))):
            rows = c1.take(pa.array(chunk))
            cam1, cam2 = _maps(rows, "cam1"), _maps(rows, "cam2")
            boxes = {t: [known.get((uris[i], t), []) for i in chunk] for t in TARGETS}
            top, left, bottom, right = spec.window(*size)
            targets = {t: localization.box_masks(boxes[t], size)[:, top:bottom, left:right] for t in TARGETS}
            for k, kind in enumerate(kinds):
                maps = kind.make(cam1, cam2, targets["F1"])
                for target in TARGETS:
                    have = [j for j, b in enumerate(boxes[target]) if b]
                    if not have:
                        continue
                    values = localization.measure(maps[have], targets[target][have])
                    for measure, v in values.items():
                        out[k][f"{measure}_{target}"][chunk[have]] = v.numpy()
    return out


def _maps(table: pa.Table, column: str) -> torch.Tensor:
    return torch.tensor(to_numpy(table.column(column)))  # a copy: Arrow's buffers are read-only


def _row(kind: MapKind, values: dict[str, np.ndarray]) -> dict[str, Any]:
    row: dict[str, Any] = {"map": kind.name, "alpha": kind.alpha, "origin": kind.origin}
    return row | {name: _nan_stat(np.nanmean, v) for name, v in values.items()}


def _nan_stat(stat: Callable, values: np.ndarray) -> float | None:
    """A statistic over the finite values; None (JSON null) when there are none."""
    values = np.asarray(values, dtype=np.float64)
    return float(stat(values)) if np.isfinite(values).any() else None


def _experts(table: pa.Table, spec: Any) -> list[dict[str, Any]]:
    """Each expert on the split: its class against all other labels, and its positive rate per label."""
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    labels = np.array(ok.column("label").to_pylist(), dtype=object)
    rows = []
    for name, expert in (("p1", spec.first), ("p2", spec.second)):
        probs = ok.column(name).to_numpy()
        row: dict[str, Any] = {"expert": expert.class_name, "version": expert.version}
        row |= binary_metrics(labels == expert.class_name, probs)
        row |= {f"positive_rate_{label}": float(np.mean(probs[labels == label] >= 0.5))
                for label in sorted(set(labels))}
        rows.append(row)
    return rows


def format_table(evaluation: dict[str, Any]) -> str:
    """The localization rows as a fixed-width table for people."""
    header = f"{'map':16s} {'alpha':>5s} | " + " ".join(f"{_SHORT[m] + ' ' + t:>9s}" for t in TARGETS for m in MEASURES)
    lines = [f"localization of {evaluation['class_of_interest']} on {evaluation['images']} images "
             f"(CAM grid {'x'.join(map(str, evaluation['cam_grid']))}); F1 = its own feature, S = the shared one; "
             "PG = pointing game, E = energy in box, IoU = of the top region", header, "-" * len(header)]
    for row in evaluation["localization"]:
        alpha = "" if row["alpha"] is None else f"{row['alpha']:g}"
        cells = " ".join(f"{format_number(row[f'{m}_{t}']):>9s}" for t in TARGETS for m in MEASURES)
        lines.append(f"{row['map']:16s} {alpha:>5s} | {cells}")
    corr = evaluation["cam_correlation"]
    lines.append(f"CAM1-CAM2 correlation: mean {format_number(corr['mean'])}, median {format_number(corr['median'])}")
    o = evaluation["overlap"]
    lines.append(f"overlap (share of CAM1's evidence expert 2 also claims): mean {format_number(o['mean'])}; "
                 f"CAM1 points at S in {o['cam1_points_at_S']} images, at F1 in {o['cam1_points_at_F1']}; "
                 f"AUC of overlap ranking the S ones first {format_number(o['auc_S_over_F1'])}")
    for e in evaluation["experts"]:
        rates = ", ".join(f"{k.removeprefix('positive_rate_')} {v:.2f}" for k, v in e.items()
                          if k.startswith("positive_rate_"))
        lines.append(f"expert {e['expert']}: accuracy {format_number(e['accuracy'])}, sensitivity "
                     f"{format_number(e['sensitivity'])}, specificity {format_number(e['specificity'])}, AUC "
                     f"{format_number(e['auc'])} (n {e['n']}); positive rate by label: {rates}")
    return "\n".join(lines)


def format_number(value: float | None) -> str:
    """A measure for people: three decimals, "–" when there is none (None or NaN)."""
    return "–" if value is None or value != value else f"{value:.3f}"
