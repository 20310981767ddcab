"""Scoring archives end to end on the shared local Ray: local folders, S3 (moto), manifests, resume, dry runs,
and the checks that keep an output whole: one writer at a time, only regular files read, the probe write."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dualcam import addk, forward_with_cams, load_expert, load_meta, model_input, upsample
from dualcam.cli import main
from dualcam.distributed.pipeline import score_archive
from dualcam.io import storage
from dualcam.io.lease import LOCK_FILE, Lease
from dualcam.io.results import RUN_FILE, SCORE, RunSpec, data_files, read_results, to_numpy
from dualcam.maps.kernel import overlap
from dualcam.synthetic.scenarios import synthetic_xray, write_synthetic_xrays

from conftest import kill_driver_when, run_without_ray
from samples import bad_inputs, dicom_bytes

INPUT_SIZE = 128  # of the experts (conftest's fixture): a 4 x 4 CAM grid for resnet18
BAD_REASONS = {
    "corrupt.png": "corrupt or truncated PNG",
    "truncated.png": "corrupt or truncated PNG",
    "zero-byte.jpg": "empty file",
    "not-an-image.jpg": "not a PNG, JPEG or DICOM file",
    "too-large.png": "over the limit",
    "no-pixels.dcm": "no pixel data",
}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Good images of several sizes (one nested, one DICOM without an extension), every bad input, a non-image."""
    root = tmp_path_factory.mktemp("archive")
    write_synthetic_xrays(root, 5, size=160)
    wide = (synthetic_xray(200, np.random.default_rng(7))[:120] * 255).astype(np.uint8)
    (root / "nested").mkdir()
    Image.fromarray(wide).save(root / "nested" / "wide.jpg")
    rows = np.linspace(0, 4000, 96 * 96).reshape(96, 96)
    (root / "nested" / "IM0001").write_bytes(dicom_bytes(96, 96, rows))
    for name, data in bad_inputs().items():
        (root / name).write_bytes(data)
    (root / "notes.txt").write_text("not an input")
    return root


def by_uri(table: pa.Table) -> dict[str, dict]:
    rows = table.to_pylist()
    assert len({r["uri"] for r in rows}) == len(rows), "an input appears more than once"
    return {r["uri"]: r for r in rows}


