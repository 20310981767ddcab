"""URIs: local paths and s3:// objects, read and written the same way.

S3 goes through boto3's default credential chain and configuration, so the standard AWS settings
apply unchanged (``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, access keys, instance profiles, IRSA) and
any S3-compatible store (MinIO, Ceph, moto) works. Credentials are never logged or put in errors.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.fs as pafs
from botocore.exceptions import BotoCoreError, ClientError


class StorageError(OSError):
    """A URI could not be read or written; the message names the URI and the cause."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/key/part' -> ('bucket', 'key/part')."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise StorageError(f"{uri}: not an s3://bucket/key URI")
    return bucket, key


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// prefix."""
    if is_s3(uri):
        return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(uri).joinpath(*parts))


@functools.cache
def s3_client():
    """One boto3 S3 client per process (clients are thread-safe; creating one costs ~50 ms)."""
    return boto3.session.Session().client("s3")


def _s3_error(uri: str, err: Exception) -> Exception:
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            return FileNotFoundError(f"{uri}: no such object")
        if code == "NoSuchBucket":
            return FileNotFoundError(f"{uri}: no such bucket")
        return StorageError(f"{uri}: S3 error {code or 'unknown'}: {err.response.get('Error', {}).get('Message', '')}")
    return StorageError(f"{uri}: S3 unreachable or misconfigured ({type(err).__name__}: {err})")


def read_bytes(uri: str) -> bytes:
    """The whole object or file. Raises FileNotFoundError if absent, StorageError otherwise."""
    if not is_s3(uri):
        return Path(uri).read_bytes()
    bucket, key = split_s3(uri)
    try:
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except (ClientError, BotoCoreError) as err:
        raise _s3_error(uri, err) from None


def exists(uri: str) -> bool:
    """Whether a file or object exists at ``uri``."""
    if not is_s3(uri):
        return Path(uri).exists()
    bucket, key = split_s3(uri)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except (ClientError, BotoCoreError) as err:
        error = _s3_error(uri, err)
        if isinstance(error, FileNotFoundError):
            return False
        raise error from None


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically: a reader sees the old content or the new, never a part.

    Locally through a temporary file renamed into place; S3 PUTs are atomic by themselves.
    """
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        except (ClientError, BotoCoreError) as err:
            raise _s3_error(uri, err) from None
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_files(uri: str) -> list[str]:
    """Every file under a local folder or s3:// prefix, recursively, sorted; a file URI lists itself."""
    if is_s3(uri):
        bucket, prefix = split_s3(uri)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        try:
            pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        except (ClientError, BotoCoreError) as err:
            raise _s3_error(uri, err) from None
        return sorted(f"s3://{bucket}/{k}" for k in keys if not k.endswith("/"))
    path = Path(uri)
    if path.is_file():
        return [str(path)]
    if not path.is_dir():
        raise FileNotFoundError(f"{uri}: no such file or folder")
    return sorted(str(p) for p in path.rglob("*") if p.is_file())


INFLIGHT_SUFFIX = ".inflight"
_PARQUET_MAGIC = b"PAR1"  # a Parquet file ends with its footer and these four bytes


def absolute(uri: str) -> str:
    """An s3:// URI as it is; a local path made absolute (Ray workers may run in another directory)."""
    return uri if is_s3(uri) else str(Path(uri).resolve())


def parquet_filesystem(uri: str) -> pafs.FileSystem | None:
    """The pyarrow filesystem for writing Parquet under ``uri`` so that files appear whole.

    S3 objects appear only when their upload completes, so S3 needs nothing (None: the default
    resolution from the URI and the AWS settings). A local file is written under a hidden
    ``.<name>.inflight`` name and renamed into place when closed with a complete Parquet footer:
    a killed or failed write leaves hidden leftovers, never a truncated file that breaks readers.
    """
    return None if is_s3(uri) else pafs.PyFileSystem(_AtomicLocalHandler())


def remove_inflight(folder: str) -> int:
    """Delete the hidden leftovers of killed local writes under ``folder``; returns how many."""
    if is_s3(folder) or not Path(folder).is_dir():
        return 0
    leftovers = [p for p in Path(folder).rglob(f".*{INFLIGHT_SUFFIX}") if p.is_file()]
    for path in leftovers:
        path.unlink()
    return len(leftovers)


class _RenameOnClose:
    """A writable file object that lands at ``path`` when closed whole (ending in Parquet's magic)."""

    def __init__(self, path: str):
        self.path = path
        self.tmp = str(Path(path).with_name(f".{Path(path).name}{INFLIGHT_SUFFIX}"))
        self.file = open(self.tmp, "wb")  # noqa: SIM115 -- closed (and renamed) by close()
        self.closed = False

    def write(self, data) -> int:
        return self.file.write(data)

    def tell(self) -> int:
        return self.file.tell()

    def flush(self) -> None:
        self.file.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.file.close()
        self.closed = True
        with open(self.tmp, "rb") as f:
            f.seek(max(0, os.path.getsize(self.tmp) - len(_PARQUET_MAGIC)))
            whole = f.read() == _PARQUET_MAGIC
        if whole:
            os.replace(self.tmp, self.path)
        else:  # a write that failed part way: never let readers see it
            os.unlink(self.tmp)


class _AtomicLocalHandler(pafs.FileSystemHandler):
    """The local filesystem, except that output streams are renamed into place on close."""

    def __init__(self):
        self.fs = pafs.LocalFileSystem()

    def __eq__(self, other) -> bool:
        return isinstance(other, _AtomicLocalHandler)

    def __ne__(self, other) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "dualcam-atomic-local"

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("refusing to delete the contents of the filesystem root")

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata=None):
        return pa.PythonFile(_RenameOnClose(path), mode="w")

    def open_append_stream(self, path, metadata=None):
        raise OSError(f"{path}: appending is not supported; results are written whole")


def write_json(uri: str, value: Any) -> None:
    """``value`` as JSON at ``uri``, NaN and infinities written as null so any JSON reader takes it."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    write_bytes(uri, json.dumps(clean(value), indent=2, default=str).encode())
