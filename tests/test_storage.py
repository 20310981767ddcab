"""Listing local folders and s3:// prefixes; Parquet that appears whole on local disk; rewriting result files
without their error or repeated rows; reading only regular files within a deadline; the probe write before a run."""

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dualcam.io import storage
from dualcam.io.imaging import DecodeError
from dualcam.io.results import (
    PERMANENT,
    TRANSIENT,
    drop_duplicates,
    drop_rows_to_redo,
    error_kind_of,
    read_results,
    tensor_array,
    to_numpy,
)


def new_file_mode() -> int:
    """The mode a new file gets here: 0666 less the umask (read without changing it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def test_local_parquet_appears_only_when_complete(tmp_path):
    fs = storage.parquet_filesystem(str(tmp_path))
    with pq.ParquetWriter(str(tmp_path / "a.parquet"), pa.schema([("x", pa.int64())]), filesystem=fs) as writer:
        writer.write_table(pa.table({"x": [1, 2]}))
        assert list(tmp_path.iterdir()) == [tmp_path / ".a.parquet.inflight"]  # hidden while being written
    assert pq.read_table(tmp_path).column("x").to_pylist() == [1, 2]

    stream = fs.open_output_stream(str(tmp_path / "b.parquet"))
    stream.write(b"PAR1 and then the writer died")
    stream.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet"]  # the partial file never appeared
    assert storage.parquet_filesystem("s3://bucket/prefix") is None  # S3 uploads are atomic already


def test_leftovers_of_killed_writes_are_removed(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".x.parquet.inflight").write_bytes(b"partial")
    (tmp_path / "keep.parquet").write_bytes(b"x")
    assert storage.remove_inflight(str(tmp_path)) == 1
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["keep.parquet"]


def test_dropping_error_rows_keeps_the_rest_whole(tmp_path):
    heat = np.arange(16, dtype=np.float32).reshape(4, 2, 2)
    table = pa.table({"uri": ["a", "b", "c", "d"], "status": ["ok", "error", "ok", "error"],
                      "error_kind": [None, "transient", None, "permanent"],
                      "heatmap": tensor_array(heat, np.array([True, False, True, False]))})
    pq.write_table(table, tmp_path / "part-1.parquet")
    pq.write_table(table.slice(0, 1), tmp_path / "part-2.parquet")
    assert drop_rows_to_redo(str(tmp_path)) == 1  # what every run does: the transient row goes
    assert read_results(str(tmp_path), ["uri"], warn_duplicates=False).column("uri").to_pylist() == ["a", "c", "d", "a"]
    assert drop_rows_to_redo(str(tmp_path), retry_errors=True) == 1  # --retry-errors: the permanent one too
    with pytest.warns(UserWarning, match="1 rows repeat an input that is already in the output"):
        left = read_results(str(tmp_path))
    assert left.column("uri").to_pylist() == ["a", "c", "a"]
    np.testing.assert_array_equal(to_numpy(left.column("heatmap")), heat[[0, 2, 0]])
    # rewritten files get the mode of any new file (as Ray's writes), not a temporary file's 0600
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {new_file_mode()}
    assert drop_rows_to_redo(str(tmp_path), changed=pa.array(["a"])) == 2  # an input changed since: all its rows
    assert read_results(str(tmp_path), ["uri"]).column("uri").to_pylist() == ["c"]
    assert [p.name for p in tmp_path.iterdir()] == ["part-1.parquet"]  # a file left with no rows is deleted


def test_repeated_rows_are_found_and_repaired_keeping_one_ok_row_per_input(tmp_path):
    def part(name: str, uris: list[str], status: list[str]) -> None:
        pq.write_table(pa.table({"uri": uris, "status": status, "n": [name] * len(uris)}), tmp_path / name)

    # two runs that wrote at once: the second scored b again (ok where the first failed) and all of c, d
    part("run1-a.parquet", ["a", "b", "c"], ["ok", "error", "ok"])
    part("run1-b.parquet", ["d"], ["ok"])
    part("run2-a.parquet", ["b", "c", "d"], ["ok", "ok", "error"])
    with pytest.warns(UserWarning, match=r"3 rows repeat an input .* `dualcam repair "):
        assert read_results(str(tmp_path)).num_rows == 7
    assert drop_duplicates(str(tmp_path)) == 3
    rows = {r["uri"]: (r["status"], r["n"]) for r in read_results(str(tmp_path)).to_pylist()}
    assert rows == {"a": ("ok", "run1-a.parquet"), "b": ("ok", "run2-a.parquet"), "c": ("ok", "run1-a.parquet"),
                    "d": ("ok", "run1-b.parquet")}
    assert read_results(str(tmp_path)).num_rows == 4  # and no warning left: pytest fails on none here
    assert drop_duplicates(str(tmp_path)) == 0


def test_only_regular_files_are_read_and_every_entry_is_listed(tmp_path):
    (tmp_path / "a.png").write_bytes(b"data")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    assert storage.read_bytes(str(tmp_path / "a.png")) == b"data"
    started = time.monotonic()
    with pytest.raises(storage.StorageError, match=r"pipe.png: not a regular file but a named pipe"):
        storage.read_bytes(str(tmp_path / "pipe.png"))  # no writer will ever come: refused, not waited for
    assert time.monotonic() - started < 5
    with pytest.raises(storage.StorageError, match=r"folder.png: not a regular file but a folder"):
        storage.read_bytes(str(tmp_path / "folder.png"))
    with pytest.raises(storage.StorageError, match=r"not a regular file but a character device"):
        storage.read_bytes("/dev/zero")
    with pytest.raises(FileNotFoundError, match="dangling.png"):
        storage.read_bytes(str(tmp_path / "dangling.png"))
    # listed, so each gets its error row and a rerun counts it; folders are searched, not listed
    assert [os.path.basename(u) for u in storage.list_files(str(tmp_path))] == ["a.png", "dangling.png", "pipe.png"]


@pytest.fixture
def silent_s3(monkeypatch):
    """An S3 endpoint that accepts connections and never answers (a stalled server), for this test's client."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(name, "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        storage.s3_client.cache_clear()
        yield
    storage.s3_client.cache_clear()


