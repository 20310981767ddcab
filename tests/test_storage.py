"""Parquet that appears whole on local disk, and rewriting result files without their error rows."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
