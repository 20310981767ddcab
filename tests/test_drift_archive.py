"""``dualcam drift`` end to end on the shared local Ray: a planted marker, identical versions on S3, refusals."""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dualcam import build_expert, preprocess, save_expert
from dualcam.cli import main
from dualcam.commands.drift import DRIFT_EXIT
from dualcam.io import storage
from dualcam.io.checkpoints import ExpertMeta
from dualcam.io.results import read_results, to_numpy
from dualcam.reports.drawing import DEFAULT_SIDE, GAP, SCALE_HEIGHT, TITLE_HEIGHT
from dualcam.synthetic.scenarios import write_synthetic_xrays

from conftest import run_without_ray
from samples import MARKER, planted_xray

SIZE = 128  # a 4 x 4 CAM grid for resnet18
TRAIN_IMAGES, EPOCHS, SEED = 64, 5, 0
SCORED = 32


def train_tiny(marker_of: Callable[[int, bool], bool], seed: int) -> torch.nn.Module:
    """A resnet18 expert trained from scratch in this process with the recipe of ``dualcam.distributed.training``
    (SGD, lr 0.01, momentum 0.9, batch 8), on ``TRAIN_IMAGES`` planted X-rays, half of them positive;
    ``marker_of(i, positive)`` says which carry the marker. Plain torch: Ray Train adds only start-up
    time here, and the drift run does not care how the weights were made."""
    rng = np.random.default_rng(seed)
    meta = ExpertMeta(arch="resnet18", class_name="lesion", input_size=SIZE)
    labels = torch.arange(TRAIN_IMAGES) % 2
    x = torch.stack([preprocess(planted_xray(rng, bool(y), marker_of(i, bool(y))), meta) for i, y in enumerate(labels)])
    torch.manual_seed(seed)
    model = build_expert("resnet18")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(EPOCHS):
        for batch in torch.randperm(TRAIN_IMAGES, generator=order).split(8):
            loss = F.cross_entropy(model(x[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[str, str, Path]:
    """(old, new, images): the old version saw the marker on a random half of its images, unrelated to
    the label; the new one was trained where every positive carries it. The images to score all
    carry the marker, half of them with a lesion."""
    root = tmp_path_factory.mktemp("planted")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        old = train_tiny(lambda i, positive: i // 2 % 2 == 1, SEED)
        new = train_tiny(lambda i, positive: positive, SEED)
    finally:
        torch.set_num_threads(threads)
    uris = []
    for name, model in (("old", old), ("new", new)):
        uris.append(str(root / name))
        save_expert(model, uris[-1], {"arch": "resnet18", "class_name": "lesion", "input_size": SIZE})
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(SEED + 100)
    for i in range(SCORED):
        image = planted_xray(rng, positive=i % 2 == 1, marker=True)
        Image.fromarray((image * 255).round().astype(np.uint8)).save(images / f"marked-{i:03d}.png")
    return uris[0], uris[1], images


def test_a_planted_marker_is_flagged(ray_cluster, planted, tmp_path, capsys):
    old, new, images = planted
    out = tmp_path / "drift"
    code = main(["drift", "--old-expert", old, "--new-expert", new, "--input", str(images), "--output", str(out),
                 "--no-progress"])
    printed = capsys.readouterr()
    assert code == DRIFT_EXIT, printed.err
    assert "more than the allowed 5.0%" in printed.out and "images drifted" in printed.err

    table = read_results(str(out))
    assert table.num_rows == SCORED and pc.all(pc.equal(table.column("status"), "ok")).as_py()
    rows = {name: table.column(name).to_numpy() for name in (
        "cam_correlation", "peak_shift_px", "extra_mass_outside_old_top", "delta_p", "gained_peak_x", "gained_peak_y")}
    print(f"\nplanted marker, {SCORED} images:")
    for name, values in rows.items():
        print(f"  {name:28s} " + " ".join(f"{q}={np.quantile(values, p):.3f}" for q, p in
                                          (("min", 0), ("p25", 0.25), ("median", 0.5), ("p75", 0.75), ("max", 1))))
    # the ADDK(new, old) peak lands in the marker's corner: the quarter of the image that holds it
    in_corner = (rows["gained_peak_x"] < SIZE // 2) & (rows["gained_peak_y"] < SIZE // 2)
    flagged = rows["cam_correlation"] < 0.5
    print(f"  flagged {flagged.mean():.1%}; ADDK(new, old) peak in the marker's corner {in_corner.mean():.1%}")
    assert MARKER[0].stop <= SIZE // 2 and MARKER[1].stop <= SIZE // 2
    # bounds with a margin over what seeds 0-3 gave (in_corner >= 78%, flagged >= 37%, every peak moved
    # by >= 31 px, median extra mass >= 0.31); this test runs seed 0
    assert in_corner.mean() >= 2 / 3
    assert flagged.mean() >= 0.25  # identical versions: 0
    assert (rows["peak_shift_px"] >= 0.75 * SIZE / 4).mean() >= 0.9  # three quarters of a CAM cell, or more
    assert np.median(rows["extra_mass_outside_old_top"]) > 0.2

    summary = json.loads((out / "_drift.json").read_text())
    assert summary["alert"] and summary["drifted"] == int(flagged.sum()) and summary["images"] == SCORED
    correlations = rows["cam_correlation"]
    assert summary["measures"]["cam_correlation"]["median"] == pytest.approx(np.median(correlations), abs=1e-6)
    assert len(summary["top"]) == 12 and summary["top"][0]["cam_correlation"] == pytest.approx(correlations.min())
    page = (out / "_report" / "index.html").read_text()
    figures = sorted((out / "_report" / "images").glob("[0-9][0-9]-*.png"))
    assert len(figures) == 12 and all(f"images/{f.name}" in page for f in figures)
    # the triple: old, new, ADDK(new, old), each titled and over its colour bar
    assert Image.open(figures[0]).size == (3 * DEFAULT_SIDE + 2 * GAP, TITLE_HEIGHT + DEFAULT_SIDE + SCALE_HEIGHT)
    assert "ADDK(new, old) at alpha 5" in page
    # images named relative to the folder they share, which is named once: no machine's absolute paths
    top = Path(summary["top"][0]["uri"])
    assert f"relative to {images}" in page and f">{top.relative_to(images)}<" in page and str(top) not in page


@pytest.fixture(scope="module")
def expert(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("expert") / "v1")
    torch.manual_seed(1)
    save_expert(build_expert("resnet18"), uri, {"arch": "resnet18", "class_name": "COVID-19", "input_size": 64})
    return uri


def test_identical_versions_show_no_drift_on_s3(ray_cluster, expert, s3_bucket, tmp_path, capsys):
    for f in Path(expert).iterdir():
        storage.write_bytes(f"{s3_bucket}/experts/v1/{f.name}", f.read_bytes())
    for path in write_synthetic_xrays(tmp_path, 5, size=90):
        storage.write_bytes(f"{s3_bucket}/archive/{path.name}", path.read_bytes())
    version, out = f"{s3_bucket}/experts/v1", f"{s3_bucket}/drift"
    args = ["drift", "--old-expert", version, "--new-expert", version, "--input", f"{s3_bucket}/archive", "--output",
            out,
            "--no-progress", "--batch-size", "2"]
    assert main(args) == 0, capsys.readouterr().err
    assert "drift: 0 of 5 images drifted" in capsys.readouterr().out

    table = read_results(out)
    assert table.column("status").to_pylist() == ["ok"] * 5
    assert table.column("cam_correlation").to_pylist() == pytest.approx([1.0] * 5)
    for name in ("peak_shift_px", "extra_mass_outside_old_top", "delta_p"):
        assert table.column(name).to_pylist() == [0.0] * 5, name
    assert np.unique(to_numpy(table.column("gained"))).tolist() == [1.0]
    assert np.unique(to_numpy(table.column("lost"))).tolist() == [1.0]
    run = json.loads(storage.read_bytes(f"{out}/_run.json"))
    assert run["kind"] == "drift" and run["old"] == run["new"] and run["alpha"] == 5.0
    summary = json.loads(storage.read_bytes(f"{out}/_drift.json"))
    assert (summary["drifted"], summary["drifted_share"], summary["alert"], summary["errors"]) == (0, 0.0, False, 0)
    assert summary["old"]["version"] == summary["new"]["version"] and len(summary["top"]) == 5
    page = storage.read_bytes(summary["page"]).decode()
    assert summary["page"] == f"{out}/_report/index.html" and "0 (0.0%), cam_correlation &lt; 0.5" in page
    figures = [u for u in storage.list_files(f"{out}/_report/images") if u.rsplit("/", 1)[1][:2].isdigit()]
    assert len(figures) == 5 and all(f"images/{u.rsplit('/', 1)[1]}" in page for u in figures)

    assert main([*args, "--alpha", "15"]) == 2  # one output, one configuration: as score
    assert "holds results of other experts, another alpha, precision or schema (drift: old" in capsys.readouterr().err
    assert main(["score", "--expert1", version, "--expert2", version, "--input", f"{s3_bucket}/archive", "--output",
                 out]) == 2
    assert "holds results of other experts" in capsys.readouterr().err


def test_different_experts_are_refused_before_any_work(expert, tmp_path, capsys):
    other = str(tmp_path / "other")
    save_expert(build_expert("resnet34"), other, {"arch": "resnet34", "class_name": "COVID-19", "input_size": 64})
    images = tmp_path / "images"
    write_synthetic_xrays(images, 1, size=64)
    code = (  # no Ray at all: the refusal must come before any Ray work
        "from dualcam import drift_archive\n"
        f"try: drift_archive({expert!r}, {other!r}, {str(images)!r}, {str(tmp_path / 'out')!r})\n"
        "except ValueError as err: print(err)\n"
    )
    assert "are not two versions of the same expert: arch 'resnet18' vs 'resnet34'" in run_without_ray(code)
    assert not (tmp_path / "out").exists()
    args = ["--input", str(images), "--output", str(tmp_path / "o")]
    assert main(["drift", "--old-expert", expert, "--new-expert", other, *args]) == 2
    assert "are not two versions of the same expert" in capsys.readouterr().err


def test_a_folder_where_nothing_decodes_fails_in_one_line(ray_cluster, expert, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("a.png", "b.jpg"):
        (bad / name).write_bytes(b"junk, not an image")
    out = tmp_path / "out"
    code = main(["drift", "--old-expert", expert, "--new-expert", expert, "--input", str(bad), "--output", str(out),
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1  # as score: a run with nothing scored failed, whatever it says of drift
    assert captured.err.count("dualcam: run failed: none of the 2 inputs of this run could be scored; first error") == 1
    assert "Traceback" not in captured.err + captured.out
    assert "drift: 0 of 0 images drifted" in captured.out
    summary = json.loads((out / "_drift.json").read_text())
    assert (summary["images"], summary["errors"], summary["top"]) == (0, 2, [])
    assert (out / "_report" / "index.html").is_file()


@pytest.mark.parametrize(("option", "value", "reason"), [
    ("--threshold", "1.5", "threshold is compared with cam_correlation in [-1, 1]"),
    ("--max-drift-share", "-0.1", "max_drift_share is a share of images in [0, 1]"),
    ("--rows", "-1", "(--rows, top_k) must be >= 0"),
])
def test_meaningless_options_are_refused_before_any_work(expert, tmp_path, capsys, option, value, reason):
    args = ["drift", "--old-expert", expert, "--new-expert", expert, "--input", str(tmp_path), "--output",
            str(tmp_path / "o")]
    assert main([*args, option, value]) == 2
    assert reason in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_the_drift_summary_is_written_while_the_run_holds_the_lease(ray_cluster, expert, tmp_path, monkeypatch):
    from dualcam.distributed.pipeline import drift_archive
    from dualcam.io.lease import Lease, LeaseHeld
    from dualcam.reports import drift_page

    summarize, held = drift_page.summarize, []

    def summarize_when_held(output: str, *args):
        try:
            with Lease(output):  # another run's attempt, at the moment the summary is written
                held.append(False)
        except LeaseHeld:
            held.append(True)
        return summarize(output, *args)

    monkeypatch.setattr(drift_page, "summarize", summarize_when_held)
    write_synthetic_xrays(tmp_path / "images", 2, size=90)
    summary = drift_archive(expert, expert, str(tmp_path / "images"), str(tmp_path / "out"), progress=False)
    assert held == [True] and summary.report["images"] == 2
