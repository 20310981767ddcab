"""The installed command, end to end, and the promise that dualcam works without Ray."""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dualcam.cli import build_parser, main
from dualcam.commands.common import exit_status
from dualcam.commands.explain import OVERLAY_SIDE
from dualcam.io import storage
from dualcam.reports.drawing import BACKGROUND, MARK_COLOR, SCALE_HEIGHT, TITLE_HEIGHT
from dualcam.synthetic.scenarios import write_synthetic_xrays

from conftest import run_without_ray

BIN = Path(sys.executable).parent


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dualcam"), *args], capture_output=True, text=True, env=env, timeout=300)


def test_the_installed_command_runs():
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert "usage: dualcam" in result.stdout and "explain" in result.stdout


COMMANDS = [["expert"], ["expert", "init"], ["expert", "show"], ["decode"], ["explain"], ["score"], ["drift"],
            ["repair"], ["render"], ["train"], ["synth"], ["evaluate"], ["demo"], ["experiment"]]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: dualcam {' '.join(command)}" in capsys.readouterr().out


def test_every_flag_is_documented():
    parser = build_parser()
    pending = [parser]
    while pending:
        current = pending.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending += action.choices.values()
            else:
                assert action.help, f"{current.prog} {'/'.join(action.option_strings) or action.dest} has no help"


def test_import_and_score_without_ray(tmp_path):
    code = (
        "import dualcam, torch\n"
        "from dualcam import DualScorer, build_expert, save_expert\n"
        f"for n in ('a', 'b'): save_expert(build_expert('resnet18'), r'{tmp_path}/' + n, "
        "{'arch': 'resnet18', 'class_name': n, 'input_size': 64})\n"
        f"s = DualScorer(r'{tmp_path}/a', r'{tmp_path}/b', device='cpu')\n"
        "print(s.score(torch.zeros(1, 3, 64, 64))['heatmap'].shape)\n"
    )
    assert run_without_ray(code).strip() == "(1, 2, 2)"


