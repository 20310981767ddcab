"""The installed command, end to end, and the promise that dualcam works without Ray."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dualcam.cli import build_parser, main
from dualcam.synthetic import write_synthetic_xrays

from conftest import run_without_ray

BIN = Path(sys.executable).parent


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dualcam"), *args], capture_output=True, text=True, env=env, timeout=300)


def test_the_installed_command_runs():
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert "usage: dualcam" in result.stdout and "explain" in result.stdout


COMMANDS = [["expert"], ["expert", "init"], ["expert", "show"], ["decode"], ["explain"], ["score"], ["drift"],
            ["render"], ["train"], ["synth"], ["evaluate"], ["demo"], ["experiment"]]


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
    assert main(["synth", "--out", str(tmp_path), "--n", "5", "--size", "48", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "wrote 15 synthetic 48 px images of the overlap scenario (5 each of C1, C2, normal)" in out
    assert (tmp_path / "manifest.csv").is_file() and (tmp_path / "boxes.csv").is_file()
    assert len(list(tmp_path.glob("images/*/*.png"))) == 15
    salient = tmp_path / "salient"
    args = ["--n", "5", "--size", "48", "--seed", "2", "--scenario", "salient-shared"]
    assert main(["synth", "--out", str(salient), *args]) == 0
    assert "of the salient-shared scenario" in capsys.readouterr().out
    assert (salient / "images/C1/C1-00000.png").read_bytes() != (tmp_path / "images/C1/C1-00000.png").read_bytes()
    with pytest.raises(SystemExit):
        main(["synth", "--out", str(tmp_path / "x"), "--scenario", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_init_explain_end_to_end(tmp_path, capsys):
    images, out = tmp_path / "images", tmp_path / "overlays"
    write_synthetic_xrays(images, 3, size=96)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (images / "labels.csv").write_text("not an image, not listed\n")
    for name in ("COVID-19", "pneumonia"):
        assert main(["expert", "init", "--arch", "resnet18", "--class-name", name, "--input-size", "64",
                     "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    code = main(["explain", "--c1", str(tmp_path / "COVID-19"), "--c2", str(tmp_path / "pneumonia"),
                 "--alpha", "15", "--out", str(out), str(images)])
    printed = capsys.readouterr().out
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [f"synthetic-0000{i}.addk.png" for i in range(3)]
    assert "broken.png: corrupt or truncated PNG" in printed
    assert "3 explained, 1 failed" in printed and "labels.csv" not in printed


def test_decode_reports_each_file_and_fails_on_any_error(tmp_path, capsys):
    write_synthetic_xrays(tmp_path, 2, size=40)
    (tmp_path / "empty.dcm").write_bytes(b"")
    capsys.readouterr()
    assert main(["decode", str(tmp_path)]) == 1
    printed = capsys.readouterr().out
    assert "empty.dcm: empty file (0 bytes)" in printed and "2 decoded, 1 failed, of 3 files" in printed


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    result = run("explain", "--c1", str(tmp_path / "nope"), "--c2", str(tmp_path / "nope"), str(tmp_path))
    assert result.returncode == 2
    assert f"dualcam: error: {tmp_path / 'nope'}: no expert.json" in result.stderr


def test_expert_show_on_s3(s3_bucket):
    uri = f"{s3_bucket}/experts/covid"
    result = run("expert", "init", "--arch", "resnet18", "--class-name", "COVID-19", "--input-size", "64",
                 "--out", uri, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    shown = run("expert", "show", uri, env=dict(os.environ))
    assert shown.returncode == 0 and '"class_name": "COVID-19"' in shown.stdout
