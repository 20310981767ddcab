"""Inputs of a scoring run: folders, prefixes, manifests and S3 Inventory reports."""

import gzip
import json
from pathlib import Path
from urllib.parse import quote_plus

import numpy as np
import pyarrow as pa
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest

from dualcam.io import storage
from dualcam.io.inputs import read_inputs, resolve, resolve_uris, skipped_kinds
from dualcam.io.labelled import SPLIT_FRACTIONS, SPLITS, assign_splits, expert_rows, read_labelled, split_counts


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
        resolve(entry, manifest) for entry in entries]
    assert resolve_uris(pa.array(["a.png", "b/c.dcm"]), manifest).to_pylist() == [
        resolve("a.png", manifest), resolve("b/c.dcm", manifest)]


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


def patients_table(n_patients: int = 120, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = "COVID-19" if p % 4 == 0 else ("pneumonia" if p % 4 == 1 else "normal")
        for k in range(int(rng.integers(1, 4))):
            rows.append({"uri": f"/d/p{p}-{k}.png", "label": label, "patient_id": f"p{p}"})
    return pa.Table.from_pylist(rows)


def test_splits_are_deterministic_stratified_and_grouped_by_patient():
    table = patients_table()
    first, again, other = assign_splits(table, seed=0), assign_splits(table, seed=0), assign_splits(table, seed=1)
    assert first.equals(again) and not first.equals(other)
    patient_splits = {}
    for row in first.to_pylist():
        patient_splits.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in patient_splits.values())
    for label in ("COVID-19", "pneumonia", "normal"):
        splits = [r["split"] for r in first.to_pylist() if r["label"] == label]
        for name, fraction in zip(SPLITS, SPLIT_FRACTIONS):
            # each split gets its share of the label's images, to within one patient (at most 3 images)
            assert abs(splits.count(name) - fraction * len(splits)) <= 3, (label, name)


def test_given_splits_are_kept_and_unknown_ones_refused():
    table = pa.table({"uri": ["a", "b", "c"], "label": ["x", "x", "y"], "split": ["test", None, "train"]})
    out = assign_splits(table)
    assert out.column("split").to_pylist()[0::2] == ["test", "train"]
    assert out.column("split")[1].as_py() in SPLITS
    with pytest.raises(ValueError, match="unknown split values holdout"):
        assign_splits(table.set_column(2, "split", pa.array(["holdout", None, None])))


def test_expert_rows_take_named_negatives_or_all_others():
    table = pa.table({"uri": list("abcde"), "label": ["C1", "C2", "normal", "C1", "normal"], "split": ["train"] * 5})
    default = expert_rows(table, "C1")
    assert default.column("target").to_pylist() == [1, 0, 0, 1, 0]
    paper = expert_rows(table, "C2", ["normal"])
    assert paper.column("uri").to_pylist() == ["b", "c", "e"] and paper.column("target").to_pylist() == [1, 0, 0]
    assert split_counts(paper) == {"train": (1, 2), "val": (0, 0), "test": (0, 0)}
    with pytest.raises(ValueError,
                       match=r"no images labelled 'COVID'; the labels are: C1 \(2\), C2 \(1\), normal \(2\)"):
        expert_rows(table, "COVID")


def test_covid_collection_reader_on_the_sample_metadata(xray_samples):
    folder, expected = xray_samples.path, xray_samples.covid_counts
    labelled = read_labelled(str(folder / "covid-chestxray-dataset-metadata.csv"))
    # PA X-rays with a finding, of which those whose image is in the folder are kept and the others listed
    assert (labelled.table.num_rows, len(labelled.missing)) == (expected["kept"], expected["missing"])
    assert labelled.excluded == expected["excluded"]
    labels = labelled.table.column("label").to_pylist()
    assert labels.count("COVID-19") == expected["covid"]  # 'COVID-19' and 'COVID-19, ARDS'
    assert all(u.startswith(str(folder / "images")) for u in labelled.table.column("uri").to_pylist())
    assert all(m.startswith(str(folder / "images") + "/") for m in labelled.missing)
    both_views = read_labelled(str(folder / "covid-chestxray-dataset-metadata.csv"), views=("PA", "AP"))
    assert both_views.table.num_rows + len(both_views.missing) >= expected["both_views_at_least"]


