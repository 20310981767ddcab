"""Run results: their Parquet schemas (versioned), building result tables, reading them back.

An output folder (local or s3://) holds Parquet files, one row per input, plus ``_run.json``, which
records the kind of run (``score`` or ``drift``), its two experts, alpha, precision and schema
version that every row was computed with (a rerun of another kind, with other experts, another
alpha or another precision into the same folder is refused), and where the experts' input lies in
an image (``input``: ``imaging.InputGeometry``, so that render, evaluate and the drift page put maps
over the part of an image the model saw; absent before it was recorded: the whole image). A ``_run.json`` written before
precision was recorded reads as ``fp32``: what dualcam computed before then, on CPU (on CUDA it
used bf16 autocast; such a folder should not be resumed with this version). Files whose names
start with ``_`` or ``.`` are not data; pyarrow, pandas and DuckDB skip them by default.

Both kinds share one frame: ``uri, status, error, error_kind, input_version, width, height`` first; then the kind's own
columns (``Layout.computed``); then ``alpha``, ``<role>_class, <role>_version, <role>_sha256``
for each of the two experts, ``scored_at`` and ``schema_version``; then the manifest's columns.

**Score** (``dualcam score``; experts ``c1``, ``c2``), schema version 4, in column order:

==================  ==============================  ================================================
column              type                            meaning
==================  ==============================  ================================================
uri                 string                          the input file
status              string                          ``ok`` or ``error``
error               string                          why the input could not be scored; null when ok
error_kind          string                          ``transient`` (no answer, throttling, a server
                                                    or device error: the next run into the output
                                                    tries the input again) or ``permanent`` (not an
                                                    image, undecodable, absent...: tried again only
                                                    with ``--retry-errors``); null when ok
input_version       string                          which version of the input this row scored:
                                                    ``<size>:<mtime_ns>`` of a file, the ETag of an
                                                    S3 object; null for a DICOMweb instance (its
                                                    UID never names other bytes). A run rescores
                                                    an input listed with another version
width, height       int32                           image size in pixels; null when undecodable
p1, p2              float32                         in-class probability of expert 1 and expert 2
cam1, cam2          fixed_shape_tensor float32      raw in-class CAMs (h, w), before any scaling
heatmap             fixed_shape_tensor float32      ADDK(cam1, cam2) at ``alpha``, (h, w)
heatmap_max         float32                         max of ``heatmap`` on its (h, w) grid
overlap             float32                         how much of expert 1's positive evidence expert
                                                    2 also claims, 0 to 1: the share of ReLU(cam1)'s
                                                    mass on the grid cells where cam2's positive part
                                                    divided by its peak is at least cam1's (0 when
                                                    cam1 has no positive value; ``kernel.overlap``)
peak_x, peak_y      int32                           the peak of the upsampled heatmap, image pixels
box_x, box_y,       int32                           box around the heatmap's top region (see
box_w, box_h                                        ``dualcam.maps.regions.TOP_REGION``), image pixels
alpha               float32                         ADDK amplification
c1_class, c1_version, c1_sha256                     identity of expert 1 (class of interest)
c2_class, c2_version, c2_sha256                     identity of expert 2 (overlapping class)
scored_at           timestamp[us, UTC]              when the batch was scored
schema_version      int16                           4
...                                                 manifest columns, passed through unchanged
==================  ==============================  ================================================

Version 3 had the same columns but ``input_version``, version 2 neither it nor ``error_kind``, version 1
none of them nor ``overlap``. Their outputs
stay readable (``read_results``,
``dualcam evaluate`` and ``dualcam render`` recompute the overlap from the stored CAMs), but are
never extended: a rerun into such a folder is refused (its ``_run.json`` names the old schema).

**Drift** (``dualcam drift``; experts ``old``, ``new``: two versions of one expert), schema
version 3 (version 2 lacked ``input_version``, version 1 ``error_kind`` too); the measures are
defined, with their ranges, in ``dualcam.maps.drift_measures``:

==========================  ==========================  ========================================
column                      type                        meaning
==========================  ==========================  ========================================
uri, status, error,         as above
error_kind, input_version,
width, height
p_old, p_new                float32                     in-class probability of each version
cam_old, cam_new            fixed_shape_tensor float32  raw in-class CAMs (h, w)
gained                      fixed_shape_tensor float32  ADDK(ReLU(cam_new), ReLU(cam_old)): where
                                                        the new version gained attention
lost                        fixed_shape_tensor float32  ADDK(ReLU(cam_old), ReLU(cam_new)): where
                                                        it lost it (1 / gained, but for the
                                                        saturation beyond exp(60) in ``kernel``)
cam_correlation             float32                     Pearson correlation of the two CAMs
peak_shift_px               float32                     distance between their peaks, image pixels
extra_mass_outside_old_top  float32                     attention moved out of the old top region
delta_p                     float32                     p_new - p_old
gained_peak_x,              int32                       the peak of the upsampled ``gained``,
gained_peak_y                                           image pixels
alpha, old_class, old_version, old_sha256, new_class, new_version, new_sha256, scored_at,
schema_version, manifest columns: as above
==========================  ==========================  ========================================

Score and array columns are null in error rows. Peaks and boxes are computed on maps upsampled
(bilinear) to the model's input size and mapped to image pixels, so they are exact to within one
input pixel (image side / input size image pixels).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dualcam.io import storage
from dualcam.io.checkpoints import ExpertMeta
from dualcam.io.imaging import InputGeometry, image_window
from dualcam.maps.numerics import DEFAULT_PRECISION, check_precision

RUN_FILE = "_run.json"
FLOAT, INT, TENSOR = "float32", "int32", "tensor"
"""Types of computed columns: a float32 or int32 per row, or an (h, w) float32 map per row."""
VERSION = "input_version"
"""The column that says which version of its input a row scored (``storage.Read.version``)."""
_FRAME_HEAD = ("uri", "status", "error", "error_kind", VERSION, "width", "height")
TRANSIENT, PERMANENT = "transient", "permanent"
"""The two kinds of error row (``error_kind``): tried again by the next run, or only when asked to."""
_ID_FIELDS = ("class", "version", "sha256")


@dataclass(frozen=True)
class Layout:
    """What one kind of run writes: the roles of its two experts and its own columns, in order."""

    kind: str
    roles: tuple[str, str]
    computed: tuple[tuple[str, str], ...]
    """(name, FLOAT | INT | TENSOR) of each column the scorer computes."""
    schema_version: int = 1

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column a result row has before the manifest's, in order."""
        ids = tuple(f"{role}_{field}" for role in self.roles for field in _ID_FIELDS)
        return (*_FRAME_HEAD, *(name for name, _ in self.computed), "alpha", *ids, "scored_at", "schema_version")

    def empty(self, grid: tuple[int, int]) -> dict[str, np.ndarray]:
        """Zero rows of every computed column: what a batch with no readable image scores."""
        shapes = {FLOAT: ((0,), np.float32), INT: ((0,), np.int32), TENSOR: ((0, *grid), np.float32)}
        return {name: np.zeros(*shapes[kind]) for name, kind in self.computed}


