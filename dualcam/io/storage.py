"""URIs: local paths and s3:// objects, read and written the same way.

S3 goes through boto3's default credential chain and configuration, so the standard AWS settings
apply unchanged (``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, access keys, instance profiles, IRSA) and
any S3-compatible store (MinIO, Ceph, moto) works. Credentials are never logged or put in errors.
"""

from __future__ import annotations

import email.utils
import functools
import json
import math
import os
import secrets
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import boto3
import botocore.config
import botocore.session
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from botocore.exceptions import BotoCoreError, ClientError

T = TypeVar("T")
S3Client = Any
"""A boto3 S3 client: boto3 ships no type information, so its clients are untyped."""

LIST_WORKERS = 16
"""List requests in flight at once when listing an s3:// prefix."""
READ_TIMEOUT = 120.0
"""Default deadline, in seconds, of one input read (``--read-timeout``): longer than the S3 client's own
retries take (``S3_CONFIG``), so a read that passes it is one that storage never answered."""
S3_CONFIG = botocore.config.Config(connect_timeout=10, read_timeout=20, max_pool_connections=LIST_WORKERS,
                                   retries={"mode": "standard", "total_max_attempts": 5})
"""Every S3 request: 10 s to connect, 20 s without a byte, 5 attempts with botocore's exponential
backoff and jitter between them (its "standard" mode); a connection for each of ``LIST_WORKERS``."""
MAX_STALLED_READS = 64
"""Reads past their deadline that may hang on in one process; beyond, reads fail at once (storage stalled)."""


class StorageError(OSError):
    """A URI could not be read or written; the message names the URI and the cause."""


class TransientError(StorageError):
    """A read or write that failed for a reason a later try may not meet: no answer, throttling, a
    server error. An input that fails so is retried by the next run into the same output."""


