"""Inputs of a scoring run: folders, prefixes, manifests and S3 Inventory reports."""

import gzip
import json
from urllib.parse import quote_plus

import pyarrow as pa
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest

from dualcam.io import storage
from dualcam.io.inputs import read_inputs, resolve_entry, resolve_uris, skipped_kinds


def test_a_folder_lists_image_names_recursively_and_reports_the_rest(tmp_path):
    for name in ("b.png", "sub/a.JPG", "sub/IM0001", "sub/1.2.840.1", "notes.txt", "table.csv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = read_inputs(str(tmp_path))
    assert found.table.column("uri").to_pylist() == [
        str(tmp_path / n) for n in ("b.png", "sub/1.2.840.1", "sub/IM0001", "sub/a.JPG")
    ]
    assert found.skipped.to_pylist() == [str(tmp_path / "notes.txt"), str(tmp_path / "table.csv")]
    assert skipped_kinds(found.skipped) == {".csv": 1, ".txt": 1}


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


def test_one_file_under_four_spellings_in_a_manifest_is_one_uri_listed_four_times(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.png").write_bytes(b"x")
    manifest = tmp_path / "d" / "m.csv"
    manifest.write_text(f"uri\na.png\n./a.png\n{tmp_path}/d//a.png\nsub/../a.png\n{tmp_path}/d/sub/../a.png\n")
    assert resolve_uris(pa.array(["a.png", "./a.png", f"{tmp_path}/d//a.png", "sub/../a.png"]), str(manifest)
                        ).to_pylist() == [str(tmp_path / "d" / "a.png")] * 4
    with pytest.raises(ValueError, match=f"1 URIs are listed more than once, e.g. {tmp_path / 'd' / 'a.png'}$"):
        read_inputs(str(manifest))


def test_inputs_carry_the_version_a_listing_gives_them(tmp_path, s3_bucket):
    for root in (str(tmp_path / "x"), f"{s3_bucket}/x"):
        for key in ("1.png", "deep/2.dcm"):
            storage.write_bytes(f"{root}/{key}", key.encode())
        table = read_inputs(root).table
        assert table.column_names == ["uri", "input_version"]
        uris = table.column("uri").to_pylist()
        assert table.column("input_version").to_pylist() == [storage.version_of(u) for u in uris]
    (tmp_path / "m.csv").write_text(f"uri,id\nx/1.png,1\n{s3_bucket}/x/1.png,2\n")
    table = read_inputs(str(tmp_path / "m.csv")).table  # no stat or HEAD per entry: versions unknown
    assert table.column("input_version").to_pylist() == [None, None]
    (tmp_path / "clash.csv").write_text("uri,input_version\na.png,1\n")
    with pytest.raises(ValueError, match="a manifest column may not be named 'input_version'"):
        read_inputs(str(tmp_path / "clash.csv"))


def test_an_s3_prefix_and_a_manifest_on_s3(s3_bucket):
    for key in ("x/1.png", "x/deep/2.dcm", "x/readme.md", "y/3.png"):
        storage.write_bytes(f"{s3_bucket}/{key}", b"x")
    found = read_inputs(f"{s3_bucket}/x")
    assert found.table.column("uri").to_pylist() == [f"{s3_bucket}/x/1.png", f"{s3_bucket}/x/deep/2.dcm"]
    assert found.skipped.to_pylist() == [f"{s3_bucket}/x/readme.md"]
    storage.write_bytes(f"{s3_bucket}/lists/m.csv", b"uri\n../y/3.png\nz.png\n")
    table = read_inputs(f"{s3_bucket}/lists/m.csv").table
    assert table.column("uri").to_pylist() == [f"{s3_bucket}/y/3.png", f"{s3_bucket}/lists/z.png"]
    with pytest.raises(FileNotFoundError, match="no such bucket"):
        read_inputs("s3://no-such-bucket-here/x")


ODD_ENTRIES = ["a.png", "sub/b.png", "./c.png", "../d.png", "sub/../e.png", "f//g.png", "h/./i.png", "dir/", "...",
               "..x", "x..", "ü/ß.dcm", "sp ace+%20.png", "/abs/j.png", "s3://other/k.png", "a/.", ".hidden/l.png", "."]


@pytest.mark.parametrize("manifest", ["/data/lists/m.csv", "/m.csv", "s3://bk/lists/m.csv", "s3://bk/m.csv",
                                      "s3://bk/x//y/../m.csv"])
def test_manifest_uris_resolve_in_arrow_exactly_as_one_by_one(manifest):
    entries = ODD_ENTRIES * 3  # odd entries in several places, plain ones between them
    assert resolve_uris(pa.chunked_array([entries[:20], entries[20:]]), manifest).to_pylist() == [
        resolve_entry(entry, manifest) for entry in entries]
    assert resolve_uris(pa.array(["a.png", "b/c.dcm"]), manifest).to_pylist() == [
        resolve_entry("a.png", manifest), resolve_entry("b/c.dcm", manifest)]


def _inventory_manifest(bucket: str, fmt: str, schema: str, files: list[str]) -> bytes:
    return json.dumps({"sourceBucket": "archive", "destinationBucket": f"arn:aws:s3:::{bucket[5:]}",
                       "version": "2016-11-30", "creationTimestamp": "1764374400000", "fileFormat": fmt,
                       "fileSchema": schema,
                       "files": [{"key": f, "size": 1, "MD5checksum": "0"} for f in files]}).encode()


# (key, is_latest, is_delete_marker): old versions and delete markers are not inputs, nor folder markers
INVENTORY = [("cxr/p1/a b+c%.png", True, False), ("cxr/p1/1.2.840.1", True, False), ("cxr/p1/ü.dcm", True, False),
             ("cxr/p2/old.png", False, False), ("cxr/p2/gone.png", True, True), ("cxr/p2/", True, False),
             ("cxr/notes.txt", True, False), ("cxr/.DS_Store", True, False)]
# in the inventory's order
CURRENT_IMAGES = ["s3://archive/cxr/p1/a b+c%.png", "s3://archive/cxr/p1/1.2.840.1", "s3://archive/cxr/p1/ü.dcm"]


def test_an_s3_inventory_is_an_input(s3_bucket):
    root = f"{s3_bucket}/inventory/archive/daily"
    rows = [f'"archive","{quote_plus(key)}","v{i}","{str(latest).lower()}","{str(marker).lower()}","{i}"\n'
            for i, (key, latest, marker) in enumerate(INVENTORY)]
    storage.write_bytes(f"{root}/data/one.csv.gz", gzip.compress("".join(rows[:5]).encode()))
    storage.write_bytes(f"{root}/data/two.csv.gz", gzip.compress("".join(rows[5:]).encode()))
    csv_files = [f"inventory/archive/daily/data/{name}.csv.gz" for name in ("one", "two")]
    storage.write_bytes(f"{root}/2026-11-29T00-00Z/manifest.json", _inventory_manifest(
        s3_bucket, "CSV", "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size", csv_files))
    found = read_inputs(f"{root}/2026-11-29T00-00Z/manifest.json")
    assert found.table.column("uri").to_pylist() == CURRENT_IMAGES
    assert skipped_kinds(found.skipped) == {".txt": 1, "hidden": 1}

    table = pa.table({"bucket": ["archive"] * len(INVENTORY), "key": [key for key, _, _ in INVENTORY],
                      "version_id": [f"v{i}" for i in range(len(INVENTORY))],
                      "is_latest": [latest for _, latest, _ in INVENTORY],
                      "is_delete_marker": [marker for _, _, marker in INVENTORY]})
    for fmt, suffix, write in (("Parquet", "parquet", pq.write_table), ("ORC", "orc", orc.write_table)):
        buf = pa.BufferOutputStream()
        write(table, buf)
        storage.write_bytes(f"{root}/data/all.{suffix}", buf.getvalue().to_pybytes())
        storage.write_bytes(f"{root}/{fmt}/manifest.json", _inventory_manifest(
            s3_bucket, fmt, "message s3.inventory { ... }", [f"inventory/archive/daily/data/all.{suffix}"]))
        assert read_inputs(f"{root}/{fmt}/manifest.json").table.column("uri").to_pylist() == CURRENT_IMAGES
    assert read_inputs(f"{root}/data/all.parquet").table.column("uri").to_pylist() == CURRENT_IMAGES  # a data file

    with pytest.raises(ValueError, match=f"^{root}/data/one.csv.gz: an S3 Inventory CSV file has no header"):
        read_inputs(f"{root}/data/one.csv.gz")
    storage.write_bytes(f"{root}/bad/manifest.json", b'{"fileFormat": "CSV"}')
    with pytest.raises(ValueError, match=f"^{root}/bad/manifest.json: not an S3 Inventory manifest"):
        read_inputs(f"{root}/bad/manifest.json")
    lost = _inventory_manifest(s3_bucket, "CSV", "Bucket, Key", ["x.csv.gz"])
    storage.write_bytes(f"{root}/lost/manifest.json", lost)
    with pytest.raises(FileNotFoundError, match=f"^{s3_bucket}/x.csv.gz: no such object"):
        read_inputs(f"{root}/lost/manifest.json")
