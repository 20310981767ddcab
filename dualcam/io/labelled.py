"""Labelled images for training and evaluation: label manifests, two public data sets' layouts, the
60/20/20 split by patient, each expert's rows, and boxes files (known feature locations)."""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from dualcam.io import storage
from dualcam.io.imaging import is_image_name
from dualcam.io.inputs import (
    is_manifest,
    read_manifest,
    read_table,
    refuse_duplicates,
    resolve_entry,
    with_absolute_uris,
)
from dualcam.maps.regions import Box

BOX_COLUMNS = ("uri", "x", "y", "w", "h", "kind")


def read_boxes(uri: str) -> dict[str, list[tuple[str, Box]]]:
    """A boxes file (CSV/Parquet: uri, x, y, w, h, kind; image pixels) as {uri: [(kind, box)]}.

    Relative URIs are relative to the file, as in manifests; an image may have several boxes.
    """
    table = read_manifest(uri, unique=False)
    missing = [c for c in BOX_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{uri}: a boxes file needs columns {', '.join(BOX_COLUMNS)}; missing {', '.join(missing)}")
    if any(table.column(c).null_count for c in BOX_COLUMNS):
        raise ValueError(f"{uri}: a boxes file needs a value in every column of every row")
    found: dict[str, list[tuple[str, Box]]] = {}
    for row in table.select(list(BOX_COLUMNS)).to_pylist():
        x, y, w, h = (round(float(row[c])) for c in ("x", "y", "w", "h"))
        box = (x, y, w, h)
        found.setdefault(row["uri"], []).append((str(row["kind"]), box))
    return found


SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
"""The paper's 60/20/20 split, by images, of each label's patients."""
COVID_COLLECTION_COLUMNS = frozenset({"finding", "view", "filename", "patientid"})
KERMANY_LABELS = ("NORMAL", "PNEUMONIA")
_KERMANY_PATIENT = re.compile(r"^(person\d+|(?:NORMAL\d*-)?IM-\d+)", re.IGNORECASE)


@dataclass
class Labelled:
    """Labelled images: ``uri``, ``label``, optional ``patient_id`` and ``split``; what was left out and why."""

    table: pa.Table
    excluded: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def read_labelled(uri: str, views: Sequence[str] = ("PA",)) -> Labelled:
    """Labelled images from any supported layout, with missing files found and set apart.

    * a manifest (``.csv``/``.parquet``): ``uri``, ``label``, optional ``patient_id`` and ``split``;
    * the COVID-19 image data collection's ``metadata.csv`` (recognized by its columns), X-ray
      rows of the given ``views`` with a finding; label ``COVID-19`` for any finding naming it;
    * Kermany's chest_xray folder (``{train,val,test}/{NORMAL,PNEUMONIA}/``), patients from the
      file names; its own split is not used (it has 16 validation images): the 60/20/20 split is;
    * any other folder or prefix laid out as ``root/<label>/...``.
    """
    if is_manifest(uri):
        table = read_table(uri)
        covid = set(table.column_names) >= COVID_COLLECTION_COLUMNS
        labelled = _read_covid_collection(table, uri, views) if covid else _read_label_manifest(table, uri)
    else:
        labelled = _read_label_folders(uri)
    missing = set(find_missing(labelled.table.column("uri").to_pylist()))
    if missing:
        keep = pa.array([u not in missing for u in labelled.table.column("uri").to_pylist()])
        labelled.table = labelled.table.filter(keep)
        labelled.missing = sorted(missing)
    return labelled


def _read_label_manifest(table: pa.Table, uri: str) -> Labelled:
    table = with_absolute_uris(table, uri)
    refuse_duplicates(table.column("uri"), uri)
    if "label" not in table.column_names:
        raise ValueError(f"{uri}: a training manifest needs a 'label' column; it has {', '.join(table.column_names)}")
    columns = {"uri": table.column("uri"), "label": table.column("label").cast(pa.string())}
    for name in ("patient_id", "split"):
        if name in table.column_names:
            columns[name] = table.column(name).cast(pa.string())
    out = pa.table(columns)
    if out.column("label").null_count:
        raise ValueError(f"{uri}: {out.column('label').null_count} rows have no label")
    return Labelled(out)


def _read_covid_collection(table: pa.Table, uri: str, views: Sequence[str]) -> Labelled:
    rows = table.cast(pa.schema([(f.name, pa.string()) for f in table.schema])).to_pylist()
    kept: list[dict[str, str]] = []
    excluded: Counter[str] = Counter()
    for row in rows:
        finding = (row.get("finding") or "").strip()
        if (row.get("modality") or "X-ray") != "X-ray":
            excluded["not an X-ray"] += 1
        elif row.get("view") not in views:
            excluded[f"view not {'/'.join(views)}"] += 1
        elif finding in ("", "todo"):
            excluded["no finding recorded ('todo')"] += 1
        else:
            # 'COVID-19, ARDS' in older releases, 'Pneumonia/Viral/COVID-19' in newer ones
            label = "COVID-19" if "COVID-19" in [f.strip() for f in re.split(r"[,/]", finding)] else finding
            kept.append({"uri": resolve_entry(f"{row.get('folder') or 'images'}/{row['filename']}", uri),
                         "label": label, "patient_id": str(row["patientid"])})
    schema = pa.schema([("uri", pa.string()), ("label", pa.string()), ("patient_id", pa.string())])
    table = pa.Table.from_pylist(kept, schema=schema)
    return Labelled(table, dict(excluded))


def _read_label_folders(uri: str) -> Labelled:
    base = storage.absolute(uri).rstrip("/")
    files = [f for f in storage.list_files(base) if is_image_name(f)]
    parts = [f[len(base) + 1:].split("/") for f in files]
    kermany = [len(p) > 2 and p[0] in SPLITS and p[1].upper() in KERMANY_LABELS for p in parts]
    if {p[0] for p, k in zip(parts, kermany) if k} >= {"train", "test"}:
        labelled = _kermany([f for f, k in zip(files, kermany) if k], [p for p, k in zip(parts, kermany) if k])
        strays = len(files) - sum(kermany)
        if strays:
            labelled.excluded["outside {train,val,test}/{NORMAL,PNEUMONIA}/"] = strays
        return labelled
    if any(len(p) < 2 for p in parts):
        loose = next(f for f, p in zip(files, parts) if len(p) < 2)
        raise ValueError(f"{uri}: expected root/<label>/... folders, but {loose} lies directly under the root")
    labels = pa.array([p[0] for p in parts], pa.string())
    return Labelled(pa.table({"uri": pa.array(files, pa.string()), "label": labels}))


def _kermany(files: list[str], parts: list[list[str]]) -> Labelled:
    patients = []
    for f, p in zip(files, parts):
        match = _KERMANY_PATIENT.match(p[-1])
        patients.append(f"{p[1].upper()}/{match.group(1)}" if match else f)
    return Labelled(pa.table({
        "uri": pa.array(files, pa.string()),
        "label": pa.array([p[1].upper() for p in parts], pa.string()),
        "patient_id": pa.array(patients, pa.string()),
    }))


def find_missing(uris: Sequence[str]) -> list[str]:
    """The URIs that do not exist; S3 is listed once per folder rather than asked once per object."""
    local = [u for u in uris if not storage.is_s3(u)]
    missing = [u for u in local if not Path(u).is_file()]
    remote = [u for u in uris if storage.is_s3(u)]
    present: set[str] = set()
    for prefix in sorted({u.rsplit("/", 1)[0] for u in remote}):
        with contextlib.suppress(FileNotFoundError):  # an empty prefix: everything under it is missing
            present.update(storage.list_files(prefix))
    return missing + [u for u in remote if u not in present]


def assign_splits(table: pa.Table, seed: int = 0, fractions: Sequence[float] = SPLIT_FRACTIONS) -> pa.Table:
    """Give every row a ``split``: deterministic for ``seed``, stratified by label, grouped by patient.

    Rows that already have a split keep it, and so do the other rows of their patient. The rest
    are grouped by ``patient_id`` (each row is its own group without one); each group goes, as a
    whole, to one split, and within each label
    (a group's label is its most common) the groups are shuffled and laid end to end so that
    each split gets its fraction of the images. So no patient is in two splits.
    """
    n = table.num_rows
    given = table.column("split").to_pylist() if "split" in table.column_names else [None] * n
    bad = sorted({s for s in given if s is not None and s not in SPLITS})
    if bad:
        raise ValueError(f"unknown split values {', '.join(bad)}; use {', '.join(SPLITS)}")
    labels, uris = table.column("label").to_pylist(), table.column("uri").to_pylist()
    patients = table.column("patient_id").to_pylist() if "patient_id" in table.column_names else [None] * n
    splits = list(given)
    # a patient some of whose images already have a split takes it for the rest as well
    patient_split = {p: s for p, s in zip(patients, given) if p and s is not None}
    groups: dict[str, list[int]] = {}
    for i in range(n):
        if given[i] is None and patients[i] in patient_split:
            splits[i] = patient_split[patients[i]]
        elif given[i] is None:
            groups.setdefault(f"patient:{patients[i]}" if patients[i] else f"uri:{uris[i]}", []).append(i)
    by_label: dict[str, list[str]] = {}
    for key, rows in groups.items():
        label = Counter(labels[i] for i in rows).most_common(1)[0][0]
        by_label.setdefault(label, []).append(key)
    rng = np.random.default_rng(seed)
    edges = np.cumsum(fractions) / np.sum(fractions)
    for label in sorted(by_label):
        keys = sorted(by_label[label])
        keys = [keys[i] for i in rng.permutation(len(keys))]
        total, done = sum(len(groups[k]) for k in keys), 0
        for key in keys:
            middle = (done + len(groups[key]) / 2) / total
            split = SPLITS[min(int(np.searchsorted(edges, middle, side="right")), len(SPLITS) - 1)]
            for i in groups[key]:
                splits[i] = split
            done += len(groups[key])
    out = table.drop_columns(["split"]) if "split" in table.column_names else table
    return out.append_column("split", pa.array(splits, pa.string()))


def expert_rows(table: pa.Table, positive: str, negatives: Sequence[str] | None = None) -> pa.Table:
    """The rows one expert learns from, with ``target`` 1 for ``positive`` and 0 for the negatives.

    Negatives are every other label by default, or only the labels named; rows of other labels
    are left out. Raises if the class or a named negative label does not occur.
    """
    labels = table.column("label").to_pylist()
    counts = Counter(labels)
    available = ", ".join(f"{k} ({v})" for k, v in sorted(counts.items()))
    for name in [positive, *(negatives or [])]:
        if name not in counts:
            raise ValueError(f"no images labelled {name!r}; the labels are: {available}")
    negative_set = set(negatives) if negatives else set(counts) - {positive}
    keep = [label == positive or label in negative_set for label in labels]
    kept = table.filter(pa.array(keep))
    targets = [int(label == positive) for label in kept.column("label").to_pylist()]
    return kept.append_column("target", pa.array(targets, pa.int64()))


def split_counts(rows: pa.Table) -> dict[str, tuple[int, int]]:
    """(positives, negatives) per split of an expert's rows: the paper's Table I."""
    counts = Counter(zip(rows.column("split").to_pylist(), rows.column("target").to_pylist()))
    return {s: (counts[(s, 1)], counts[(s, 0)]) for s in SPLITS}