def test_a_read_that_never_returns_is_abandoned_at_its_deadline(silent_s3):
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"s3://bucket/x.png: no answer within 1.5 s \(the read timeout\)") as late:
        storage.read_bytes("s3://bucket/x.png", timeout=1.5)
    assert error_kind_of(late.value) == TRANSIENT  # the next run tries it again
    assert time.monotonic() - started < 10
    assert storage.s3_client().meta.config.retries == {"mode": "standard", "total_max_attempts": 5}  # with backoff


@pytest.mark.parametrize("code, kind", [("SlowDown", TRANSIENT), ("503", TRANSIENT), ("InternalError", TRANSIENT),
                                        ("AccessDenied", PERMANENT), ("NoSuchKey", PERMANENT)])
def test_s3_errors_are_transient_when_a_later_try_may_pass(code, kind):
    from botocore.exceptions import ClientError

    error = storage._s3_error("s3://b/k", ClientError({"Error": {"Code": code, "Message": "m"}}, "GetObject"))
    assert error_kind_of(error) == kind
    assert error_kind_of(DecodeError("k.png", "corrupt")) == PERMANENT


def test_the_probe_write_leaves_nothing_and_names_the_reason(tmp_path):
    out = tmp_path / "new" / "out"
    storage.check_writable(str(out))
    assert out.is_dir() and list(out.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(storage.StorageError, match=r"file/out: cannot write results here \(Not a directory\)"):
        storage.check_writable(str(tmp_path / "file" / "out"))


def test_a_full_disk_names_the_file_being_written(tmp_path):
    target = tmp_path / "part-0.parquet"
    (tmp_path / f".{target.name}.inflight").symlink_to("/dev/full")  # writes there fail with ENOSPC
    stream = storage.parquet_filesystem(str(tmp_path)).open_output_stream(str(target))
    with pytest.raises(OSError, match=rf"No space left on device while writing {target}"):
        stream.write(b"x" * (1 << 20))
        stream.close()
    assert not target.exists()


# Keys that sort around "/" ('-' and '.' before it, letters after), a folder of 1,001 keys and one of 1,001
# sub-folders (two pages each), folder markers of empty folders, nesting, and neighbours outside the prefix.
TREE = [
    *(f"a/flat/{i:04d}.png" for i in range(1001)), *(f"a/many/{i:04d}/k.png" for i in range(1001)),
    "a/deep/x/y/z/1.dcm", "a/deep/x/2.dcm", "a/empty/", "a/empty2/sub/", "a/top.png", "a/p1.png", "a/p1-x/k.png",
    "a/p1/k.png", "a/p10/k", "a/p1a.png", "a/p2/k", "a/ü/ß.png", "a/space dir/a+b.png", "a/double//slash.png",
    "a/dot./x", "ab/x.png", "a.png",
]


@pytest.fixture(scope="module")
def s3_tree(s3_endpoint) -> str:
    storage.s3_client().create_bucket(Bucket="tree")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: storage.write_bytes(f"s3://tree/{key}", b"x"), TREE))
    return "s3://tree"


