"""Listing local folders and s3:// prefixes; Parquet that appears whole on local disk; rewriting result files
without their error rows."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dualcam import storage
from dualcam.results import drop_error_rows, read_results, tensor_array, to_numpy


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
    heat = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    table = pa.table({"uri": ["a", "b", "c"], "status": ["ok", "error", "ok"],
                      "heatmap": tensor_array(heat, np.array([True, False, True]))})
    pq.write_table(table, tmp_path / "part-1.parquet")
    pq.write_table(table.slice(0, 1), tmp_path / "part-2.parquet")
    assert drop_error_rows(str(tmp_path)) == 1
    left = read_results(str(tmp_path))
    assert left.column("uri").to_pylist() == ["a", "c", "a"]
    np.testing.assert_array_equal(to_numpy(left.column("heatmap")), heat[[0, 2, 0]])


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
