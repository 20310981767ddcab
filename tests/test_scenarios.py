"""The class-overlap scenario: deterministic, and every feature drawn where its box says."""

import numpy as np
import pyarrow.csv as pacsv
import pytest
from PIL import Image

from dualcam.io import storage
from dualcam.synthetic.scenarios import (
    CLASS_FEATURES,
    SCENARIOS,
    get_scenario,
    lung_mask,
    overlap_image,
    write_overlap_dataset,
)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_files_and_more_images_keep_the_first(tmp_path):
    write_overlap_dataset(str(tmp_path / "a"), 6, 64, seed=3)
    write_overlap_dataset(str(tmp_path / "b"), 6, 64, seed=3)
    write_overlap_dataset(str(tmp_path / "c"), 6, 64, seed=4)
    write_overlap_dataset(str(tmp_path / "d"), 8, 64, seed=3)
    a, b, c, d = (_files(tmp_path / x) for x in "abcd")
    assert a == b
    images = [k for k in a if k.endswith(".png")]
    assert len(images) == 18 and all(a[k] != c[k] for k in images)
    assert all(d[k] == a[k] for k in images)


def test_manifest_and_boxes(tmp_path):
    data = write_overlap_dataset(str(tmp_path), 10, 64, seed=0)
    manifest = pacsv.read_csv(data.manifest).to_pylist()
    boxes = pacsv.read_csv(data.boxes).to_pylist()
    assert data.images == len(manifest) == 30
    for label in CLASS_FEATURES:
        rows = [r for r in manifest if r["label"] == label]
        assert [r["split"] for r in rows] == ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    for row in manifest:
        kinds = sorted(b["kind"] for b in boxes if b["uri"] == row["uri"])
        assert kinds == sorted(CLASS_FEATURES[row["label"]])
        with Image.open(tmp_path / row["uri"]) as image:
            assert image.size == (64, 64) and image.mode == "L"


def test_writes_to_s3(s3_bucket):
    data = write_overlap_dataset(f"{s3_bucket}/synth", 5, 48, seed=1)
    assert data.manifest == f"{s3_bucket}/synth/manifest.csv"
    assert len([u for u in storage.list_files(f"{s3_bucket}/synth") if u.endswith(".png")]) == 15


def _geometry(box, size):
    x, y, w, h = box
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    cx, cy = x + w / 2, y + h / 2
    return xx, yy, cx, cy, np.hypot(xx - cx, yy - cy), w / 2


@pytest.mark.parametrize("label", ["C1", "C2"])
def test_features_are_drawn_where_their_boxes_say(label):
    size, width = 96, 0.028 * 96
    for seed in range(20):
        image, boxes = overlap_image(label, size, np.random.default_rng(seed))
        for box in boxes:
            xx, yy, cx, cy, distance, half = _geometry((box.x, box.y, box.w, box.h), size)
            if box.kind == "F1":  # the ring is bright, its hole is not
                radius = half - width / 2
                ring, hole = np.abs(distance - radius) < width / 3, distance < radius - width
                assert image[ring].mean() - image[hole].mean() > 0.2, (seed, box)
            elif box.kind == "F2":  # the arms are bright, the quadrants between them are not
                arms = (np.minimum(np.abs(xx - cx), np.abs(yy - cy)) < width / 3) & (distance < half - width)
                quadrants = ((np.minimum(np.abs(xx - cx), np.abs(yy - cy)) > width)
                             & (np.maximum(np.abs(xx - cx), np.abs(yy - cy)) < half - width))
                assert image[arms].mean() - image[quadrants].mean() > 0.2, (seed, box)
            else:  # the disc is brighter than the lung just outside its box
                disc = distance < (half - 0.02 * size) / 2
                lung = lung_mask(xx / size, yy / size)
                around = lung & (distance > half + 2) & (distance < half + 6)
                assert around.sum() > 10
                assert image[disc].mean() - image[around].mean() > 0.15, (seed, box)


def test_features_do_not_overlap_and_normal_images_have_none():
    for seed in range(30):
        _, boxes = overlap_image("C1", 64, np.random.default_rng(seed))
        (a, b) = boxes
        assert a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y
        assert overlap_image("normal", 64, np.random.default_rng(seed))[1] == []


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="label must be one of C1, C2, normal"):
        overlap_image("C3", 64, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 48 pixels"):
        overlap_image("C1", 32, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"--per-class \(images per class\) must be at least 5"):
        write_overlap_dataset(str(tmp_path), 2)
    with pytest.raises(ValueError, match="unknown scenario 'x'; known: overlap, salient-shared"):
        write_overlap_dataset(str(tmp_path), 5, scenario="x")
    assert not list(tmp_path.iterdir())  # refused before writing anything


def _contrast(image, box, size):
    """Mean of the feature's bright part minus the lung just around its box."""
    xx, yy, cx, cy, distance, half = _geometry((box.x, box.y, box.w, box.h), size)
    if box.kind == "S":
        bright = distance < half / 2
    else:
        radius = half - 0.028 * size / 2
        bright = np.abs(distance - radius) < 0.028 * size / 3
    around = lung_mask(xx / size, yy / size) & (distance > half + 2) & (distance < half + 6)
    return image[bright].mean() - image[around].mean()


def test_salient_shared_draws_s_larger_and_brighter_than_f1():
    size, salient = 96, get_scenario("salient-shared")
    sides, contrasts = {"S": [], "F1": []}, {"S": [], "F1": [], "faint S": []}
    for seed in range(40):
        image, boxes = overlap_image("C1", size, np.random.default_rng(seed), salient)
        for box in boxes:
            sides[box.kind].append(box.w)
            contrasts[box.kind].append(_contrast(image, box, size))
        image, boxes = overlap_image("C1", size, np.random.default_rng(seed))
        contrasts["faint S"] += [_contrast(image, b, size) for b in boxes if b.kind == "S"]
    assert min(sides["S"]) > 1.3 * max(sides["F1"])
    s, f1 = np.array(contrasts["S"]), np.array(contrasts["F1"])
    assert np.mean(s > f1) > 0.9 and s.mean() > f1.mean() + 0.1 and f1.mean() > np.mean(contrasts["faint S"])


def test_scenarios_by_name(tmp_path):
    assert list(SCENARIOS) == ["overlap", "salient-shared"]
    data = write_overlap_dataset(str(tmp_path), 5, 48, scenario="salient-shared")
    assert data.scenario == "salient-shared" and data.images == 15
    assert write_overlap_dataset(str(tmp_path / "b"), 5, 48).scenario == "overlap"
