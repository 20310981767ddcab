"""The scoring results: their Parquet schema (versioned), building result tables, reading them back.

An output folder (local or s3://) holds Parquet files, one row per input, plus ``_run.json``, which
records the experts, alpha and schema version that every row was scored with (a rerun with other
experts or another alpha into the same folder is refused). Files whose names start with ``_`` or
``.`` are not data; pyarrow, pandas and DuckDB skip them by default.

Schema version 1, in column order:

==================  ==============================  ================================================
column              type                            meaning
==================  ==============================  ================================================
uri                 string                          the input file
status              string                          ``ok`` or ``error``
error               string                          why the input could not be scored; null when ok
width, height       int32                           image size in pixels; null when undecodable
p1, p2              float32                         in-class probability of expert 1 and expert 2
cam1, cam2          fixed_shape_tensor float32      raw in-class CAMs (h, w), before any scaling
heatmap             fixed_shape_tensor float32      ADDK(cam1, cam2) at ``alpha``, (h, w)
heatmap_max         float32                         max of ``heatmap`` on its (h, w) grid
peak_x, peak_y      int32                           the peak of the upsampled heatmap, image pixels
box_x, box_y,       int32                           box around the heatmap's top region (see
box_w, box_h                                        ``dualcam.regions.TOP_REGION``), image pixels
alpha               float32                         ADDK amplification
c1_class, c1_version, c1_sha256                     identity of expert 1 (class of interest)
c2_class, c2_version, c2_sha256                     identity of expert 2 (overlapping class)
scored_at           timestamp[us, UTC]              when the batch was scored
schema_version      int16                           1
...                                                 manifest columns, passed through unchanged
==================  ==============================  ================================================

Score and array columns are null in error rows. Peak and box are computed on the heatmap
upsampled (bilinear) to the model's input size and mapped to image pixels, so they are exact to
within one input pixel (image side / input size image pixels).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dualcam import storage
from dualcam.experts import ExpertMeta

SCHEMA_VERSION = 1
RUN_FILE = "_run.json"
TENSOR_COLUMNS = ("cam1", "cam2", "heatmap")
OUTPUT_COLUMNS = (
    "uri", "status", "error", "width", "height", "p1", "p2", *TENSOR_COLUMNS, "heatmap_max",
    "peak_x", "peak_y", "box_x", "box_y", "box_w", "box_h", "alpha",
    "c1_class", "c1_version", "c1_sha256", "c2_class", "c2_version", "c2_sha256",
    "scored_at", "schema_version",
)
_INT_COLUMNS = ("width", "height", "peak_x", "peak_y", "box_x", "box_y", "box_w", "box_h")


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
    """What every row in one output folder was scored with (``_run.json``)."""

    c1: ExpertId
    c2: ExpertId
    alpha: float
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        data = json.loads(text)
        return cls(ExpertId(**data["c1"]), ExpertId(**data["c2"]), float(data["alpha"]), int(data["schema_version"]))

    def constant_columns(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "c1_class": self.c1.class_name, "c1_version": self.c1.version, "c1_sha256": self.c1.sha256,
            "c2_class": self.c2.class_name, "c2_version": self.c2.version, "c2_sha256": self.c2.sha256,
            "schema_version": self.schema_version,
        }


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
    """One result row per input row, in OUTPUT_COLUMNS order, then the input's other columns.

    ``inputs`` has ``uri``, ``width``, ``height`` and pass-through columns; ``ok`` (N,) says which
    rows ``scores`` covers (its arrays hold only those rows, in order); ``errors`` holds the
    reason for every row that is not ok.
    """
    n = inputs.num_rows
    columns: dict[str, pa.Array] = {
        "uri": inputs.column("uri"),
        "status": pa.array(np.where(ok, "ok", "error"), pa.string()),
        "error": pa.array(list(errors), pa.string()),
    }
    for name in ("width", "height"):
        columns[name] = inputs.column(name).cast(pa.int32())
    for name in ("p1", "p2", "heatmap_max"):
        columns[name] = _scatter(scores[name], ok, pa.float32())
    for name in TENSOR_COLUMNS:
        full = np.zeros((n, *grid), np.float32)
        full[ok] = scores[name]
        columns[name] = tensor_array(full, ok)
    for name in ("peak_x", "peak_y", "box_x", "box_y", "box_w", "box_h"):
        columns[name] = _scatter(scores[name], ok, pa.int32())
    constants = spec.constant_columns()
    for name, value in constants.items():
        columns[name] = pa.array([value] * n, _CONSTANT_TYPES[name])
    columns["scored_at"] = pa.array(np.full(n, scored_at, "datetime64[us]"), pa.timestamp("us", tz="UTC"))
    ordered = {name: columns[name] for name in OUTPUT_COLUMNS}
    for name in inputs.column_names:
        if name not in ordered and name not in _LOADER_COLUMNS:
            ordered[name] = inputs.column(name)
    return pa.table(ordered)


_CONSTANT_TYPES = {
    "alpha": pa.float32(), "schema_version": pa.int16(),
    **{f"c{i}_{k}": pa.string() for i in (1, 2) for k in ("class", "version", "sha256")},
}
_LOADER_COLUMNS = ("pixels", "width", "height", "error")


def _scatter(values: np.ndarray, ok: np.ndarray, dtype: pa.DataType) -> pa.Array:
    full = np.zeros(len(ok), values.dtype if len(values) else np.float64)
    full[ok] = values
    return pa.array(full, dtype, mask=~ok)


def check_passthrough(column_names: Sequence[str]) -> None:
    """Refuse manifest columns that would clash with result columns (a clear error before any work)."""
    clashes = sorted(set(column_names) & (set(OUTPUT_COLUMNS) | set(_LOADER_COLUMNS)) - {"uri"})
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


def read_results(output: str, columns: Sequence[str] | None = None) -> pa.Table:
    """Every row of an output folder as one Arrow table.

    A file that is not valid Parquet (only a foreign or damaged one: dualcam's writes appear
    whole) is skipped with a warning; a file that cannot be read (S3 throttling, say) raises, so
    a resumed run never mistakes unread rows for missing ones.
    """
    tables = []
    for uri in data_files(output):
        try:
            tables.append(pq.read_table(_source(uri), columns=list(columns) if columns else None))
        except pa.ArrowInvalid as err:
            warnings.warn(f"{uri}: skipped, not a readable Parquet file ({err})", stacklevel=2)
    if not tables:
        return pa.table({name: pa.array([], pa.string()) for name in (columns or ["uri", "status"])})
    return pa.concat_tables(tables, promote_options="permissive")


def drop_error_rows(output: str) -> int:
    """Rewrite each file of ``output`` that holds error rows without them; returns how many went.

    Each file is replaced whole (atomically), so at every moment each input is in the output
    once or not at all: a run that then stops leaves the dropped inputs to the next run.
    """
    dropped = 0
    for uri in data_files(output):
        status = pq.read_table(_source(uri), columns=["status"]).column("status")
        errors = pc.sum(pc.equal(status, "error")).as_py() or 0
        if errors:
            table = pq.read_table(_source(uri))
            buf = pa.BufferOutputStream()
            pq.write_table(table.filter(pc.equal(table.column("status"), "ok")), buf)
            storage.write_bytes(uri, buf.getvalue().to_pybytes())
            dropped += errors
    return dropped


def _source(uri: str):
    if storage.is_s3(uri):
        return pa.BufferReader(storage.read_bytes(uri))
    return uri


def read_run_spec(output: str) -> RunSpec | None:
    """The ``_run.json`` of an output folder, or None for a new folder."""
    uri = storage.join(output, RUN_FILE)
    return RunSpec.from_json(storage.read_bytes(uri).decode()) if storage.exists(uri) else None
