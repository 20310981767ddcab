"""What to score: the input files of an archive, from a folder, an s3:// prefix or a manifest."""

from __future__ import annotations

import io
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dualcam import storage
from dualcam.imaging import is_image_name

MANIFEST_SUFFIXES = (".csv", ".parquet")


@dataclass
class Inputs:
    """The files to score (a ``uri`` column, plus any manifest columns to pass through)."""

    table: pa.Table
    skipped: list[str] = field(default_factory=list)
    """Files under a folder or prefix that were not taken because their names are not images'."""


def is_manifest(uri: str) -> bool:
    return uri.lower().endswith(MANIFEST_SUFFIXES)


def read_inputs(uri: str) -> Inputs:
    """A manifest (CSV or Parquet with a ``uri`` column), or every image file under a folder/prefix.

    Folders and prefixes are listed recursively and sorted; image names are ``.png .jpg .jpeg
    .dcm .dicom .ima`` and DICOM-like names without an extension. Relative URIs in a manifest are
    taken relative to the manifest's folder. Raises ``FileNotFoundError`` / ``StorageError`` when
    the location cannot be listed and ``ValueError`` for a malformed manifest.
    """
    if is_manifest(uri):
        return Inputs(read_manifest(uri))
    # Absolute, so that Ray workers (whose working directory may differ) find local files.
    files = storage.list_files(uri if storage.is_s3(uri) else str(Path(uri).resolve()))
    images = [f for f in files if is_image_name(f)]
    return Inputs(pa.table({"uri": pa.array(images, pa.string())}), [f for f in files if not is_image_name(f)])


def read_manifest(uri: str) -> pa.Table:
    """The manifest's rows, ``uri`` made absolute; every other column passes through unchanged."""
    data = storage.read_bytes(uri)
    try:
        if uri.lower().endswith(".parquet"):
            table = pq.read_table(pa.BufferReader(data))
        else:
            table = pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    except pa.ArrowInvalid as err:
        raise ValueError(f"{uri}: not a readable manifest ({err})") from None
    if "uri" not in table.column_names:
        raise ValueError(f"{uri}: a manifest needs a 'uri' column; it has {', '.join(table.column_names)}")
    column = table.column("uri").cast(pa.string())
    if column.null_count or pc.any(pc.equal(column, "")).as_py():
        raise ValueError(f"{uri}: the 'uri' column has empty values")
    uris = [_resolve(u, uri) for u in column.to_pylist()]
    duplicates = sorted(u for u, n in Counter(uris).items() if n > 1)
    if duplicates:
        raise ValueError(f"{uri}: {len(duplicates)} URIs are listed more than once, e.g. {duplicates[0]}")
    return table.set_column(table.column_names.index("uri"), "uri", pa.array(uris, pa.string()))


def _resolve(entry: str, manifest: str) -> str:
    if storage.is_s3(entry) or PurePosixPath(entry).is_absolute():
        return entry
    if storage.is_s3(manifest):
        bucket, key = storage.split_s3(manifest)
        return f"s3://{bucket}/" + posixpath.normpath(posixpath.join(posixpath.dirname(key), entry)).lstrip("/")
    return str(Path(manifest).resolve().parent / entry)
