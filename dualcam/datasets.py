"""What to score: the input files of an archive, from a folder, an s3:// prefix or a manifest."""

from __future__ import annotations

import contextlib
import posixpath
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dualcam import inventory, storage
from dualcam.imaging import image_names, is_image_name
from dualcam.regions import Box

MANIFEST_SUFFIXES = (".csv", ".parquet")
_TEXT_COLUMNS = ("uri", "patient_id", "patientid", "filename", "folder")
"""Identifiers read as text from CSV, never guessed: file ``0001`` and patient ``007`` keep their zeros."""


@dataclass
class Inputs:
    """The files to score (a ``uri`` column, plus any manifest columns to pass through)."""

    table: pa.Table
    skipped: pa.ChunkedArray = field(default_factory=lambda: pa.chunked_array([], pa.string()))
    """Files under a folder or prefix (or in an inventory) that were not taken because their names are not images'."""


def skipped_files(skipped: Sequence[str]) -> str:
    """How a run says which listed files it left out: "" when none, else how many and one of them."""
    if not skipped:
        return ""
    count = f"{len(skipped)} other file{'s' if len(skipped) > 1 else ''}"
    return f"{count} skipped (not an image's name), e.g. {skipped[0]}"


def is_manifest(uri: str) -> bool:
    return uri.lower().endswith(MANIFEST_SUFFIXES)


def read_inputs(uri: str) -> Inputs:
    """A manifest (CSV or Parquet with a ``uri`` column), an S3 Inventory report, or every image file under a
    folder/prefix.

    Folders and prefixes are listed recursively and sorted; image names are ``.png .jpg .jpeg
    .dcm .dicom .ima`` and DICOM-like names without an extension. Relative URIs in a manifest are
    taken relative to the manifest's folder. An inventory (its ``manifest.json``, or one of its
    Parquet files) lists the objects of a bucket as a listing would, without listing it
    (``dualcam.inventory``). Raises ``FileNotFoundError`` / ``StorageError`` when the location
    cannot be read and ``ValueError`` for a malformed manifest or inventory.
    """
    if inventory.is_inventory(uri):
        return _images(inventory.read_inventory(uri))
    if is_manifest(uri):
        return Inputs(read_manifest(uri))
    # Absolute, so that Ray workers (whose working directory may differ) find local files.
    return _images(storage.list_uris(storage.absolute(uri)))


def _images(files: pa.Array | pa.ChunkedArray) -> Inputs:
    """Listed files split into the images to score and the others, skipped."""
    files = files if isinstance(files, pa.ChunkedArray) else pa.chunked_array([files])
    images = image_names(files)
    if pc.all(images).as_py() is not False:  # the usual archive: no copy
        return Inputs(pa.table({"uri": files}))
    return Inputs(pa.table({"uri": files.filter(images)}), files.filter(pc.invert(images)))


def skipped_kinds(skipped: pa.Array) -> dict[str, int]:
    """How many skipped files of each kind: ``hidden``, or their suffix (``.txt``), most frequent first."""
    names = pc.utf8_lower(pc.replace_substring_regex(skipped, r"^.*/", ""))
    suffixes = pc.struct_field(pc.extract_regex(names, r"(?P<suffix>\.[^.]*)$"), [0])
    kinds = pc.if_else(pc.starts_with(names, "."), "hidden", suffixes)
    counts = pc.value_counts(kinds).to_pylist()
    return dict(sorted(((c["values"], c["counts"]) for c in counts), key=lambda kc: (-kc[1], kc[0])))


def read_manifest(uri: str, unique: bool = True) -> pa.Table:
    """The manifest's rows, ``uri`` made absolute; every other column passes through unchanged.

    Read batch by batch, each batch's URIs resolved as it arrives, so that the entries as written
    and the URIs they resolve to are never all in memory together. ``unique=False`` allows a URI
    on several rows (a boxes file: one row per box).
    """
    table = _read_table(uri, lambda batch: _with_absolute_uris(batch, uri))
    if "uri" not in table.column_names:  # a file with a header and no rows
        raise ValueError(f"{uri}: a manifest needs a 'uri' column; it has {', '.join(table.column_names)}")
    if unique:
        _refuse_duplicates(table.column("uri"), uri)
    return table


Batch = TypeVar("Batch", pa.RecordBatch, pa.Table)


class _LaterBlockDiffers(Exception):
    """A CSV block did not fit the column types inferred from the first: read the file whole instead."""