SCORE = Layout("score", ("c1", "c2"), (
    ("p1", FLOAT), ("p2", FLOAT), ("cam1", TENSOR), ("cam2", TENSOR), ("heatmap", TENSOR), ("heatmap_max", FLOAT),
    ("overlap", FLOAT), *((name, INT) for name in ("peak_x", "peak_y", "box_x", "box_y", "box_w", "box_h")),
), schema_version=4)
DRIFT = Layout("drift", ("old", "new"), (
    ("p_old", FLOAT), ("p_new", FLOAT), ("cam_old", TENSOR), ("cam_new", TENSOR), ("gained", TENSOR), ("lost", TENSOR),
    ("cam_correlation", FLOAT), ("peak_shift_px", FLOAT), ("extra_mass_outside_old_top", FLOAT), ("delta_p", FLOAT),
    ("gained_peak_x", INT), ("gained_peak_y", INT),
), schema_version=3)
LAYOUTS = {layout.kind: layout for layout in (SCORE, DRIFT)}
SCHEMA_VERSION = SCORE.schema_version
OUTPUT_COLUMNS = SCORE.columns
"""The columns of ``dualcam score`` results."""


@dataclass(frozen=True)
class ExpertId:
    """What identifies an expert in results: its class, version and weights hash."""

    class_name: str
    version: str
    sha256: str

    @classmethod
    def of(cls, meta: ExpertMeta) -> ExpertId:
        return cls(meta.class_name, meta.version, meta.sha256)


