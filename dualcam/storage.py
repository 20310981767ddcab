"""URIs: local paths and s3:// objects, read and written the same way.

S3 goes through boto3's default credential chain and configuration, so the standard AWS settings
apply unchanged (``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, access keys, instance profiles, IRSA) and
any S3-compatible store (MinIO, Ceph, moto) works. Credentials are never logged or put in errors.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import boto3
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


@functools.lru_cache(maxsize=None)
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