def _read_table(uri: str, each: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None) -> pa.Table:
    """A CSV or Parquet file as one Arrow table, streamed batch by batch from disk or S3 with ``each``
    applied to every batch as it arrives; identifier columns stay text.

    A CSV file is streamed too (``read_csv`` held twice the table at its peak here), with the column
    types inferred from its first block; should a later block not fit them (a column of numbers
    that turns to text), the file is read again whole, its types inferred from all of it.
    """
    try:
        try:
            return _read_batches(uri, each, whole=False)
        except _LaterBlockDiffers:
            return _read_batches(uri, each, whole=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such file or object") from None
    except pa.ArrowInvalid as err:
        raise ValueError(f"{uri}: not a readable manifest ({err})") from None


def _read_batches(uri: str, each: Callable[[pa.RecordBatch], pa.RecordBatch] | None, whole: bool) -> pa.Table:
    path, filesystem = storage.arrow_source(uri)
    filesystem = filesystem or pafs.LocalFileSystem()
    each = each or (lambda batch: batch)
    if uri.lower().endswith(".parquet"):
        with filesystem.open_input_file(path) as file:
            parquet = pq.ParquetFile(file)
            return _table([each(batch) for batch in parquet.iter_batches()], parquet.schema_arrow)
    options = {"parse_options": pacsv.ParseOptions(newlines_in_values=True),
               "convert_options": pacsv.ConvertOptions(strings_can_be_null=True,
                                                       column_types=dict.fromkeys(_TEXT_COLUMNS, pa.string()))}
    with filesystem.open_input_stream(path) as stream:
        if whole:
            table = pacsv.read_csv(stream, **options)
            return _table([each(batch) for batch in table.to_batches()], table.schema)
        with pacsv.open_csv(stream, **options) as reader:
            batches = []
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return _table(batches, reader.schema)
                except pa.ArrowInvalid as err:
                    raise _LaterBlockDiffers() from err
                batches.append(each(batch))


def _table(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_batches(batches) if batches else schema.empty_table()


def _with_absolute_uris(table: Batch, uri: str) -> Batch:
    """Check the ``uri`` column of (a part of) the manifest at ``uri`` and make its entries absolute."""
    if "uri" not in table.column_names:
        raise ValueError(f"{uri}: a manifest needs a 'uri' column; it has {', '.join(table.column_names)}")
    column = table.column("uri").cast(pa.string())
    if column.null_count or pc.any(pc.equal(column, "")).as_py():
        raise ValueError(f"{uri}: the 'uri' column has empty values")
    return table.set_column(table.column_names.index("uri"), "uri", resolve_uris(column, uri))


_CHUNK = 65_536


def _refuse_duplicates(uris: pa.ChunkedArray, manifest: str) -> None:
    repeated = duplicates(uris)
    if repeated:
        raise ValueError(f"{manifest}: {repeated[0]} URIs are listed more than once, e.g. {repeated[1]}")


def duplicates(uris: pa.ChunkedArray | pa.Array) -> tuple[int, str] | None:
    """(how many URIs occur more than once, the first of them in sorted order), or None.

    By sorting, not hashing: a hash table holds a second copy of every URI, the sort 8 bytes a row
    (its rows are compared a chunk at a time), and a manifest already sorted (most are generated
    so) needs no sort at all.
    """
    n = len(uris)
    in_order = n < 2 or not pc.any(pc.less(uris.slice(1), uris.slice(0, n - 1))).as_py()
    order = None if in_order else pc.sort_indices(uris)
    repeated = []
    for start in range(0, max(0, n - 1), _CHUNK):  # pieces overlap by a row: pairs across their borders count
        piece = uris.slice(start, _CHUNK + 1) if in_order else uris.take(order.slice(start, _CHUNK + 1))
        kept = piece.slice(1).filter(pc.equal(piece.slice(1), piece.slice(0, len(piece) - 1)))
        repeated += kept.chunks if isinstance(kept, pa.ChunkedArray) else [kept]
    repeated = pa.chunked_array(repeated, pa.string()).combine_chunks()
    if not len(repeated):
        return None
    distinct = 1 + (pc.sum(pc.not_equal(repeated.slice(1), repeated.slice(0, len(repeated) - 1))).as_py() or 0)
    return distinct, repeated[0].as_py()


# Entries that pathlib or posixpath.normpath would change: ".", ".." or empty parts, or a trailing "/".
_NOT_PLAIN = r"(^|/)\.{1,2}(/|$)|//|/$"


def resolve_uris(entries: pa.Array | pa.ChunkedArray, manifest: str) -> pa.Array:
    """Each manifest entry made absolute as ``_resolve`` does, in Arrow: s3:// URIs and absolute paths
    as they are, plain relative paths joined onto the manifest's folder, and the few entries with
    ``.``/``..``/empty parts through ``_resolve`` itself, so that both always agree."""
    if isinstance(entries, pa.ChunkedArray):
        entries = entries.combine_chunks()
    absolute = pc.or_(pc.starts_with(entries, "s3://"), pc.starts_with(entries, "/"))
    folder = _resolve("x", manifest)[:-1]  # what _resolve puts before a plain name
    if not pc.any(absolute).as_py():  # one copy, not two: if_else would copy what was joined
        joined = pc.binary_join_element_wise(folder, entries, "")
    elif pc.all(absolute).as_py():
        joined = entries
    else:
        joined = pc.if_else(absolute, entries, pc.binary_join_element_wise(folder, entries, ""))
    odd = pc.and_not(pc.match_substring_regex(entries, _NOT_PLAIN), absolute)
    if not pc.any(odd).as_py():
        return joined
    fixed = [_resolve(entry, manifest) for entry in entries.filter(odd).to_pylist()]
    return pc.replace_with_mask(joined, odd, pa.array(fixed, pa.string()))


def _resolve(entry: str, manifest: str) -> str:
    if storage.is_s3(entry) or PurePosixPath(entry).is_absolute():
        return entry
    if storage.is_s3(manifest):
        bucket, key = storage.split_s3(manifest)
        return f"s3://{bucket}/" + posixpath.normpath(posixpath.join(posixpath.dirname(key), entry)).lstrip("/")
    return str(Path(manifest).resolve().parent / entry)


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
        box = tuple(round(float(row[c])) for c in ("x", "y", "w", "h"))
        found.setdefault(row["uri"], []).append((str(row["kind"]), box))
    return found


# --- Labelled data for training -------------------------------------------------------------

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
        table = _read_table(uri)
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
    table = _with_absolute_uris(table, uri)
    _refuse_duplicates(table.column("uri"), uri)
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
    kept, excluded = [], Counter()
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
            kept.append({"uri": _resolve(f"{row.get('folder') or 'images'}/{row['filename']}", uri),
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