@dataclass(frozen=True)
class RunSpec:
    """What every row in one output folder was computed with (``_run.json``).

    ``first`` and ``second`` are the run's two experts in its layout's role order
    (``layout.roles``): experts 1 and 2 (``c1``, ``c2``) of a score run, the old and the new
    version of a drift run.
    """

    first: ExpertId
    second: ExpertId
    alpha: float
    schema_version: int = SCHEMA_VERSION
    kind: str = SCORE.kind
    precision: str = DEFAULT_PRECISION
    """How the forward passes computed (``dualcam.maps.numerics``)."""
    geometry: InputGeometry | None = field(default=None, compare=False)
    """Where both experts' input lies in an image (``_run.json``'s ``input``); None for runs recorded before it
    was, read as the whole image. Not compared: the experts' versions already fix it."""

    @classmethod
    def of(
        cls, layout: Layout, meta1: ExpertMeta, meta2: ExpertMeta, alpha: float, precision: str = DEFAULT_PRECISION,
    ) -> RunSpec:
        return cls(ExpertId.of(meta1), ExpertId.of(meta2), float(alpha), layout.schema_version, layout.kind,
                   check_precision(precision), InputGeometry.of(meta1))

    def window(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) in an image of that size: the part the experts saw (``imaging.image_window``);
        all of it for runs that did not record their geometry."""
        return image_window(self.geometry, height, width) if self.geometry else (0, 0, height, width)

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.kind]

    @property
    def experts(self) -> tuple[ExpertId, ExpertId]:
        return self.first, self.second

    def to_json(self) -> str:
        roles = dict(zip(self.layout.roles, map(asdict, self.experts)))
        spec = {"kind": self.kind, **roles, "alpha": self.alpha, "precision": self.precision,
                "schema_version": self.schema_version, **({"input": asdict(self.geometry)} if self.geometry else {})}
        return json.dumps(spec, indent=2)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        data = json.loads(text)
        kind = data.get("kind", SCORE.kind)  # folders scored before drift runs existed
        if kind not in LAYOUTS:
            raise ValueError(f"{RUN_FILE} names an unknown kind of run {kind!r}; upgrade dualcam")
        first, second = (ExpertId(**data[role]) for role in LAYOUTS[kind].roles)
        precision = data.get("precision", DEFAULT_PRECISION)  # folders scored before precision was recorded
        geometry = InputGeometry(**data["input"]) if "input" in data else None  # and before the input's geometry
        return cls(first, second, float(data["alpha"]), int(data["schema_version"]), kind, precision, geometry)

    def describe(self) -> str:
        """One line for messages: the kind, both experts, alpha, precision and schema."""
        pair = " / ".join(f"{role} {e.class_name} {e.version}" for role, e in zip(self.layout.roles, self.experts))
        return f"{self.kind}: {pair}, alpha {self.alpha:g}, {self.precision}, schema {self.schema_version}"

    def constant_columns(self) -> dict[str, Any]:
        ids = {f"{role}_{field}": getattr(e, "class_name" if field == "class" else field)
               for role, e in zip(self.layout.roles, self.experts) for field in _ID_FIELDS}
        return {"alpha": self.alpha, **ids, "schema_version": self.schema_version}


def tensor_array(arrays: np.ndarray, valid: np.ndarray | None = None) -> pa.ExtensionArray:
    """(N, *shape) float32 -> Arrow's canonical ``fixed_shape_tensor``; rows where ``valid`` is False are null."""
    arrays = np.ascontiguousarray(arrays, dtype=np.float32)
    n, shape = arrays.shape[0], arrays.shape[1:]
    size = int(np.prod(shape))
    mask = None if valid is None else pa.array(~np.asarray(valid, dtype=bool))
    storage_array = pa.FixedSizeListArray.from_arrays(pa.array(arrays.reshape(n * size)), size, mask=mask)
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.float32(), list(shape)), storage_array)