def test_a_folder_gives_one_row_per_input_equal_to_a_direct_computation(ray_cluster, experts, archive, tmp_path):
    out = str(tmp_path / "results")
    summary = score_archive(*experts, str(archive), out, alpha=15.0, batch_size=4, progress=False)

    table = read_results(out)
    rows = by_uri(table)
    expected = sorted(str(p) for p in archive.rglob("*") if p.is_file() and p.name != "notes.txt")
    assert sorted(rows) == expected
    assert (summary.inputs, summary.scored_now, summary.ok, summary.errors) == (13, 13, 7, 6)
    # the file whose name is not an image's is counted and named, not dropped silently
    assert summary.skipped.to_pylist() == [str(archive / "notes.txt")]
    assert f"; 1 other file skipped (not an image's name), e.g. {archive / 'notes.txt'};" in summary.line()
    assert "none" not in (summary.failure(0.5) or "") and summary.failure(0.5) is None
    assert "6 of 13 inputs of this run failed" in summary.failure(0.05)
    for name, reason in BAD_REASONS.items():
        row = rows[str(archive / name)]
        assert row["status"] == "error" and row["p1"] is None and row["heatmap"] is None
        assert row["error"].startswith(str(archive / name)) and reason in row["error"], row["error"]
        assert row["error_kind"] == "permanent"  # the file itself: a plain rerun leaves it be

    e1, e2 = load_expert(experts[0]), load_expert(experts[1])
    ok = table.filter(pa.compute.equal(table.column("status"), "ok"))
    cams1, cams2, heats = (to_numpy(ok.column(c)) for c in ("cam1", "cam2", "heatmap"))
    for i, row in enumerate(ok.to_pylist()):
        x, (height, width) = model_input(Path(row["uri"]).read_bytes(), row["uri"], e1.meta)
        assert (row["width"], row["height"]) == (width, height)
        x = x[None]
        with torch.inference_mode():
            l1, c1 = forward_with_cams(e1.model, x)
            l2, c2 = forward_with_cams(e2.model, x)
        np.testing.assert_allclose(cams1[i], c1[0, 1].numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(cams2[i], c2[0, 1].numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.log(heats[i]), np.log(addk(c1[0, 1], c2[0, 1], 15.0).numpy()), atol=1e-3)
        assert row["p1"] == pytest.approx(l1.softmax(-1)[0, 1].item(), rel=1e-4)
        assert row["p2"] == pytest.approx(l2.softmax(-1)[0, 1].item(), rel=1e-4)
        assert row["heatmap_max"] == pytest.approx(heats[i].max(), rel=1e-6)
        assert row["overlap"] == overlap(cams1[i], cams2[i]) and row["schema_version"] == SCORE.schema_version == 4
        assert (row["alpha"], row["c1_class"], row["c2_version"]) == (15.0, "COVID-19", e2.meta.version)
        # the peak (centre of the tied maxima: upsampling makes plateaus at the borders), against
        # the heatmap upsampled to the image itself, within one input pixel
        full = upsample(heats[i], (row["height"], row["width"]))
        py, px = np.argwhere(full == full.max()).mean(axis=0)
        assert abs(row["peak_x"] - px) <= row["width"] / INPUT_SIZE + 1
        assert abs(row["peak_y"] - py) <= row["height"] / INPUT_SIZE + 1
        assert row["box_x"] <= row["peak_x"] < row["box_x"] + row["box_w"] <= row["width"]
        assert row["box_y"] <= row["peak_y"] < row["box_y"] + row["box_h"] <= row["height"]


def test_the_sample_xrays_all_score(ray_cluster, experts, xray_samples, tmp_path):
    summary = score_archive(*experts, str(xray_samples.path), str(tmp_path / "out"), batch_size=16, progress=False)
    images = [p for p in xray_samples.path.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm")]
    assert (summary.ok, summary.errors) == (len(images), 0)
    assert sorted(by_uri(read_results(summary.output, ["uri"]))) == sorted(str(p) for p in images)


def test_s3_manifest_passes_columns_through_and_reruns_skip(ray_cluster, experts, archive, s3_bucket):
    for local in experts:
        for f in Path(local).iterdir():
            storage.write_bytes(f"{s3_bucket}/experts/{Path(local).name}/{f.name}", f.read_bytes())
    names = ["synthetic-00000.png", "synthetic-00001.png", "nested/wide.jpg", "truncated.png"]
    for name in names:
        storage.write_bytes(f"{s3_bucket}/archive/{name}", (archive / name).read_bytes())
    manifest = pa.table({
        "uri": [f"archive/{n}" for n in names] + [f"{s3_bucket}/archive/missing.png"],
        "patient": ["p1", "p2", "p3", "p4", "p5"],
        "label": [1, 0, 1, None, 0],
    })
    buf = pa.BufferOutputStream()
    pacsv.write_csv(manifest, buf)
    storage.write_bytes(f"{s3_bucket}/manifest.csv", buf.getvalue().to_pybytes())

    args = (f"{s3_bucket}/experts/COVID-19", f"{s3_bucket}/experts/pneumonia", f"{s3_bucket}/manifest.csv")
    out = f"{s3_bucket}/results"
    first = score_archive(*args, out, batch_size=2, progress=False)
    again = score_archive(*args, out, batch_size=2, progress=False)

    assert (first.scored_now, first.ok, first.errors) == (5, 3, 2)
    assert (again.scored_now, again.already_done, again.ok, again.errors) == (0, 5, 3, 2)
    rows = by_uri(read_results(out))
    assert sorted(rows) == sorted([f"{s3_bucket}/archive/{n}" for n in names] + [f"{s3_bucket}/archive/missing.png"])
    for uri, patient, label in zip(*(manifest[c].to_pylist() for c in ("uri", "patient", "label"))):
        row = rows[uri if uri.startswith("s3://") else f"{s3_bucket}/{uri}"]
        assert (row["patient"], row["label"]) == (patient, label)
    assert "no such object" in rows[f"{s3_bucket}/archive/missing.png"]["error"]
    assert rows[f"{s3_bucket}/archive/nested/wide.jpg"]["status"] == "ok"

    # the missing image arrives; --retry-errors scores it, and the other error stays an error, once
    storage.write_bytes(f"{s3_bucket}/archive/missing.png", (archive / "synthetic-00002.png").read_bytes())
    retried = score_archive(*args, out, batch_size=2, retry_errors=True, progress=False)
    assert (retried.scored_now, retried.ok, retried.errors) == (2, 4, 1)
    rows = by_uri(read_results(out))
    assert rows[f"{s3_bucket}/archive/missing.png"]["status"] == "ok" and len(rows) == 5


def test_a_killed_run_resumes_with_each_input_once(ray_cluster, experts, tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    write_synthetic_xrays(images, 80, size=96)
    code = (
        "from dualcam.distributed.pipeline import score_archive\n"
        f"score_archive({experts[0]!r}, {experts[1]!r}, {str(images)!r}, {str(out)!r}, batch_size=2, "
        "rows_per_file=2, progress=False)\n"
    )
    kill_driver_when(code, ray_cluster, lambda: len(data_files(str(out))) >= 2, timeout=600)

    partial = pq.read_table(out)  # a plain reader: finished files only, nothing truncated visible
    assert 0 < partial.num_rows < 80
    summary = score_archive(*experts, str(images), str(out), batch_size=4, progress=False)
    assert summary.already_done == len(set(partial.column("uri").to_pylist()))
    assert sorted(by_uri(read_results(str(out), ["uri"]))) == sorted(str(p) for p in images.iterdir())
    assert not list(out.rglob("*.inflight"))


def test_results_read_back_without_ray(ray_cluster, experts, archive, tmp_path):
    out = tmp_path / "out"
    score_archive(*experts, str(archive), str(out), batch_size=8, progress=False)
    code = (
        "import pyarrow.parquet as pq, pandas as pd\n"
        f"t = pq.read_table({str(out)!r}, filters=[('status', '=', 'ok')])\n"
        "heatmaps = t['heatmap'].combine_chunks().to_numpy_ndarray()\n"
        f"df = pd.read_parquet({str(out)!r})\n"
        "print(heatmaps.shape, heatmaps.dtype, len(df), int((df.status == 'error').sum()))\n"
    )
    assert run_without_ray(code).split() == ["(7,", "4,", "4)", "float32", "13", "6"]


def test_cli_exit_codes(ray_cluster, experts, archive, tmp_path, capsys):
    c = ["--expert1", experts[0], "--expert2", experts[1], "--no-progress"]
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, data in list(bad_inputs().items())[:2]:
        (bad / name).write_bytes(data)
    assert main(["score", *c, "--input", str(bad), "--output", str(tmp_path / "o1")]) == 1
    assert "run failed: none of the 2 inputs of this run could be scored" in capsys.readouterr().err

    assert main(["score", *c, "--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o2")]) == 2
    assert "no such file or folder" in capsys.readouterr().err

    assert main(["score", *c, "--input", str(archive), "--output", str(tmp_path / "o3"), "--limit", "8"]) == 1
    captured = capsys.readouterr()
    assert "scored 8 images" in captured.out and "run failed: 3 of 8 inputs of this run failed" in captured.err
    # --no-progress turns off the bars, not the line saying what the run sets out to do
    assert f"dualcam: scoring 8 of 13 inputs (0 already in {tmp_path / 'o3'}) with 2 actor(s) of 1 CPU" in captured.err
    assert "1 other file skipped (not an image's name)" in captured.out
    # the rest: 3 of its 5 fail, judged on this run's inputs alone (the folder's would be 6 of 13)
    assert main(["score", *c, "--input", str(archive), "--output", str(tmp_path / "o3"),
                 "--max-error-fraction", "0.5"]) == 1
    assert "run failed: 3 of 5 inputs of this run failed (60.0%)" in capsys.readouterr().err
    assert main(["score", *c, "--input", str(archive), "--output", str(tmp_path / "o3"),
                 "--max-error-fraction", "0.5"]) == 0  # nothing left to score: nothing failed
    assert "scored 0 images" in capsys.readouterr().out
    assert main(["score", *c, "--input", str(archive), "--output", str(tmp_path / "o3"), "--alpha", "50"]) == 2
    assert "holds results of other experts, another alpha, precision or schema" in capsys.readouterr().err
    # the precision is part of the run's identity: float32 rows are not resumed in bf16
    assert main(["score", *c, "--input", str(archive), "--output", str(tmp_path / "o3"), "--precision", "bf16"]) == 2
    assert "alpha 5, fp32, schema" in capsys.readouterr().err
    assert json.loads((tmp_path / "o3" / "_run.json").read_text())["precision"] == "fp32"


def test_unusable_outputs_and_inputs_are_refused_before_any_work(experts, archive, tmp_path):
    out = tmp_path / "foreign"
    out.mkdir()
    pq.write_table(pa.table({"x": [1]}), out / "data.parquet")
    with pytest.raises(ValueError, match="holds Parquet files that dualcam did not write"):
        score_archive(*experts, str(archive), str(out), limit=0)
    only_text = tmp_path / "text"
    only_text.mkdir()
    (only_text / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"no image files found \(1 other file skipped"):
        score_archive(*experts, str(only_text), str(tmp_path / "o"))
    clash = tmp_path / "clash.csv"
    clash.write_text(f"uri,status\n{archive / 'synthetic-00000.png'},x\n")
    with pytest.raises(ValueError, match="manifest columns status clash"):
        score_archive(*experts, str(clash), str(tmp_path / "o"))


@pytest.mark.parametrize("old_schema", [1, 2, 3])
def test_an_older_schema_output_never_receives_schema_4_rows(experts, archive, tmp_path, old_schema):
    out = tmp_path / "old"
    out.mkdir()
    same_experts = RunSpec.of(SCORE, load_meta(experts[0]), load_meta(experts[1]), 5.0)
    assert same_experts.schema_version == 4
    (out / RUN_FILE).write_text(RunSpec(same_experts.first, same_experts.second, 5.0,
                                        schema_version=old_schema).to_json())
    before = sorted(out.iterdir())
    for retry_errors in (False, True):  # refused before error rows would be taken out, too
        refused = rf"another alpha, precision or schema \(score: .* alpha 5, fp32, schema {old_schema}\); choose"
        with pytest.raises(ValueError, match=refused):
            score_archive(*experts, str(archive), str(out), retry_errors=retry_errors)
    assert sorted(p for p in out.iterdir() if p.name != LOCK_FILE) == before  # the lease's lock file stays


def test_a_named_pipe_among_the_inputs_gets_its_error_row_and_a_rerun_counts_it(ray_cluster, experts, tmp_path):
    images, out = tmp_path / "images", str(tmp_path / "out")
    write_synthetic_xrays(images, 6, size=96)
    os.mkfifo(images / "pipe.png")  # reading it would wait for a writer forever
    first = score_archive(*experts, str(images), out, batch_size=4, progress=False)
    assert (first.inputs, first.ok, first.errors) == (7, 6, 1)
    assert f"{images / 'pipe.png'}: not a regular file but a named pipe" in first.first_error
    again = score_archive(*experts, str(images), out, batch_size=4, progress=False)
    assert (again.inputs, again.already_done, again.scored_now) == (7, 7, 0)
    assert len(by_uri(read_results(out, ["uri"]))) == 7


def test_a_second_run_into_an_output_being_written_is_refused_before_any_work(experts, archive, tmp_path):
    out = str(tmp_path / "out")
    code = (  # Ray cannot even be imported here: the refusal must come first
        "import sys\nsys.stderr = sys.stdout\nfrom dualcam.cli import main\n"
        f"print(main(['score', '--expert1', {experts[0]!r}, '--expert2', {experts[1]!r}, '--input', {str(archive)!r}, "
        f"'--output', {out!r}]))\n"
    )
    with Lease(out):
        printed = run_without_ray(code).splitlines()
    assert printed[-1] == "2"
    assert printed[0].startswith(f"dualcam: error: {out} is being written by another run (held by host ")
    assert f"pid {os.getpid()}, started " in printed[0] and "--wait-for-lease" in printed[0]
    assert not data_files(out)


def read_only(path: Path) -> list[str]:
    """A command prefix under which ``path`` cannot be written: a read-only bind mount in a mount namespace of
    its own for root (for whom permissions are no obstacle), else the folder's permissions taken away."""
    if os.geteuid() != 0:
        for p in [path, *path.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        return []
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode:
        pytest.skip("running as root, and no mount namespace to make a folder read-only in")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, str(path)]


def test_an_existing_output_that_cannot_be_written_is_refused_before_any_work(ray_cluster, experts, tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    write_synthetic_xrays(images, 6, size=96)
    score_archive(*experts, str(images), str(out), limit=2, progress=False)
    before = sorted(p.name for p in out.iterdir())
    code = (  # no Ray here: the refusal must come before it, from the command and from the library alike
        "import sys\nsys.modules['ray'] = None\nsys.stderr = sys.stdout\nfrom dualcam.cli import main\n"
        "from dualcam.commands.common import exit_status\nfrom dualcam.distributed.pipeline import score_archive\n"
        f"print(main(['score', '--expert1', {experts[0]!r}, '--expert2', {experts[1]!r}, '--input', {str(images)!r}, "
        f"'--output', {str(out)!r}]))\n"
        f"print(exit_status(lambda: score_archive({experts[0]!r}, {experts[1]!r}, {str(images)!r}, {str(out)!r}, "
        "progress=False)))\n"
    )
    result = subprocess.run([*read_only(out), sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert result.stdout.splitlines() == [
        f"dualcam: error: --output {out}: no permission to write in {out}", "2",  # the command's argument check
        f"dualcam: error: {out}: cannot write results here ({reason}); nothing was done", "2",  # the probe write
    ], result.stdout + result.stderr
    assert sorted(p.name for p in out.iterdir()) == before


def test_rewritten_files_keep_the_mode_of_the_files_ray_wrote(ray_cluster, experts, archive, tmp_path):
    out = tmp_path / "out"
    score_archive(*experts, str(archive), str(out), batch_size=8, rows_per_file=4, progress=False)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if not p.name.startswith(".")}
    score_archive(*experts, str(archive), str(out), batch_size=8, rows_per_file=4, retry_errors=True, progress=False)
    rewritten = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if not p.name.startswith(".")}
    assert len(set(modes.values())) == 1 and set(rewritten.values()) == set(modes.values())
    assert modes.keys() <= rewritten.keys()  # error rows went back into files written now


def test_an_output_holding_an_input_twice_fails_until_repaired(ray_cluster, experts, tmp_path, capsys):
    images, out = tmp_path / "images", tmp_path / "out"
    write_synthetic_xrays(images, 6, size=96)
    args = ["score", "--expert1", experts[0], "--expert2", experts[1], "--input", str(images), "--output", str(out),
            "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    first = data_files(str(out))[0]
    shutil.copy(first, out / "copy-of-a-second-writer.parquet")  # what two runs at once used to leave
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "output holds 12 ok, 0 errors (6 rows repeat an input)" in captured.out
    assert f"run failed: 6 rows repeat an input that is already in the output (two runs wrote into it at once?); " \
           f"`dualcam repair --output {out}` keeps one row per input" in captured.err
    assert main(["repair", "--output", str(out)]) == 0
    assert f"removed 6 rows that repeated an input; {out} holds 6 rows, one per input" in capsys.readouterr().out
    assert main(args) == 0
    assert "output holds 6 ok, 0 errors; results" in capsys.readouterr().out


def test_a_dry_run_plans_without_ray_and_writes_nothing(experts, archive, tmp_path):
    out = tmp_path / "out"  # an output this run wrote rows to: two ok (one of a file changed since), one error
    out.mkdir()
    (out / RUN_FILE).write_text(RunSpec.of(SCORE, load_meta(experts[0]), load_meta(experts[1]), 5.0).to_json())
    images = [str(p) for p in sorted(archive.rglob("*")) if p.is_file() and p.name != "notes.txt"]
    pq.write_table(pa.table({"uri": images[:3], "status": ["ok", "ok", "error"],
                             "error_kind": [None, None, "permanent"],
                             "input_version": [storage.version_of(images[0]), "0:0", None]}), out / "part-0.parquet")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    score = ["score", "--expert1", experts[0], "--expert2", experts[1], "--input", str(archive), "--dry-run"]
    code = (  # Ray cannot even be imported here
        "import os\nos.environ.pop('RAY_ADDRESS', None)\nfrom dualcam.cli import main\n"
        f"assert main({score!r} + ['--output', {str(out)!r}, '--retry-errors', '--limit', '5', "
        "'--rates', 'decode=40,cpu=4', '--cluster', '2,8']) == 0\n"
        f"assert main({score!r} + ['--output', {str(tmp_path / 'new')!r}]) == 0\n"
        # the precision is part of the run's identity in a dry run too: fp32 rows are not planned in bf16
        f"assert main({score!r} + ['--output', {str(out)!r}, '--precision', 'bf16']) == 2\n"
    )
    printed = run_without_ray(code)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and not (tmp_path / "new").exists()

    first, second = printed.split("dualcam: dry run")[1:]
    assert re.search(rf"inputs +{len(images)} ", first)
    assert re.search(r"skipped +1 +\(not an image's name\): \.txt 1", first)
    assert re.search(r"already done +1 ", first) and re.search(r"to retry +1 ", first)
    assert re.search(r"changed +1 +inputs since they were scored: scored again", first)
    assert re.search(rf"to score +5 +of {len(images) - 1:,} not yet scored \(--limit 5\)", first)
    assert "rates         decoding 40.0 images/s per CPU, scoring 4.0 per CPU (given)" in first
    # 2 nodes of 8 CPUs: 16 actors of 1 CPU, each decoding then scoring: 16 / (1/40 + 1/4) images/s
    assert "2 nodes of 8 CPU, 0 GPU: 16 CPUs, 0 GPUs: 16 actor(s) of 1 CPU, 0 GPU; 1 block(s) of up to 16" in first
    rate = 16 / (1 / 40 + 1 / 4)
    assert f"{rate:,.1f} images/s (the actors' CPUs, decoding and scoring in turn): {5 / rate:.0f} s to score" in first
    assert "this machine:" in first and re.search(r"already done +0 ", second) and re.search(r"to score +13\b", second)
    assert "hours: give --rates" in second


def test_a_run_is_judged_by_its_own_inputs_not_the_folders_history(ray_cluster, experts, tmp_path):
    images, out = tmp_path / "images", str(tmp_path / "out")
    write_synthetic_xrays(images, 4, size=64)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # a permanent error, kept by every rerun
    first = score_archive(*experts, str(images), out, batch_size=4, progress=False, max_error_fraction=0.1)
    assert (first.run_ok, first.run_errors) == (4, 1) and "1 of 5 inputs of this run failed" in first.failure(0.1)
    again = score_archive(*experts, str(images), out, batch_size=4, progress=False)
    assert (again.scored_now, again.run_ok, again.run_errors, again.ok, again.errors) == (0, 0, 0, 4, 1)
    assert again.failure(0.1) is None  # the folder's old error is not this run's failure
    write_synthetic_xrays(tmp_path / "more", 1, size=64)
    (tmp_path / "more" / "synthetic-00000.png").rename(images / "new.png")
    new = score_archive(*experts, str(images), out, batch_size=4, progress=False)
    assert (new.scored_now, new.run_ok, new.run_errors, new.errors) == (1, 1, 0, 1) and new.failure(0.1) is None
    assert ": 1 ok, 0 errors; 5 already done;" in new.line()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_input_replaced_after_scoring_is_scored_again_by_a_plain_rerun_once(ray_cluster, experts, tmp_path,
                                                                              s3_bucket, where):
    write_synthetic_xrays(tmp_path / "images", 3, size=64)
    write_synthetic_xrays(tmp_path / "other", 1, size=96, seed=5)
    root = str(tmp_path / "images") if where == "local" else f"{s3_bucket}/images"
    out = str(tmp_path / "out") if where == "local" else f"{s3_bucket}/out"
    if where == "s3":
        for path in (tmp_path / "images").iterdir():
            storage.write_bytes(f"{root}/{path.name}", path.read_bytes())
    first = score_archive(*experts, root, out, batch_size=4, progress=False)
    replaced, kept = f"{root}/synthetic-00001.png", f"{root}/synthetic-00002.png"
    rows = by_uri(read_results(out))
    assert rows[replaced]["input_version"] == storage.version_of(replaced) is not None
    storage.write_bytes(replaced, b"\x89PNG\r\n\x1a\n broken in place")  # replaced, then fixed
    broken = score_archive(*experts, root, out, batch_size=4, progress=False)
    assert (first.scored_now, broken.scored_now, broken.already_done, broken.run_errors) == (3, 1, 2, 1)
    storage.write_bytes(replaced, (tmp_path / "other" / "synthetic-00000.png").read_bytes())
    fixed = score_archive(*experts, root, out, batch_size=4, progress=False)
    assert (fixed.scored_now, fixed.run_ok, fixed.ok, fixed.errors, fixed.repeated) == (1, 1, 3, 0, 0)
    now = by_uri(read_results(out))  # one row per input, the replaced one's of its new contents
    assert sorted(now) == sorted(rows) and now[kept] == rows[kept]
    assert (now[replaced]["width"], now[replaced]["input_version"]) == (96, storage.version_of(replaced))
    assert score_archive(*experts, root, out, batch_size=4, progress=False).scored_now == 0


def test_an_input_scored_but_not_in_the_output_fails_the_run_naming_it():
    from dualcam.distributed.pipeline import ScoreSummary
    from dualcam.io.inputs import Inputs

    inputs = Inputs(pa.table({"uri": ["/a.png", "/b.png", "/c.png"]}))
    rows = pa.table({"uri": ["/a.png"], "status": ["ok"], "error": pa.array([None], pa.string())})
    summary = ScoreSummary.of("/out", inputs, 0, pa.array(["/a.png", "/b.png", "/c.png"]), rows, 1.0)
    assert (summary.run_ok, summary.missing, summary.first_missing) == (1, 2, "/b.png")
    assert summary.failure().startswith("2 of the 3 inputs this run scored are not in /out, e.g. /b.png")
    whole = ScoreSummary.of("/out", inputs, 2, pa.array(["/a.png"]), rows, 1.0)
    assert whole.missing == 0 and whole.failure() is None
    on_s3 = ScoreSummary.of("s3://b/out", inputs, 0, pa.array(["/a.png", "/b.png"]), rows, 1.0)
    assert "deleted from it while this run wrote" in on_s3.failure()  # no hint of a local folder per machine


def test_a_file_over_the_byte_limit_is_its_error_row_and_the_limit_is_checked_first(ray_cluster, experts, tmp_path):
    images, out = tmp_path / "images", str(tmp_path / "out")
    paths = write_synthetic_xrays(images, 3, size=64)
    limit = max(p.stat().st_size for p in paths)
    (images / "huge.png").write_bytes(paths[0].read_bytes() + b"\0" * limit)  # a valid PNG, too large
    summary = score_archive(*experts, str(images), out, batch_size=4, progress=False, max_input_bytes=limit)
    rows = by_uri(read_results(out))
    assert (summary.run_ok, summary.run_errors) == (3, 1)
    huge = rows[str(images / "huge.png")]
    assert huge["error_kind"] == "permanent" and f"over the limit of {limit:,} per input" in huge["error"]
    with pytest.raises(ValueError, match="max_input_bytes must be an integer >= 1"):
        score_archive(*experts, str(images), str(tmp_path / "other"), max_input_bytes=0)
    assert not (tmp_path / "other").exists()