def test_kermany_layout_and_label_folders(tmp_path):
    files = ["train/NORMAL/IM-0115-0001.jpeg", "train/NORMAL/NORMAL2-IM-1427-0001.jpeg",
             "train/PNEUMONIA/person1_bacteria_1.jpeg", "train/PNEUMONIA/person1_virus_6.jpeg",
             "val/NORMAL/IM-0001-0001.jpeg", "test/PNEUMONIA/person100_bacteria_475.jpeg",
             "__MACOSX/train/NORMAL/IM-0115-0001.jpeg", "train/NORMAL/._IM-0115-0001.jpeg"]
    for f in files:
        (tmp_path / "chest_xray" / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "chest_xray" / f).write_bytes(b"x")
    kermany = read_labelled(str(tmp_path / "chest_xray"))
    assert kermany.excluded == {"outside {train,val,test}/{NORMAL,PNEUMONIA}/": 1}  # the hidden ._ file is no image
    table = kermany.table
    rows = {Path(r["uri"]).name: (r["label"], r["patient_id"]) for r in table.to_pylist()}
    assert rows["person1_bacteria_1.jpeg"] == rows["person1_virus_6.jpeg"] == ("PNEUMONIA", "PNEUMONIA/person1")
    assert rows["NORMAL2-IM-1427-0001.jpeg"] == ("NORMAL", "NORMAL/NORMAL2-IM-1427")
    assert len(rows) == 6
    (tmp_path / "plain" / "COVID-19").mkdir(parents=True)
    (tmp_path / "plain" / "COVID-19" / "a.png").write_bytes(b"x")
    (tmp_path / "plain" / "normal" / "deep").mkdir(parents=True)
    (tmp_path / "plain" / "normal" / "deep" / "b.dcm").write_bytes(b"x")
    plain = read_labelled(str(tmp_path / "plain")).table
    assert plain.column("label").to_pylist() == ["COVID-19", "normal"]


def test_a_training_manifest_reports_missing_images(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "m.csv").write_text("uri,label,patient_id\na.png,COVID-19,7\ngone.png,normal,8\n")
    labelled = read_labelled(str(tmp_path / "m.csv"))
    assert labelled.table.column("uri").to_pylist() == [str(tmp_path / "a.png")]
    assert labelled.missing == [str(tmp_path / "gone.png")]
    (tmp_path / "n.csv").write_text("uri\na.png\n")
    with pytest.raises(ValueError, match="a training manifest needs a 'label' column"):
        read_labelled(str(tmp_path / "n.csv"))


def test_a_patient_with_a_given_split_keeps_all_its_images_there():
    table = pa.table({
        "uri": [f"u{i}" for i in range(40)], "label": ["x", "y"] * 20,
        "patient_id": [f"p{i // 2}" for i in range(40)],
        "split": ["test" if i % 2 == 0 else None for i in range(40)],
    })
    splits = assign_splits(table).column("split").to_pylist()
    assert splits == ["test"] * 40


def test_csv_identifiers_keep_their_leading_zeros(tmp_path):
    (tmp_path / "m.csv").write_text("uri,label,patient_id\n0001,normal,007\n0002,normal,7\n")
    for name in ("0001", "0002"):
        (tmp_path / name).write_bytes(b"x")
    table = read_labelled(str(tmp_path / "m.csv")).table
    assert table.column("uri").to_pylist() == [str(tmp_path / "0001"), str(tmp_path / "0002")]
    assert table.column("patient_id").to_pylist() == ["007", "7"]


def test_newer_covid_collection_findings_are_recognized(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "images" / name).write_bytes(b"x")
    (tmp_path / "metadata.csv").write_text(
        "patientid,finding,view,modality,folder,filename\n"
        '1,Pneumonia/Viral/COVID-19,PA,X-ray,images,a.jpg\n'
        '2,Pneumonia/Bacterial/Streptococcus,PA,X-ray,images,b.jpg\n')
    table = read_labelled(str(tmp_path / "metadata.csv")).table
    assert table.column("label").to_pylist() == ["COVID-19", "Pneumonia/Bacterial/Streptococcus"]
