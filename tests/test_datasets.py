"""Inputs of a scoring run: folders, prefixes and manifests."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dualcam import storage
from dualcam.datasets import read_inputs


def test_a_folder_lists_image_names_recursively_and_reports_the_rest(tmp_path):
    for name in ("b.png", "sub/a.JPG", "sub/IM0001", "sub/1.2.840.1", "notes.txt", "table.csv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = read_inputs(str(tmp_path))
    assert found.table.column("uri").to_pylist() == [
        str(tmp_path / n) for n in ("b.png", "sub/1.2.840.1", "sub/IM0001", "sub/a.JPG")
    ]
    assert found.skipped == [str(tmp_path / "notes.txt"), str(tmp_path / "table.csv")]


def test_a_manifest_resolves_relative_uris_and_keeps_its_columns(tmp_path):
    (tmp_path / "m.csv").write_text("uri,id,label\nimgs/a.png,7,COVID-19\n/abs/b.dcm,8,\ns3://bk/c.png,9,normal\n")
    table = read_inputs(str(tmp_path / "m.csv")).table
    assert table.column("uri").to_pylist() == [str(tmp_path / "imgs/a.png"), "/abs/b.dcm", "s3://bk/c.png"]
    assert table.column("id").to_pylist() == [7, 8, 9]
    assert table.column("label").to_pylist() == ["COVID-19", None, "normal"]
    pq.write_table(pa.table({"uri": ["x.png"], "when": pa.array([1], pa.timestamp("ms"))}), tmp_path / "m.parquet")
    parquet = read_inputs(str(tmp_path / "m.parquet")).table
    assert parquet.column("uri").to_pylist() == [str(tmp_path / "x.png")]
    assert parquet.schema.field("when").type == pa.timestamp("ms")


@pytest.mark.parametrize("text, message", [
    ("path,label\na.png,1\n", "a manifest needs a 'uri' column; it has path, label"),
    ("uri,label\na.png,1\n,2\n", "the 'uri' column has empty values"),
    ("uri\na.png\nb.png\na.png\n", "1 URIs are listed more than once, e.g. "),
])
def test_malformed_manifests_are_refused_by_name(tmp_path, text, message):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(ValueError, match=f"^{tmp_path / 'm.csv'}: {message}"):
        read_inputs(str(tmp_path / "m.csv"))


def test_an_s3_prefix_and_a_manifest_on_s3(s3_bucket):
    for key in ("x/1.png", "x/deep/2.dcm", "x/readme.md", "y/3.png"):
        storage.write_bytes(f"{s3_bucket}/{key}", b"x")
    found = read_inputs(f"{s3_bucket}/x")
    assert found.table.column("uri").to_pylist() == [f"{s3_bucket}/x/1.png", f"{s3_bucket}/x/deep/2.dcm"]
    assert found.skipped == [f"{s3_bucket}/x/readme.md"]
    storage.write_bytes(f"{s3_bucket}/lists/m.csv", b"uri\n../y/3.png\nz.png\n")
    table = read_inputs(f"{s3_bucket}/lists/m.csv").table
    assert table.column("uri").to_pylist() == [f"{s3_bucket}/y/3.png", f"{s3_bucket}/lists/z.png"]
    with pytest.raises(FileNotFoundError, match="no such bucket"):
        read_inputs("s3://no-such-bucket-here/x")
