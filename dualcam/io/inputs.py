"""What to score: the inputs of an archive, from a folder, an s3:// prefix, a manifest or a PACS query
(DICOMweb), and how one input's bytes are read."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dualcam.io import dicomweb, inventory, storage
from dualcam.io.imaging import image_names
from dualcam.io.results import VERSION

MANIFEST_SUFFIXES = (".csv", ".parquet")
_TEXT_COLUMNS = ("uri", "patient_id", "patientid", "filename", "folder")
"""Identifiers read as text from CSV, never guessed: file ``0001`` and patient ``007`` keep their zeros."""


@dataclass
class Inputs:
    """The files to score (a ``uri`` column, plus any manifest columns to pass through)."""

    table: pa.Table
    """``uri``, ``input_version`` (``storage.Read.version``, as listed; null where a listing cannot say) and
    a manifest's other columns."""
    skipped: pa.ChunkedArray = field(default_factory=lambda: pa.chunked_array([], pa.string()))
    """Files under a folder or prefix (or in an inventory) that were not taken because their names are not
    images', or the instances of a PACS query that were not taken for their modality."""
    skipped_because: str = "not an image's name"
    skipped_counts: dict[str, int] | None = None
    """How many were skipped of each kind, when the kind is not the file's suffix (a PACS query's modalities)."""

    def skipped_kinds(self) -> dict[str, int]:
        """How many skipped of each kind, most frequent first: by suffix (``skipped_kinds``) or as counted."""
        return skipped_kinds(self.skipped) if self.skipped_counts is None else self.skipped_counts


def skipped_files(skipped: Sequence[str], because: str = "not an image's name") -> str:
    """How a run says which listed files it left out: "" when none, else how many and one of them."""
    if not skipped:
        return ""
    count = f"{len(skipped)} other file{'s' if len(skipped) > 1 else ''}"
    return f"{count} skipped ({because}), e.g. {skipped[0]}"


def is_manifest(uri: str) -> bool:
    """Whether ``uri`` names a manifest (CSV or Parquet) rather than a folder, prefix or image."""
    return uri.lower().endswith(MANIFEST_SUFFIXES)


def read_inputs(uri: str) -> Inputs:
    """A manifest (CSV or Parquet with a ``uri`` column), an S3 Inventory report, a DICOMweb query
    (``dualcam.io.dicomweb``), or every image file under a folder/prefix.

    Folders and prefixes are listed recursively and sorted; image names are ``.png .jpg .jpeg
    .dcm .dicom .ima`` and DICOM-like names without an extension. Relative URIs in a manifest are
    taken relative to the manifest's folder. An inventory (its ``manifest.json``, or one of its
    Parquet files) lists the objects of a bucket as a listing would, without listing it
    (``dualcam.io.inventory``). Raises ``FileNotFoundError`` / ``StorageError`` when the location
    cannot be read and ``ValueError`` for a malformed manifest or inventory.
    """
    if dicomweb.is_dicomweb(uri):
        instances, skipped = dicomweb.search(uri)
        counts = pc.value_counts(pc.fill_null(skipped.column("modality"), "none")).to_pylist()
        return Inputs(instances, skipped.column("uri"), f"modality not {' or '.join(dicomweb.DEFAULT_MODALITIES)}",
                      {f"modality {c['values']}": c["counts"] for c in sorted(counts, key=lambda c: -c["counts"])})
    if inventory.is_inventory(uri):
        files = inventory.read_inventory(uri)
        return _images(pa.table({"uri": files, "version": pa.nulls(len(files), pa.string())}))
    if is_manifest(uri):
        table = read_manifest(uri)
        if VERSION in table.column_names:
            raise ValueError(f"{uri}: a manifest column may not be named {VERSION!r}: dualcam records there which "
                             "version of each input it scored; rename it")
        # unversioned: a stat or HEAD per entry would cost what reading a manifest in Arrow saves
        return Inputs(table.append_column(VERSION, pa.nulls(table.num_rows, pa.string())))
    # Absolute, so that Ray workers (whose working directory may differ) find local files.
    return _images(storage.list_versioned(storage.absolute(uri)))


class Slots(Protocol):
    """A bound on requests in flight (``threading.Semaphore`` in one process; the pipeline's is run-wide)."""

    def acquire(self) -> object: ...

    def release(self) -> None: ...


MAX_INPUT_BYTES = 512 * 2**20
"""Default byte limit of one input (``--max-input-bytes``): over the largest image that ``MAX_PIXELS``
lets through (50 megapixels of 3 samples of 16 bits, 300 MB uncompressed), far under what would
exhaust a loader's memory (a 10 GB object is refused unread)."""


def read_input(
    uri: str, timeout: float | None = None, slots: Slots | None = None, max_bytes: int | None = MAX_INPUT_BYTES,
) -> storage.Read:
    """One input's bytes and version, whatever names it: a WADO-RS instance URL (``dicomweb.retrieve``; no
    version: an instance UID never names other bytes), an s3:// object or a file (``storage.read``);
    ``storage.TooLarge`` for one over ``max_bytes``, unread.

    With ``timeout`` (seconds), a read not done by then raises TimeoutError (``storage.with_deadline``).
    With ``slots``, the read waits for a slot first (not counted in ``timeout``) and holds it until the
    request itself ends, even one abandoned at its deadline: the bound is on what the server sees.
    """
    def read() -> storage.Read:
        try:
            if dicomweb.is_instance_url(uri):
                return storage.Read(dicomweb.retrieve(uri, timeout or storage.READ_TIMEOUT, max_bytes), None)
            return storage.read(uri, max_bytes=max_bytes)
        finally:
            if slots is not None:
                slots.release()

    if slots is not None:
        slots.acquire()
    return read() if timeout is None else storage.with_deadline(read, timeout, uri)