def to_numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A tensor column -> (N, *shape) float32 numpy, NaN in null rows. No Ray needed."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    shape = column.type.shape
    values = column.storage.flatten().to_numpy(zero_copy_only=False) if column.null_count == 0 else None
    if values is not None:
        return values.reshape(len(column), *shape)
    out = np.full((len(column), *shape), np.nan, dtype=np.float32)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    out[valid] = column.filter(column.is_valid()).storage.flatten().to_numpy().reshape(-1, *shape)
    return out


def result_table(
    inputs: pa.Table, ok: np.ndarray, errors: Sequence[str | None], scores: dict[str, np.ndarray],
    spec: RunSpec, scored_at: np.datetime64, grid: tuple[int, int],
) -> pa.Table:
    """One result row per input row, in the columns of ``spec``'s layout, then the input's other columns.

    ``inputs`` has ``uri``, ``width``, ``height``, pass-through columns and, optionally, ``error_kind``
    (of each failed row, ``error_kind_of``; ``PERMANENT`` where it is missing); ``ok`` (N,) says
    which rows ``scores`` covers (its arrays hold only those rows, in order); ``errors`` holds the
    reason for every row that is not ok.
    """
    n = inputs.num_rows
    kinds = inputs.column("error_kind") if "error_kind" in inputs.column_names else pa.nulls(n, pa.string())
    columns: dict[str, pa.Array] = {
        "uri": inputs.column("uri"),
        "status": pa.array(np.where(ok, "ok", "error"), pa.string()),
        "error": pa.array(list(errors), pa.string()),
        "error_kind": pc.if_else(pa.array(ok), pa.scalar(None, pa.string()), pc.fill_null(kinds, PERMANENT)),
        VERSION: inputs.column(VERSION) if VERSION in inputs.column_names else pa.nulls(n, pa.string()),
    }
    for name in ("width", "height"):
        columns[name] = inputs.column(name).cast(pa.int32())
    for name, kind in spec.layout.computed:
        if kind == TENSOR:
            full = np.zeros((n, *grid), np.float32)
            full[ok] = scores[name]
            columns[name] = tensor_array(full, ok)
        else:
            columns[name] = _scatter(scores[name], ok, pa.float32() if kind == FLOAT else pa.int32())
    for name, value in spec.constant_columns().items():
        columns[name] = pa.array([value] * n, _CONSTANT_TYPES.get(name, pa.string()))
    columns["scored_at"] = pa.array(np.full(n, scored_at, "datetime64[us]"), pa.timestamp("us", tz="UTC"))
    ordered = {name: columns[name] for name in spec.layout.columns}
    for name in inputs.column_names:
        if name not in ordered and name not in _LOADER_COLUMNS:
            ordered[name] = inputs.column(name)
    return pa.table(ordered)


_CONSTANT_TYPES = {"alpha": pa.float32(), "schema_version": pa.int16()}  # expert ids: strings
_LOADER_COLUMNS = ("pixels", "width", "height", "error", "error_kind", "data")


def _scatter(values: np.ndarray, ok: np.ndarray, dtype: pa.DataType) -> pa.Array:
    full = np.zeros(len(ok), values.dtype if len(values) else np.float64)
    full[ok] = values
    return pa.array(full, dtype, mask=~ok)


