"""Labelled data for training: label manifests, the public layouts, splits by patient, each expert's rows."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dualcam.io.labelled import SPLIT_FRACTIONS, SPLITS, assign_splits, expert_rows, read_labelled, split_counts


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