@pytest.mark.parametrize("workers", [1, 2, 16])
def test_parallel_s3_listing_returns_exactly_what_one_paginator_does(s3_tree, workers):
    # workers=1: the level under a/ is cut into runs of sub-folders; 2: one listing per sub-folder; 16: the
    # tree is expanded level by level until a/many/'s 1,001 sub-folders are cut into runs
    pages = storage.s3_client().get_paginator("list_objects_v2").paginate(Bucket="tree", Prefix="a/")
    serial = sorted(f"s3://tree/{o['Key']}" for page in pages for o in page.get("Contents", ()))
    assert len(serial) == len(TREE) - 2
    listed = storage.list_uris(f"{s3_tree}/a", workers=workers).to_pylist()
    assert listed == [uri for uri in serial if not uri.endswith("/")]
    assert storage.list_files(f"{s3_tree}/a/p1") == [f"{s3_tree}/a/p1/k.png"]
    assert storage.list_files(f"{s3_tree}/a/empty") == []


def test_a_local_folder_is_listed_in_one_pass_as_before(tmp_path):
    for name in ("b.png", "sub/a.JPG", "sub/.hidden", "sub/deeper/x", "ü/ß.dcm"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "linked.png").symlink_to(tmp_path / "b.png")  # a linked file is listed
    (tmp_path / "loop").symlink_to(tmp_path)  # a linked folder is not followed
    before = sorted(str(p) for p in tmp_path.rglob("*") if p.is_file())
    assert storage.list_files(str(tmp_path)) == before
    assert storage.list_files(str(tmp_path / "b.png")) == [str(tmp_path / "b.png")]
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        storage.list_files(str(tmp_path / "nowhere"))


def test_an_input_over_the_byte_limit_is_refused_unread(tmp_path, s3_bucket):
    from dualcam.io.inputs import read_input

    (tmp_path / "big.dcm").write_bytes(b"x" * 2000)
    (tmp_path / "folder").mkdir()
    storage.write_bytes(f"{s3_bucket}/big.dcm", b"x" * 2000)
    for uri in (str(tmp_path / "big.dcm"), f"{s3_bucket}/big.dcm"):
        with pytest.raises(storage.TooLarge, match=r"big.dcm: 2,000 bytes, over the limit of 1,999 per input") as big:
            read_input(uri, timeout=30, max_bytes=1999)
        assert error_kind_of(big.value) == PERMANENT  # the file itself: a plain rerun leaves it be
        assert read_input(uri, timeout=30, max_bytes=2000).data == b"x" * 2000
    with pytest.raises(storage.StorageError, match="not a regular file but a folder"):
        read_input(str(tmp_path / "folder"), max_bytes=1)


def test_a_listing_gives_each_file_the_version_a_read_of_it_gives_and_a_rewrite_changes_it(tmp_path, s3_bucket):
    for root in (str(tmp_path / "archive"), f"{s3_bucket}/archive"):
        for name in ("p1/a.png", "p2/b.png", "c.png"):
            storage.write_bytes(storage.join(root, name), name.encode())
        listed = storage.list_versioned(root)
        uris, versions = listed.column("uri").to_pylist(), listed.column("version").to_pylist()
        assert uris == sorted(storage.join(root, n) for n in ("p1/a.png", "p2/b.png", "c.png"))
        assert None not in versions
        assert versions == [storage.read(uri).version for uri in uris]
        assert versions == storage.versions(listed.column("uri")).to_pylist()
        storage.write_bytes(uris[0], b"another image, of another size")
        assert storage.version_of(uris[0]) not in (None, versions[0])
        assert storage.version_of(uris[1]) == versions[1]
    assert storage.versions(pa.array([f"{s3_bucket}/gone.png", str(tmp_path / "gone.png")])).to_pylist() == [None] * 2