def check_passthrough(column_names: Sequence[str], layout: Layout = SCORE) -> None:
    """Refuse manifest columns that would clash with result columns (a clear error before any work)."""
    clashes = sorted(set(column_names) & (set(layout.columns) | set(_LOADER_COLUMNS)) - {"uri", VERSION})
    if clashes:
        raise ValueError(f"manifest columns {', '.join(clashes)} clash with dualcam's result columns; rename them")


def data_files(output: str) -> list[str]:
    """The Parquet files of an output folder (hidden and ``_`` files excluded); [] if absent."""
    try:
        files = storage.list_files(output)
    except FileNotFoundError:
        return []
    return [f for f in files if f.endswith(".parquet") and not _hidden(f, output)]


def _hidden(uri: str, root: str) -> bool:
    relative = uri[len(root.rstrip("/")) + 1:]
    return any(part.startswith(("_", ".")) for part in relative.split("/"))


READ_WORKERS = 16
"""Result files read at once: a resumed run of 10 million inputs reads about 10,000 of them."""


def read_results(
    output: str, columns: Sequence[str] | None = None, uris: Sequence[str] | None = None, warn_duplicates: bool = True,
) -> pa.Table:
    """Every row of an output folder as one Arrow table (only the rows of ``uris`` when given, so
    a few rows' maps can be read without holding the whole folder's in memory).

    Only the ``columns`` asked for are read, from S3 too (ranged reads of those column chunks: a
    resume reads the ``uri`` column, a twentieth of a score row), and files are read
    ``READ_WORKERS`` at a time. A file that is not valid Parquet (only a foreign or damaged one:
    dualcam's writes appear whole) is skipped with a warning; a file that cannot be read (S3
    throttling, say) raises, so a resumed run never mistakes unread rows for missing ones. An
    input on more than one row (two runs that wrote into one output at once, before leases) is
    warned about, naming the repair, unless ``warn_duplicates`` is False (or ``uri`` is not read).
    """
    parts = list(read_results_in_parts(output, columns, uris, rows=None))
    if not parts:
        return pa.table({name: pa.array([], pa.string()) for name in (columns or ["uri", "status"])})
    table = parts[0]
    if warn_duplicates and "uri" in table.column_names and (repeated := duplicate_rows(table)):
        warnings.warn(f"{output}: {repeat_message(repeated, output)}", stacklevel=2)
    return table


def read_results_in_parts(
    output: str, columns: Sequence[str] | None = None, uris: Sequence[str] | None = None, rows: int | None = None,
) -> Iterator[pa.Table]:
    """``read_results`` a part at a time: tables of at least ``rows`` rows each (the last may hold fewer),
    or one table of all rows when ``rows`` is None; nothing for an empty folder."""
    def read(uri: str) -> pa.Table | None:
        try:
            return _read_parquet(uri, columns=list(columns) if columns else None,
                                 filters=None if uris is None else [("uri", "in", list(uris))])
        except pa.ArrowInvalid as err:
            if "No match for FieldRef" in str(err):  # a dualcam file, of an older schema: never to be skipped
                raise ValueError(f"{uri}: lacks one of the columns {', '.join(columns or [])} of this schema "
                                 "(written by an older dualcam?)") from None
            warnings.warn(f"{uri}: skipped, not a readable Parquet file ({err})", stacklevel=4)
            return None

    files = data_files(output)
    part: list[pa.Table] = []
    with ThreadPoolExecutor(max(1, min(READ_WORKERS, len(files)))) as pool:
        for start in range(0, len(files), READ_WORKERS):
            part += [table for table in pool.map(read, files[start:start + READ_WORKERS]) if table is not None]
            if rows is not None and sum(t.num_rows for t in part) >= rows:
                yield pa.concat_tables(part, promote_options="permissive")
                part = []
    if part:
        yield pa.concat_tables(part, promote_options="permissive")


def duplicate_rows(table: pa.Table) -> int:
    """How many rows of ``table`` repeat the ``uri`` of another row: 0 when each input is there once."""
    return table.num_rows - len(pc.unique(table.column("uri")))