def _images(listed: pa.Table) -> Inputs:
    """Listed files (``uri``, ``version``) split into the images to score and the others, skipped."""
    listed = listed.rename_columns(["uri", VERSION])
    images = image_names(listed.column("uri"))
    if pc.all(images).as_py() is not False:  # the usual archive: no copy
        return Inputs(listed)
    return Inputs(listed.filter(images), listed.column("uri").filter(pc.invert(images)))


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
    table = read_table(uri, lambda batch: with_absolute_uris(batch, uri))
    if "uri" not in table.column_names:  # a file with a header and no rows
        raise ValueError(f"{uri}: a manifest needs a 'uri' column; it has {', '.join(table.column_names)}")
    if unique:
        refuse_duplicates(table.column("uri"), uri)
    return table


Batch = TypeVar("Batch", pa.RecordBatch, pa.Table)


class _LaterBlockDiffers(Exception):
    """A CSV block did not fit the column types inferred from the first: read the file whole instead."""


def read_table(uri: str, each: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None) -> pa.Table:
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
            batches: list[pa.RecordBatch] = []
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


def with_absolute_uris(table: Batch, uri: str) -> Batch:
    """Check the ``uri`` column of (a part of) the manifest at ``uri`` and make its entries absolute."""
    if "uri" not in table.column_names:
        raise ValueError(f"{uri}: a manifest needs a 'uri' column; it has {', '.join(table.column_names)}")
    column = table.column("uri").cast(pa.string())
    if column.null_count or pc.any(pc.equal(column, "")).as_py():
        raise ValueError(f"{uri}: the 'uri' column has empty values")
    return table.set_column(table.column_names.index("uri"), "uri", resolve_uris(column, uri))


_CHUNK = 65_536


def refuse_duplicates(uris: pa.ChunkedArray, manifest: str) -> None:
    """ValueError naming how many URIs ``manifest`` lists more than once, and one of them."""
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
    pieces: list[pa.Array] = []
    for start in range(0, max(0, n - 1), _CHUNK):  # pieces overlap by a row: pairs across their borders count
        piece = uris.slice(start, _CHUNK + 1) if order is None else uris.take(order.slice(start, _CHUNK + 1))
        kept = piece.slice(1).filter(pc.equal(piece.slice(1), piece.slice(0, len(piece) - 1)))
        pieces += kept.chunks if isinstance(kept, pa.ChunkedArray) else [kept]
    repeated = pa.chunked_array(pieces, pa.string()).combine_chunks()
    if not len(repeated):
        return None
    distinct = 1 + (pc.sum(pc.not_equal(repeated.slice(1), repeated.slice(0, len(repeated) - 1))).as_py() or 0)
    return distinct, repeated[0].as_py()


_ABSOLUTE = r"^(/|s3://|https?://)"
"""Entries not joined onto the manifest's folder: absolute paths and URLs (s3:// objects, DICOMweb instances)."""
_URL = r"^(s3|https?)://"
"""Entries taken as they are."""
# Entries that pathlib or posixpath.normpath would change: ".", ".." or empty parts, or a trailing "/".
_NOT_PLAIN = r"(^|/)\.{1,2}(/|$)|//|/$"


def resolve_uris(entries: pa.Array | pa.ChunkedArray, manifest: str) -> pa.Array:
    """Each manifest entry made absolute as ``resolve_entry`` does, in Arrow: URLs (``s3://``, and
    ``http(s)://`` for DICOMweb instances) and plain absolute paths as they are, plain relative paths
    joined onto the manifest's folder, and the few local entries with ``.``/``..``/empty parts through
    ``resolve_entry`` itself, so that both always agree."""
    if isinstance(entries, pa.ChunkedArray):
        entries = entries.combine_chunks()
    absolute = pc.match_substring_regex(entries, _ABSOLUTE)
    folder = resolve_entry("x", manifest)[:-1]  # what resolve_entry puts before a plain name
    if not pc.any(absolute).as_py():  # one copy, not two: if_else would copy what was joined
        joined = pc.binary_join_element_wise(folder, entries, "")
    elif pc.all(absolute).as_py():
        joined = entries
    else:
        joined = pc.if_else(absolute, entries, pc.binary_join_element_wise(folder, entries, ""))
    odd = pc.and_not(pc.match_substring_regex(entries, _NOT_PLAIN), pc.match_substring_regex(entries, _URL))
    if not pc.any(odd).as_py():
        return joined
    fixed = [resolve_entry(entry, manifest) for entry in entries.filter(odd).to_pylist()]
    return pc.replace_with_mask(joined, odd, pa.array(fixed, pa.string()))


def resolve_entry(entry: str, manifest: str) -> str:
    """One manifest entry made absolute and normal: URLs as they are (an S3 key is the name it is listed
    by), local paths without ``.``, ``..`` or empty parts (one file, one URI, however it is spelled;
    symbolic links are not followed), relative ones taken from the manifest's folder (on S3, its prefix)."""
    if re.match(_URL, entry):
        return entry
    if storage.is_s3(manifest) and not entry.startswith("/"):
        bucket, key = storage.split_s3(manifest)
        return f"s3://{bucket}/" + posixpath.normpath(posixpath.join(posixpath.dirname(key), entry)).lstrip("/")
    return posixpath.normpath(posixpath.join(str(Path(manifest).resolve().parent), entry))