def test_synth_writes_the_overlap_scenario(tmp_path, capsys):
    assert main(["synth", "--output", str(tmp_path), "--per-class", "5", "--image-side", "48", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "wrote 15 synthetic 48 px images of the overlap scenario (5 each of C1, C2, normal)" in out
    assert (tmp_path / "manifest.csv").is_file() and (tmp_path / "boxes.csv").is_file()
    assert len(list(tmp_path.glob("images/*/*.png"))) == 15
    salient = tmp_path / "salient"
    args = ["--per-class", "5", "--image-side", "48", "--seed", "2", "--scenario", "salient-shared"]
    assert main(["synth", "--output", str(salient), *args]) == 0
    assert "of the salient-shared scenario" in capsys.readouterr().out
    assert (salient / "images/C1/C1-00000.png").read_bytes() != (tmp_path / "images/C1/C1-00000.png").read_bytes()
    with pytest.raises(SystemExit):
        main(["synth", "--output", str(tmp_path / "x"), "--scenario", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_init_explain_end_to_end(tmp_path, capsys):
    images, out = tmp_path / "images", tmp_path / "overlays"
    write_synthetic_xrays(images, 3, size=96)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (images / "labels.csv").write_text("not an image, not listed\n")
    for patient in ("p1", "p2"):  # one stem in two folders: two overlays, neither overwriting the other
        (images / patient).mkdir()
        (images / patient / "IM0001.png").write_bytes((images / "synthetic-00000.png").read_bytes())
    for name in ("COVID-19", "pneumonia"):
        assert main(["expert", "init", "--arch", "resnet18", "--class-name", name, "--input-size", "64",
                     "--output", str(tmp_path / name)]) == 0
    capsys.readouterr()
    code = main(["explain", "--expert1", str(tmp_path / "COVID-19"), "--expert2", str(tmp_path / "pneumonia"),
                 "--alpha", "15", "--output", str(out), str(images)])
    printed = capsys.readouterr().out
    assert code == 1  # as decode: any file that cannot be explained fails the command, after the others
    assert sorted(p.name for p in out.iterdir()) == [
        "p1__IM0001.addk.png", "p2__IM0001.addk.png", *(f"synthetic-0000{i}.addk.png" for i in range(3))]
    assert "broken.png: corrupt or truncated PNG" in printed
    assert "5 explained, 1 failed" in printed
    assert f"1 other file skipped (not an image's name), e.g. {images / 'labels.csv'}" in printed
    # each overlay: a title, the image (longer side OVERLAY_SIDE), its colour scale; the peak ringed in green
    with Image.open(out / "synthetic-00000.addk.png") as overlay:
        assert overlay.size == (OVERLAY_SIDE, TITLE_HEIGHT + OVERLAY_SIDE + SCALE_HEIGHT)
        pixels = np.asarray(overlay)
    peak = re.search(r"\(\s*(\d+), (\d+)\)\s+\S*synthetic-00000.png", printed)
    x, y = (int(v) * OVERLAY_SIDE / 96 for v in peak.groups())  # image pixels to overlay pixels
    ys, xs = np.nonzero((pixels == MARK_COLOR).all(axis=2))
    assert abs(xs.mean() - x) < 8 and abs(ys.mean() - TITLE_HEIGHT - y) < 8
    assert (pixels[:TITLE_HEIGHT] != BACKGROUND).any()  # the title


def test_decode_reports_each_file_and_fails_on_any_error(tmp_path, capsys):
    write_synthetic_xrays(tmp_path, 2, size=40)
    (tmp_path / "empty.dcm").write_bytes(b"")
    capsys.readouterr()
    assert main(["decode", str(tmp_path)]) == 1
    printed = capsys.readouterr().out
    assert "empty.dcm: empty file (0 bytes)" in printed and "2 decoded, 1 failed, of 3 files" in printed
    (tmp_path / "empty.dcm").unlink()
    (tmp_path / "dicom.csv").write_text("file,patient\n")  # as beside the shared DICOMs: counted, not dropped
    assert main(["decode", str(tmp_path)]) == 0
    assert f"2 decoded, 0 failed, of 2 files; 1 other file skipped (not an image's name), e.g. " \
           f"{tmp_path / 'dicom.csv'}" in capsys.readouterr().out


def test_decode_and_explain_exit_as_score_does(tmp_path, capsys):
    """2 when there is nothing to look at (as score), 1 when any file named fails (after the others)."""
    (tmp_path / "empty").mkdir()
    assert main(["decode", str(tmp_path / "empty")]) == 2
    assert f"dualcam: error: {tmp_path / 'empty'}: no image files found" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    assert main(["decode", str(bad)]) == 1
    for name in ("a", "b"):
        main(["expert", "init", "--arch", "resnet18", "--class-name", name, "--input-size", "64",
              "--output", str(tmp_path / name)])
    pair = ["--expert1", str(tmp_path / "a"), "--expert2", str(tmp_path / "b"), "--output", str(tmp_path / "overlays")]
    capsys.readouterr()
    assert main(["explain", *pair, str(bad)]) == 1  # all failed
    assert "0 explained, 1 failed" in capsys.readouterr().out
    assert main(["explain", *pair, str(tmp_path / "empty")]) == 2


def test_decode_counts_what_it_skips_under_an_s3_prefix(s3_bucket, tmp_path):
    write_synthetic_xrays(tmp_path, 1, size=40)
    storage.write_bytes(f"{s3_bucket}/x/1.png", (tmp_path / "synthetic-00000.png").read_bytes())
    storage.write_bytes(f"{s3_bucket}/x/labels.csv", b"uri,label\n")
    result = run("decode", f"{s3_bucket}/x", env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert f"1 decoded, 0 failed, of 1 files; 1 other file skipped (not an image's name), e.g. " \
           f"{s3_bucket}/x/labels.csv" in result.stdout


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    write_synthetic_xrays(tmp_path, 1, size=40)
    result = run("explain", "--expert1", str(tmp_path / "nope"), "--expert2", str(tmp_path / "nope"), str(tmp_path))
    assert result.returncode == 2
    assert f"dualcam: error: {tmp_path / 'nope'}: no expert.json" in result.stderr


def test_expert_show_on_s3(s3_bucket):
    uri = f"{s3_bucket}/experts/covid"
    result = run("expert", "init", "--arch", "resnet18", "--class-name", "COVID-19", "--input-size", "64",
                 "--output", uri, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    shown = run("expert", "show", uri, env=dict(os.environ))
    assert shown.returncode == 0 and '"class_name": "COVID-19"' in shown.stdout


@pytest.mark.parametrize("inside", ["a Ray task", "a Ray Data step"])
def test_an_error_raised_inside_ray_is_one_line_naming_the_file_with_its_traceback_in_a_log(
    ray_cluster, tmp_path, capsys, monkeypatch, inside,
):
    import ray

    monkeypatch.setenv("DUALCAM_LOG_DIR", str(tmp_path / "logs"))
    target = tmp_path / "out" / "part-0.parquet"
    target.parent.mkdir()
    (target.parent / f".{target.name}.inflight").symlink_to("/dev/full")

    def write_to_full_disk(path: str) -> None:  # defined here, so Ray's workers get it by value
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"x": list(range(100_000))}), path, filesystem=storage.parquet_filesystem(path))

    def run() -> int:
        if inside == "a Ray task":
            ray.get(ray.remote(write_to_full_disk).remote(str(target)))
        else:  # Ray Data wraps it in its own UserCodeException, which keeps only the text of the original
            ray.data.from_items([{"path": str(target)}]).map_batches(
                lambda batch: [write_to_full_disk(p) for p in batch["path"]] and batch).materialize()
        return 0

    assert exit_status(run) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err, err
    assert err.startswith(f"dualcam: error: OSError: [Errno 28] No space left on device while writing {target} "
                          "(full traceback: "), err
    log = Path(err.rsplit("full traceback: ", 1)[1].rstrip(")\n"))
    assert log.parent == tmp_path / "logs"
    story = log.read_text()
    assert "Traceback (most recent call last)" in story and "write_to_full_disk" in story and "\x1b" not in story


def test_a_failed_runs_log_goes_beside_its_output_or_else_to_the_temporary_folder(s3_bucket, monkeypatch, capsys):
    from dualcam.io.lease import LeaseLost

    monkeypatch.delenv("DUALCAM_LOG_DIR", raising=False)

    def lost() -> int:
        raise LeaseLost("another run took over the output")

    def logged(output: str) -> str:
        assert exit_status(lost, lambda: output) == 1
        return capsys.readouterr().err.rsplit("full traceback: ", 1)[1].rstrip(")\n")

    output = f"{s3_bucket}/results"
    log = logged(output)  # on S3, where it outlives the machine or pod that ran the job
    assert log.startswith(f"{output}/_logs/dualcam-") and log.endswith(".log")
    assert "LeaseLost: another run took over the output" in storage.read_bytes(log).decode()
    fallback = Path(logged("s3://no-such-bucket-for-dualcam/results"))  # the output's storage refuses it
    assert fallback.parent == Path(tempfile.gettempdir()) / f"dualcam-logs-{os.getuid()}"
    assert "LeaseLost" in fallback.read_text()
    fallback.unlink()


def test_a_log_in_the_temporary_folder_is_this_users_alone(tmp_path, monkeypatch):
    from dualcam.io import errorlog

    monkeypatch.delenv("DUALCAM_LOG_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the system's temporary folder, for this test
    folder = tmp_path / f"dualcam-logs-{os.getuid()}"
    first, second = (Path(errorlog.write_log(RuntimeError(f"failure {n}"))) for n in (1, 2))
    assert first.parent == second.parent == folder and first != second  # both kept, even in the same second
    assert "RuntimeError: failure 2" in second.read_text()
    assert (folder.stat().st_mode & 0o777, first.stat().st_mode & 0o777) == (0o700, 0o600)

    folder.chmod(0o777)  # a folder others may write in: they could replace a log, or read the next
    with pytest.raises(OSError, match=rf"could not write the log of RuntimeError to {folder} \({folder}: a folder, "
                                      rf"owned by uid {os.getuid()}, mode 777; a log goes only into a folder that this "
                                      r"user \(uid \d+\) owns and no one else can write\)"):
        errorlog.write_log(RuntimeError("failure 3"))
    folder.chmod(0o700)
    elsewhere = tmp_path / "planted"
    elsewhere.mkdir(mode=0o700)
    for log in folder.iterdir():
        log.unlink()
    folder.rmdir()
    folder.symlink_to(elsewhere)  # a link planted in its place
    with pytest.raises(OSError, match=rf"{folder}: not a folder \(a link\?\)"):
        errorlog.write_log(RuntimeError("failure 4"))
    assert not list(elsewhere.iterdir())

    monkeypatch.setenv("DUALCAM_LOG_DIR", str(tmp_path / "chosen"))  # the user's own choice, as before
    assert Path(errorlog.write_log(RuntimeError("failure 5"))).parent == tmp_path / "chosen"


def test_expert_show_takes_a_folder_of_versions_as_score_does(tmp_path):
    from dualcam import build_expert
    from dualcam.io.checkpoints import save_expert_version

    for i in range(2):
        time.sleep(i)  # version ids sort by their second, then by hash: the second save must be a second later
        uri, meta = save_expert_version(build_expert("resnet18"), str(tmp_path / "COVID-19"),
                                        {"arch": "resnet18", "class_name": "COVID-19", "input_size": 64})
    shown = run("expert", "show", f"{tmp_path / 'COVID-19'}/")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["version"] == meta.version  # the latest; stdout stays JSON
    assert f"is a folder of 2 versions; its latest: {uri}" in shown.stderr


def test_imagenet_weights_offline_say_what_weights_also_takes(tmp_path):
    # no download can succeed: no cached weights, and every request goes to a closed port on loopback
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    result = run("expert", "init", "--arch", "resnet18", "--class-name", "x", "--weights", "imagenet",
                 "--output", str(tmp_path / "x"), env=env)
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("dualcam: error: could not download torchvision's ImageNet weights for resnet18 (https://")
    assert "--weights also takes a state dict's path or s3:// URI" in error and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_a_new_local_ray_keeps_token_authentication_without_warning_about_it():
    code = ("from dualcam.distributed.connect import connect\n"
            "ray = connect(quiet=True)\n"
            "from ray._raylet import AuthenticationMode, get_authentication_mode\n"
            "print(get_authentication_mode() == AuthenticationMode.TOKEN)\n"
            "ray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"  # on, as Ray 2.60 has it by default
    assert "Token authentication is enabled" not in result.stderr  # Ray's warning that it turned it on itself