def repeat_message(repeated: int, output: str) -> str:
    """What to say of an output with ``repeated`` rows too many, and how to repair it."""
    return (f"{repeated} rows repeat an input that is already in the output (two runs wrote into it at once?); "
            f"`dualcam repair --output {output}` keeps one row per input")


def error_kind_of(err: BaseException) -> str:
    """``TRANSIENT`` for a failure a later try may not meet (``storage.is_transient``), else ``PERMANENT``."""
    return TRANSIENT if storage.is_transient(err) else PERMANENT


def retried(status: pa.ChunkedArray | pa.Array, kind: pa.ChunkedArray | pa.Array, retry_errors: bool) -> pa.Array:
    """Which rows a new run tries again: transient error rows, or every error row with ``retry_errors``."""
    failed = pc.equal(status, "error")
    return failed if retry_errors else pc.and_(failed, pc.fill_null(pc.equal(kind, TRANSIENT), False))


def drop_rows_to_redo(output: str, retry_errors: bool = False, changed: pa.Array | None = None) -> int:
    """Rewrite each file of ``output`` that holds rows to score again without them: error rows to try
    again (``retried``) and the rows of the inputs ``changed`` (URIs) since they were scored; returns
    how many went.

    Each file is replaced whole (atomically), so at every moment each input is in the output
    once or not at all: a run that then stops leaves the dropped inputs to the next run.
    """
    dropped, by_uri = 0, changed is not None and len(changed) > 0
    for uri in data_files(output):
        rows = _read_parquet(uri, columns=["status", "error_kind"] + (["uri"] if by_uri else []))
        again = retried(rows.column("status"), rows.column("error_kind"), retry_errors)
        if by_uri:  # the URI column, the bulk of a file's bytes, only read when needed
            again = pc.or_(again, pc.is_in(rows.column("uri"), value_set=changed))
        count = pc.sum(again).as_py() or 0
        if count:
            _rewrite_keeping(uri, pc.invert(again))
            dropped += count
    return dropped


def drop_duplicates(output: str) -> int:
    """Keep one row per input in ``output``; returns how many rows went.

    The row kept is the input's first ok row, else its first error row (files in name order).
    Files are rewritten whole, one at a time (a file left with no rows is deleted), and a kept
    row is never touched, so at every moment each input is in the output at least once.
    """
    files = data_files(output)
    tables = [_read_parquet(uri, columns=["uri", "status"]) for uri in files]
    if not tables:
        return 0
    rows = pa.concat_tables(tables)
    index = np.arange(rows.num_rows, dtype=np.int64)
    # an error row ranks after every ok row; then the order of files and rows
    rank = np.where(pc.equal(rows.column("status"), "ok").to_numpy(zero_copy_only=False), 0, rows.num_rows) + index
    first = pa.table({"uri": rows.column("uri"), "rank": rank}).group_by("uri").aggregate([("rank", "min")])
    kept = np.zeros(rows.num_rows, dtype=bool)
    kept[first.column("rank_min").to_numpy() % rows.num_rows] = True
    start = 0
    for uri, table in zip(files, tables):
        keep = kept[start:start + table.num_rows]
        start += table.num_rows
        if not keep.all():
            _rewrite_keeping(uri, pa.array(keep))
    return int((~kept).sum())


def _rewrite_keeping(uri: str, keep: pa.Array) -> None:
    """Replace the data file at ``uri`` by its rows where ``keep`` is true, whole; delete it if none are."""
    table = _read_parquet(uri).filter(keep)
    if table.num_rows == 0:
        storage.delete(uri)
        return
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    storage.write_bytes(uri, buf.getvalue().to_pybytes())


def _read_parquet(uri: str, **options: Any) -> pa.Table:
    path, filesystem = storage.arrow_source(uri)
    return pq.read_table(path, filesystem=filesystem, **options)


def read_run_spec(output: str) -> RunSpec | None:
    """The ``_run.json`` of an output folder, or None for a new folder."""
    uri = storage.join(output, RUN_FILE)
    return RunSpec.from_json(storage.read_bytes(uri).decode()) if storage.exists(uri) else None
