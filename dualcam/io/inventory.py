"""S3 Inventory reports as inputs: the listing a large bucket already has, read instead of listed.

An inventory, configured on a bucket and delivered daily or weekly, is a ``manifest.json`` naming
data files of one format (AWS's "Locating your inventory list"):

* CSV: gzip, no header, the columns named by the manifest's ``fileSchema`` (``Bucket, Key, ...``),
  keys URL-encoded with spaces as ``+``;
* Parquet or ORC: columns ``bucket``, ``key``, ... with keys as they are.

``--input .../manifest.json`` reads every data file it names (in parallel); a Parquet data file
may also be given by itself (its columns say what it is; a CSV one cannot, having no header). An
inventory of all versions has ``is_latest`` and ``is_delete_marker``: only the latest version of
each object that is not a delete marker is taken. Folder markers (keys ending in ``/``) are
dropped, as in a listing. The URIs keep the inventory's order: sorting 10 million of them would
hold them twice in the driver, and nothing downstream needs an order.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import TypedDict
from urllib.parse import unquote_plus

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dualcam.io import storage

MANIFEST_NAME = "manifest.json"
FORMATS = ("CSV", "Parquet", "ORC")
READ_WORKERS = 8
"""Data files read at once (a large bucket's inventory comes in many files)."""
_NEEDED = ("bucket", "key", "is_latest", "is_delete_marker")
_CSV_NAMES = {"Bucket": "bucket", "Key": "key", "IsLatest": "is_latest", "IsDeleteMarker": "is_delete_marker"}


class _Manifest(TypedDict):
    """What is used of an inventory's manifest: its data files' format and (CSV) column names, and their URIs."""

    format: str
    schema: list[str]
    files: list[str]


def is_inventory(uri: str) -> bool:
    """An inventory's ``manifest.json``, one of its CSV data files (refused by ``read_inventory``, with
    why), or one of its Parquet data files (``bucket`` and ``key`` columns, no ``uri``: its footer is read)."""
    name = PurePosixPath(uri).name.lower()
    if name == MANIFEST_NAME or name.endswith(".csv.gz"):
        return True
    if not name.endswith(".parquet"):
        return False
    path, filesystem = storage.arrow_source(uri)
    try:
        names = pq.read_schema(path, filesystem=filesystem).names
    except (OSError, pa.ArrowInvalid):
        return False  # not readable here: the manifest reader says why
    return {"bucket", "key"} <= set(names) and "uri" not in names


def read_inventory(uri: str) -> pa.StringArray:
    """The s3:// URIs of the objects an inventory lists, in its order (its files', then their rows').
    Raises ValueError naming the file for a manifest that is not an inventory's, FileNotFoundError for
    a data file it names that is gone."""
    name = PurePosixPath(uri).name.lower()
    if name.endswith(".csv.gz"):
        raise ValueError(f"{uri}: an S3 Inventory CSV file has no header to say what its columns are; "
                         f"give its {MANIFEST_NAME} as the input")
    if name != MANIFEST_NAME:
        return inventory_uris(_read_data_file(uri, {"format": "Parquet", "schema": [], "files": [uri]}), uri)
    manifest = _read_manifest(uri)
    with ThreadPoolExecutor(max(1, min(READ_WORKERS, len(manifest["files"])))) as pool:
        tables = list(pool.map(lambda file: _read_data_file(file, manifest), manifest["files"]))
    return inventory_uris(pa.concat_tables(tables, promote_options="permissive"), uri)


def _read_manifest(uri: str) -> _Manifest:
    """The manifest with what is needed checked, and its data files as s3:// URIs."""
    try:
        manifest = json.loads(storage.read_bytes(uri))
        fmt, bucket = manifest["fileFormat"], manifest["destinationBucket"]
        files = [f"s3://{bucket.removeprefix('arn:aws:s3:::')}/{file['key']}" for file in manifest["files"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{uri}: not an S3 Inventory manifest ({type(err).__name__}: {err})") from None
    if fmt not in FORMATS:
        raise ValueError(f"{uri}: inventory format {fmt!r} is not one of {', '.join(FORMATS)}")
    schema = [_CSV_NAMES.get(name.strip(), name.strip()) for name in manifest.get("fileSchema", "").split(",")]
    if fmt == "CSV" and not {"bucket", "key"} <= set(schema):
        raise ValueError(f"{uri}: the CSV inventory's fileSchema names no Bucket and Key: "
                         f"{manifest.get('fileSchema')!r}")
    return {"format": fmt, "schema": schema, "files": files}


def _read_data_file(uri: str, manifest: _Manifest) -> pa.Table:
    """The needed columns of one data file (only those are read from Parquet and ORC); keys of a CSV file decoded."""
    try:
        if manifest["format"] == "CSV":
            return _read_csv(pa.BufferReader(storage.read_bytes(uri)), manifest["schema"], gzip=uri.endswith(".gz"))
        path, filesystem = storage.arrow_source(uri)
        if manifest["format"] == "ORC":
            import pyarrow.orc as orc  # pyarrow builds may lack ORC: only an ORC inventory needs it

            names = orc.ORCFile((filesystem or pafs.LocalFileSystem()).open_input_file(path)).schema.names
            return orc.read_table(path, columns=[n for n in _NEEDED if n in names], filesystem=filesystem)
        names = pq.read_schema(path, filesystem=filesystem).names
        return pq.read_table(path, columns=[n for n in _NEEDED if n in names], filesystem=filesystem)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such object") from None
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{uri}: not a readable {manifest['format']} inventory file ({err})") from None


def _read_csv(source: pa.NativeFile, schema: list[str], gzip: bool) -> pa.Table:
    table = pacsv.read_csv(
        pa.CompressedInputStream(source, "gzip") if gzip else source,
        read_options=pacsv.ReadOptions(column_names=schema),
        convert_options=pacsv.ConvertOptions(
            include_columns=[name for name in _NEEDED if name in schema],
            column_types=dict.fromkeys(schema, pa.string())),
    )
    for name in ("is_latest", "is_delete_marker"):
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name,
                                     pc.equal(pc.utf8_lower(table.column(name)), "true"))
    return table.set_column(table.column_names.index("key"), "key", url_decoded(table.column("key")))


def url_decoded(keys: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Keys as a CSV inventory writes them (URL-encoded, spaces as ``+``) decoded; the many with
    neither ``%`` nor ``+`` are left as they are, without a Python string each."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    encoded = pc.match_substring_regex(keys, "[%+]")
    if not pc.any(encoded).as_py():
        return keys
    decoded = [unquote_plus(key) for key in keys.filter(encoded).to_pylist()]
    return pc.replace_with_mask(keys, encoded, pa.array(decoded, pa.string()))


def inventory_uris(table: pa.Table, uri: str) -> pa.StringArray:
    """The s3:// URIs of the current objects of an inventory table (``bucket``, ``key``, and with all
    versions ``is_latest``, ``is_delete_marker``), in the table's order."""
    keep = pc.invert(pc.ends_with(table.column("key"), "/"))
    if "is_latest" in table.column_names:
        keep = pc.and_(keep, pc.fill_null(table.column("is_latest"), True))
    if "is_delete_marker" in table.column_names:
        keep = pc.and_not(keep, pc.fill_null(table.column("is_delete_marker"), False))
    if not pc.all(keep).as_py():
        table = table.filter(keep)
    if table.column("bucket").null_count or table.column("key").null_count:
        raise ValueError(f"{uri}: inventory rows without a bucket or key")
    uris = pc.binary_join_element_wise("s3://", table.column("bucket"), "/", table.column("key"), "")
    return uris.combine_chunks() if isinstance(uris, pa.ChunkedArray) else uris