_TRANSIENT_S3_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                                 "ServiceUnavailable", "RequestTimeTooSkewed", "500", "502", "503", "504"})


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` is worth another try later: ``TransientError``, a timeout or a dropped connection."""
    return isinstance(err, (TransientError, TimeoutError, ConnectionError))


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
def s3_client() -> S3Client:
    """One boto3 S3 client per process (clients are thread-safe; creating one costs ~50 ms), with
    bounded timeouts and retries (``S3_CONFIG``).

    Dates in responses are left as text: nothing here reads them, and botocore spends three quarters
    of its time on a 1,000-key listing page parsing them (143 -> 37 ms a page on this machine), time
    that no number of threads hides because parsing holds the GIL. Everything else (credentials,
    endpoint) is boto3's default.
    """
    session = botocore.session.get_session()
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=lambda text: text)
    return boto3.session.Session(botocore_session=session).client("s3", config=S3_CONFIG)


def _s3_error(uri: str, err: Exception) -> Exception:
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            return FileNotFoundError(f"{uri}: no such object")
        if code == "NoSuchBucket":
            return FileNotFoundError(f"{uri}: no such bucket")
        kind = TransientError if code in _TRANSIENT_S3_CODES else StorageError
        return kind(f"{uri}: S3 error {code or 'unknown'}: {err.response.get('Error', {}).get('Message', '')}")
    return TransientError(f"{uri}: S3 unreachable or misconfigured ({type(err).__name__}: {err})")


class Read(NamedTuple):
    """A file's or object's bytes and which version of it they are (``version_of``)."""

    data: bytes
    version: str | None
    """``<size>:<mtime_ns>`` of a file, the ETag of an S3 object; None where the store has none."""


def file_version(info: os.stat_result) -> str:
    """A file's version: its size and modification time, which any rewrite of it changes."""
    return f"{info.st_size}:{info.st_mtime_ns}"


def read_bytes(uri: str, timeout: float | None = None, max_bytes: int | None = None) -> bytes:
    """The whole object or file (``read``, without its version)."""
    return read(uri, timeout, max_bytes).data


def read(uri: str, timeout: float | None = None, max_bytes: int | None = None) -> Read:
    """The whole object or file, and its version as read. Raises FileNotFoundError if absent,
    StorageError otherwise.

    Only regular files are read: a named pipe, a device or a folder raises StorageError at once
    (a pipe would otherwise wait for a writer forever). With ``timeout`` (seconds), a read that has
    not finished by then raises TimeoutError naming the URI and is abandoned (``with_deadline``).
    With ``max_bytes``, a larger file or object raises ``TooLarge`` before any of it is read.
    """
    if timeout is not None:
        return with_deadline(lambda: read(uri, max_bytes=max_bytes), timeout, uri)
    if not is_s3(uri):
        return _read_regular_file(uri, max_bytes)
    bucket, key = split_s3(uri)
    try:
        answer = s3_client().get_object(Bucket=bucket, Key=key)
        check_size(uri, answer["ContentLength"], max_bytes)
        return Read(answer["Body"].read(), _etag(answer))
    except (ClientError, BotoCoreError) as err:
        raise _s3_error(uri, err) from None


def _etag(answer: dict[str, Any]) -> str | None:
    """An S3 answer's ETag without its quotes: what a listing of the same object says."""
    etag = answer.get("ETag")
    return etag.strip('"') if etag else None


def version_of(uri: str) -> str | None:
    """The version ``read`` would give for ``uri`` now, without reading it (a ``stat``, an S3 HEAD);
    None when it is absent or unreadable (its read then fails with the reason)."""
    try:
        if not is_s3(uri):
            return file_version(os.stat(uri))
        bucket, key = split_s3(uri)
        return _etag(s3_client().head_object(Bucket=bucket, Key=key))
    except (OSError, ClientError, BotoCoreError):
        return None


def versions(uris: pa.Array | pa.ChunkedArray, workers: int = LIST_WORKERS) -> pa.Array:
    """``version_of`` each URI, ``workers`` at once: a request per URI, for the few thousand of a training set
    (an archive's listing carries its versions for free)."""
    with ThreadPoolExecutor(workers) as pool:
        return pa.array(list(pool.map(version_of, uris.to_pylist())), pa.string())


class TooLarge(StorageError):
    """A file or object larger than the caller's byte limit: not read (a permanent error)."""


def check_size(uri: str, size: int | None, max_bytes: int | None) -> None:
    """``TooLarge`` naming ``uri`` when ``size`` (bytes; None: unknown) passes ``max_bytes`` (None: no limit)."""
    if max_bytes is not None and size is not None and size > max_bytes:
        raise TooLarge(f"{uri}: {size:,} bytes, over the limit of {max_bytes:,} per input (--max-input-bytes); "
                       "not read")


def _read_regular_file(path: str, max_bytes: int | None = None) -> Read:
    # O_NONBLOCK: opening a named pipe returns at once instead of waiting for a writer; fstat then
    # looks at what was opened, so a file swapped for a pipe after listing is caught too.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    info = os.fstat(fd)
    try:
        if not stat.S_ISREG(info.st_mode):
            raise StorageError(f"{path}: not a regular file but {_file_kind(info.st_mode)}; only files are read")
        check_size(path, info.st_size, max_bytes)
    except StorageError:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as f:
        # the version before the read: one that a rewrite during it changed is rescored by the next run
        return Read(f.read(), file_version(info))


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a named pipe", stat.S_ISSOCK: "a socket",
             stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device"}
    return next((name for test, name in kinds.items() if test(mode)), "not a file")


_stalled: list[threading.Thread] = []
_stalled_lock = threading.Lock()


def with_deadline(read: Callable[[], T], timeout: float, uri: str) -> T:
    """``read()``'s result, or TimeoutError naming ``uri`` when it takes longer than ``timeout`` seconds.

    The read runs in a daemon thread; one that passes its deadline is abandoned (nothing can
    interrupt a read blocked in the kernel or on the network), so the caller goes on and the
    process can still exit. Once ``MAX_STALLED_READS`` abandoned reads are still hanging, storage
    is taken to be stalled and further reads fail at once instead of each waiting ``timeout``.
    """
    with _stalled_lock:
        _stalled[:] = [t for t in _stalled if t.is_alive()]
        if len(_stalled) >= MAX_STALLED_READS:
            raise TimeoutError(f"{uri}: not read: {len(_stalled)} earlier reads in this process never returned "
                               "(storage stalled?)")
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = read()
        except BaseException as err:  # handed to the caller below
            outcome["error"] = err

    thread = threading.Thread(target=run, name=f"dualcam-read {uri}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        with _stalled_lock:
            _stalled.append(thread)
        raise TimeoutError(f"{uri}: no answer within {timeout:g} s (the read timeout); read abandoned")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


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

    Locally through a temporary file renamed into place, created with the mode any new file gets
    (0666 less the umask, as Ray's and pyarrow's writes), so rewritten files keep the same mode;
    S3 PUTs are atomic by themselves.
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
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def put_if(uri: str, data: bytes, etag: str | None) -> str | None:
    """S3 compare-and-swap: PUT ``data`` at ``uri`` only while the object is absent (``etag`` None:
    ``If-None-Match: *``) or unchanged since it had ``etag`` (``If-Match``). Its new ETag, or None
    when the condition did not hold (412, 409, or 404 for an object that has gone)."""
    bucket, key = split_s3(uri)
    condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
    answer = _conditional(uri, lambda: s3_client().put_object(Bucket=bucket, Key=key, Body=data, **condition))
    return None if answer is None else str(answer["ETag"])


def _conditional(uri: str, request: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """The answer to a conditional S3 request, or None when its condition did not hold (412, 409, or 404
    for an object that has gone); other failures raise as ``_s3_error`` says."""
    try:
        return request()
    except ClientError as err:
        if err.response.get("Error", {}).get("Code", "") in ("PreconditionFailed", "ConditionalRequestConflict",
                                                            "NoSuchKey"):
            return None
        raise _s3_error(uri, err) from None
    except BotoCoreError as err:
        raise _s3_error(uri, err) from None


class Tagged(NamedTuple):
    """An S3 object as ``read_tagged`` reads it."""

    data: bytes
    etag: str
    """For ``put_if`` and ``delete_if``."""
    age: float
    """Seconds since it was last written, on the store's clock (its ``Date`` less its ``Last-Modified``,
    to the second): how old it is whatever the clocks of the hosts that read and wrote it say."""


def read_tagged(uri: str) -> Tagged | None:
    """An S3 object, its ETag and its age, or None when it does not exist."""
    bucket, key = split_s3(uri)
    try:
        answer = s3_client().get_object(Bucket=bucket, Key=key)
        data = answer["Body"].read()
    except (ClientError, BotoCoreError) as err:
        error = _s3_error(uri, err)
        if isinstance(error, FileNotFoundError) and "no such object" in str(error):
            return None
        raise error from None
    now = email.utils.parsedate_to_datetime(answer["ResponseMetadata"]["HTTPHeaders"]["date"])
    written = email.utils.parsedate_to_datetime(answer["ResponseMetadata"]["HTTPHeaders"]["last-modified"])
    return Tagged(data, answer["ETag"], (now - written).total_seconds())


def delete_if(uri: str, etag: str) -> bool:
    """Delete an S3 object only while it is unchanged since it had ``etag`` (``If-Match``); whether it was."""
    bucket, key = split_s3(uri)
    return _conditional(uri, lambda: s3_client().delete_object(Bucket=bucket, Key=key, IfMatch=etag)) is not None


def delete(uri: str) -> None:
    """Delete a file or object; one already gone is fine."""
    if not is_s3(uri):
        Path(uri).unlink(missing_ok=True)
        return
    bucket, key = split_s3(uri)
    try:
        s3_client().delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as err:
        raise _s3_error(uri, err) from None


def move(uri: str, to: str) -> None:
    """Move an S3 object within its bucket: a server-side copy (the new object appears whole) then a delete."""
    bucket, key = split_s3(uri)
    target_bucket, target_key = split_s3(to)
    try:
        s3_client().copy_object(Bucket=target_bucket, Key=target_key, CopySource={"Bucket": bucket, "Key": key})
        s3_client().delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as err:
        raise _s3_error(uri, err) from None


def check_writable(folder: str) -> None:
    """Write a small hidden file into ``folder`` (created if absent) and delete it, the way results
    are written (a temporary file renamed into place; a PUT on S3); StorageError naming the folder
    and the reason when that fails, so a run finds out before any work, not at its end."""
    probe = join(folder, f".dualcam-probe-{secrets.token_hex(6)}")
    try:
        write_bytes(probe, b"dualcam checks that it can write here before a run\n")
        delete(probe)
    except OSError as err:
        raise StorageError(f"{folder}: cannot write results here ({err.strerror or err}); nothing was done") from None


def list_files(uri: str) -> list[str]:
    """Every file under a local folder or s3:// prefix, recursively, sorted; a file URI lists itself.

    The same as ``list_uris`` as a Python list, for the small listings (an expert's folder, a results folder).
    """
    return list_uris(uri).to_pylist()


def list_uris(uri: str, workers: int = LIST_WORKERS) -> pa.ChunkedArray:
    """The ``uri`` column of ``list_versioned``."""
    return list_versioned(uri, workers).column("uri")


def list_versioned(uri: str, workers: int = LIST_WORKERS) -> pa.Table:
    """Every file under a local folder or s3:// prefix, sorted, with its version (``Read.version``, null
    where it cannot be known): Arrow columns ``uri`` and ``version``; a file URI lists itself.

    An archive of millions of files stays a few Arrow buffers (its URIs' and versions' bytes plus 8 per
    file), never a Python object per file. Local folders are walked in one ``os.scandir`` pass, a
    ``stat`` per file for its version; s3:// prefixes are listed by up to ``workers`` requests at once
    (``_list_s3``), the versions (ETags) coming with the keys. Raises FileNotFoundError when nothing is
    there, StorageError for other S3 failures.
    """
    if is_s3(uri):
        bucket, prefix = split_s3(uri)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        try:
            listed = _list_s3(s3_client(), bucket, prefix, workers)
        except (ClientError, BotoCoreError) as err:
            raise _s3_error(uri, err) from None
        markers = pc.ends_with(listed.column("uri"), "/")  # "folder/" objects mark folders: they are not files
        return _sorted(listed.filter(pc.invert(markers)) if pc.any(markers).as_py() else listed, f"s3://{bucket}/")
    path = Path(uri)
    if path.is_file():
        return pa.table({"uri": [str(path)], "version": [file_version(path.stat())]})
    if not path.is_dir():
        raise FileNotFoundError(f"{uri}: no such file or folder")
    return _sorted(_list_local(str(path)))


def _sorted(listed: pa.Table, prefix: str = "") -> pa.Table:
    """The rows in the order of their ``uri``, each made ``prefix + uri``; built a chunk at a time so that
    the names are held twice at most, not three times (unsorted, sorted, prefixed)."""
    order = pc.sort_indices(listed.column("uri"))
    chunks = []
    for i in range(0, len(order), _CHUNK):
        chunk = listed.take(order.slice(i, _CHUNK))
        if prefix:
            chunk = chunk.set_column(0, "uri", pc.binary_join_element_wise(prefix, chunk.column("uri"), ""))
        chunks.append(chunk)
    return pa.concat_tables(chunks) if chunks else listed


_CHUNK = 65_536  # names held as Python strings before they move into Arrow


def _list_local(root: str) -> pa.Table:
    """Everything under ``root`` but folders, one ``os.scandir`` pass; symlinked folders are not followed,
    symlinked files are taken. A named pipe or a dangling link is listed too, so that it gets its error
    row instead of going missing. An unreadable folder raises (PermissionError naming it): skipping it
    would lose inputs unseen."""
    chunks, names, versions, folders = [], [], [], [root]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                elif not entry.is_dir():
                    names.append(entry.path)
                    versions.append(_entry_version(entry))
        if len(names) >= _CHUNK:
            chunks.append(pa.table({"uri": pa.array(names, pa.string()), "version": pa.array(versions, pa.string())}))
            names, versions = [], []
    chunks.append(pa.table({"uri": pa.array(names, pa.string()), "version": pa.array(versions, pa.string())}))
    return pa.concat_tables(chunks)


def _entry_version(entry: os.DirEntry[str]) -> str | None:
    try:
        return file_version(entry.stat())
    except OSError:  # a dangling link: its read says why
        return None


_EXPAND_BELOW = 2
"""Sub-prefixes per worker below which ``_list_s3`` lists the next level down before fanning out."""
_SPANS_PER_WORKER = 4
"""Spans per worker above which ``_list_s3`` groups sub-prefixes: enough to keep every worker busy to the end."""


@dataclass(frozen=True)
class _Span:
    """Keys under the sub-prefixes ``first`` .. ``last`` of ``parent``: consecutive common prefixes of a
    delimiter listing of ``parent``, so the span lists whole subtrees and nothing else."""

    parent: str
    first: str
    last: str


def _list_s3(client: S3Client, bucket: str, prefix: str, workers: int) -> pa.Table:
    """The keys under ``prefix`` (column ``uri``) and their ETags (``version``), exactly those a single
    ``list_objects_v2`` paginator returns, in any order.

    A single paginator is one request after another, 1,000 keys each: 10,000 round trips for 10
    million objects. Here the tree is fanned out instead: prefixes are listed with ``Delimiter="/"``
    level by level (their own keys come back, and their sub-prefixes), until at least two
    sub-prefixes per worker are left; those are then listed whole (no delimiter), ``workers`` at a
    time. So every key is returned once: either directly under a prefix that was expanded, or
    inside exactly one sub-prefix that was not. More than four sub-prefixes per worker (a folder
    per patient, say) are cut into four spans per worker of consecutive sub-prefixes: enough to
    keep all workers busy to the end, and thousands of small folders then cost about as many
    requests as their keys fill pages, not one request each. A flat folder has no sub-prefixes to
    fan out over: it is listed by one paginator, as before.
    """
    keys, level = [], [prefix]
    with ThreadPoolExecutor(workers) as pool:
        while level:
            listed = list(pool.map(lambda p: _list_level(client, bucket, p), level))
            keys += [own for own, _ in listed]
            children = [(parent, subs) for parent, (_, subs) in zip(level, listed) if subs]
            if sum(len(subs) for _, subs in children) >= _EXPAND_BELOW * workers:
                spans = _spans(children, _SPANS_PER_WORKER * workers)
                keys += pool.map(lambda span: _list_span(client, bucket, span), spans)
                break
            level = [sub for _, subs in children for sub in subs]
    return pa.concat_tables(keys).combine_chunks()


def _list_level(client: S3Client, bucket: str, prefix: str) -> tuple[pa.Table, list[str]]:
    """One level under ``prefix``: its own keys, and its sub-prefixes (sorted)."""
    pages, prefixes = [], []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        pages.append(_page_keys(page))
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", ())]
    return pa.concat_tables(pages or [_page_keys({})]), sorted(prefixes)


def _spans(children: list[tuple[str, list[str]]], most: int) -> list[_Span]:
    """The sub-prefixes to list, one span each, or cut into about ``most`` runs in all when there are more."""
    total = sum(len(subs) for _, subs in children)
    spans = []
    for parent, subs in children:
        runs = max(1, min(len(subs), round(most * len(subs) / total)))
        size = math.ceil(len(subs) / runs)
        spans += [_Span(parent, subs[i], subs[min(i + size, len(subs)) - 1]) for i in range(0, len(subs), size)]
    return spans


def _list_span(client: S3Client, bucket: str, span: _Span) -> pa.Table:
    """Every key in the span's subtrees: under its one sub-prefix, or (several) from the first in key order
    until past the last, leaving out the keys directly under the parent (its delimiter listing had them)."""
    paginator = client.get_paginator("list_objects_v2")
    if span.first == span.last:
        pages = paginator.paginate(Bucket=bucket, Prefix=span.first)
        return pa.concat_tables([_page_keys(page) for page in pages] or [_page_keys({})])
    # A key >= first lies in first's subtree or after it; S3 returns keys in UTF-8 binary order, as Arrow compares.
    pages = paginator.paginate(Bucket=bucket, Prefix=os.path.commonprefix([span.first, span.last]),
                               StartAfter=span.first[:-1])
    kept = [_page_keys({})]
    for page in pages:
        listed = _page_keys(page)
        keys = listed.column("uri")
        past = pc.and_not(pc.greater(keys, span.last), pc.starts_with(keys, span.last))
        end = pc.index(past, True).as_py()
        listed = listed if end < 0 else listed.slice(0, end)
        keys = listed.column("uri")
        nested = pc.match_substring(pc.utf8_slice_codeunits(keys, len(span.parent)), "/")
        kept.append(listed.filter(pc.and_(pc.greater_equal(keys, span.first), nested)))
        if end >= 0:
            break
    return pa.concat_tables(kept)


def _page_keys(page: dict[str, Any]) -> pa.Table:
    """A listing page's keys (``uri``) and ETags (``version``, unquoted)."""
    objects = page.get("Contents", ())
    return pa.table({"uri": pa.array([obj["Key"] for obj in objects], pa.string()),
                     "version": pa.array([_etag(obj) for obj in objects], pa.string())})


def arrow_source(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """(path, filesystem) for pyarrow's readers: a local path as it is; an s3:// object through Arrow's
    own S3 client, which reads only the byte ranges asked for (a Parquet footer and the column chunks
    needed) instead of the whole object. The same AWS settings apply as for boto3."""
    if not is_s3(uri):
        return uri, None
    bucket, key = split_s3(uri)
    return f"{bucket}/{key}", _arrow_s3(bucket, os.environ.get("AWS_ENDPOINT_URL"))


@functools.cache
def _arrow_s3(bucket: str, endpoint: str | None) -> pafs.FileSystem:
    """One Arrow S3 filesystem per bucket (its region is looked up once) and endpoint in use."""
    return pafs.FileSystem.from_uri(f"s3://{bucket}")[0]


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

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            raise _naming(err, self.path) from err

    def tell(self) -> int:
        return self.file.tell()

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as err:
            raise _naming(err, self.path) from err

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.file.close()  # flushes: a full disk may show here first
        except OSError as err:
            os.unlink(self.tmp)
            raise _naming(err, self.path) from err
        with open(self.tmp, "rb") as f:
            f.seek(max(0, os.path.getsize(self.tmp) - len(_PARQUET_MAGIC)))
            whole = f.read() == _PARQUET_MAGIC
        if whole:
            os.replace(self.tmp, self.path)
        else:  # a write that failed part way: never let readers see it
            os.unlink(self.tmp)


def _naming(err: OSError, path: str) -> OSError:
    """``err`` with ``path`` in its message: "No space left on device" alone names no file."""
    return OSError(err.errno, f"{err.strerror or err} while writing {path}")


class _AtomicLocalHandler(pafs.FileSystemHandler):
    """The local filesystem, except that output streams are renamed into place on close."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _AtomicLocalHandler)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "dualcam-atomic-local"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of the filesystem root")

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: dict[str, str] | None = None) -> pa.NativeFile:
        return pa.PythonFile(_RenameOnClose(path), mode="w")

    def open_append_stream(self, path: str, metadata: dict[str, str] | None = None) -> pa.NativeFile:
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
