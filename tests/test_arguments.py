"""Unusable arguments are refused with exit status 2 and one line naming the option, for every
command and job spec, before Ray starts and before any output is made: all of it is run here in
a Python where Ray cannot even be imported."""

import json

import pytest

from conftest import run_without_ray

BAD = "BAD"
"""Stands for a path that must stay untouched: the output named in each case."""


def cases(tmp) -> list[tuple[list[str], str]]:
    """(argv, what the error line says) for each command; ``BAD`` in argv is the output that must not appear."""
    afile = f"{tmp}/afile.txt"
    images, empty = f"{tmp}/images", f"{tmp}/empty"
    pair = ["--expert1", f"{tmp}/c1", "--expert2", f"{tmp}/c2"]  # never read: every refusal comes before the experts
    score = ["score", *pair, "--input", images, "--output", BAD]
    drift = ["drift", "--old-expert", f"{tmp}/c1", "--new-expert", f"{tmp}/c1", "--input", images, "--output", BAD]
    train = ["train", "--data", f"{tmp}/manifest.csv", "--class1", "A", "--output", BAD]
    explain = ["explain", *pair, "--output", BAD]
    return [
        ([*score, "--alpha", "-1"], "alpha must be a finite number >= 0, got -1.0"),
        ([*score, "--alpha", "nan"], "alpha must be a finite number >= 0, got nan"),
        ([*score, "--alpha", "inf"], "alpha must be a finite number >= 0, got inf"),
        ([*score, "--alpha", "-inf"], "alpha must be a finite number >= 0, got -inf"),
        ([*score, "--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
        ([*score, "--max-error-fraction", "2"], "max_error_fraction must be a share in [0, 1], got 2.0"),
        ([*score, "--limit", "-1"], "limit must be an integer >= 0, got -1"),
        ([*score, "--gpus-per-actor", "inf"], "gpus_per_actor must be a number >= 0, got inf"),
        ([*score[:-1], afile], f"--output {afile} is a file, not a folder; give a folder (it is created if missing)"),
        ([*score[:-1], f"{afile}/out"], f"--output {afile}/out lies under {afile}, which is a file, not a folder"),
        ([*drift, "--alpha", "nan"], "alpha must be a finite number >= 0, got nan"),
        ([*drift, "--threshold", "2"], "threshold is compared with cam_correlation in [-1, 1], got 2.0"),
        ([*drift, "--max-drift-share", "nan"], "max_drift_share is a share of images in [0, 1], got nan"),
        ([*drift, "--rows", "-1"], "(--rows, top_k) must be >= 0, got -1"),
        ([*drift[:-1], afile], f"--output {afile} is a file, not a folder"),
        (["render", "--results", images, "--output", BAD, "--alphas", "-1,nan"],
         "render: alphas must be finite numbers >= 0, got [-1.0, nan]"),  # argparse read -1,nan as an option
        (["render", "--results", images, "--output", BAD, "--rows", "0"], "render: --rows must be at least 1, got 0"),
        (["render", "--results", images, "--output", afile], f"--output {afile} is a file, not a folder"),
        ([*explain, "--alpha", "-1", images], "alpha must be a finite number >= 0, got -1.0"),
        ([*explain, empty], f"{empty}: no image files found (1 other file skipped (not an image's name), e.g. "
                            f"{empty}/notes.csv)"),
        ([*explain[:-1], afile, images], f"--output {afile} is a file, not a folder"),
        (["decode", empty], f"{empty}: no image files found"),
        (["decode", f"{tmp}/nowhere"], f"{tmp}/nowhere: no such file or folder"),
        ([*train, "--epochs", "0"], "epochs must be an integer >= 1, got 0"),
        ([*train, "--lr", "nan"], "lr must be a number > 0, got nan"),
        ([*train, "--momentum", "1"], "momentum must be a number in [0, 1), got 1.0"),
        ([*train, "--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
        ([*train, "--input-size", "16"], "image_size must be an integer >= 32 (pixels), got 16"),
        ([*train, "--arch", "densenet121", "--output-stride", "16"], "output_stride 16 is supported for ResNets"),
        ([*train, "--workers-per-expert", "0"], "workers_per_expert must be an integer >= 1, got 0"),
        ([*train, "--cpus-per-worker", "0"], "cpus_per_worker must be a number > 0, got 0.0"),
        ([*train, "--max-failures", "-1"], "max_failures must be an integer >= 0, got -1"),
        ([*train, "--weights", f"{tmp}/nope.pt"], f"--weights {tmp}/nope.pt: no such state dict"),
        ([*train[:-1], afile], f"--output {afile} is a file, not a folder"),
        (["synth", "--output", BAD, "--per-class", "2"],
         "--per-class (images per class) must be at least 5 (for 60/20/20 splits), got 2"),
        (["synth", "--output", BAD, "--image-side", "16"],
         "--image-side must be at least 48 pixels for the features to be drawn"),
        (["synth", "--output", BAD, "--seed", "-1"], "seed must be an integer >= 0, got -1"),
        (["demo", "--output", BAD, "--epochs", "0"], "epochs must be an integer >= 1, got 0"),
        (["demo", "--output", BAD, "--per-class", "3"], "--per-class (images per class) must be at least 5"),
        (["demo", "--output", afile], f"--output {afile} is a file, not a folder"),
        (["experiment", "--output", BAD, "--regimes", "paper,nope"], "unknown regime 'nope'"),
        (["experiment", "--output", BAD, "--seeds", "0"], "seeds must be an integer >= 1, got 0"),
        (["evaluate", "--results", images, "--boxes", f"{tmp}/boxes.csv", "--output", f"{BAD}/e.json", "--alphas",
          "5,-inf"], "evaluate: alphas must be finite numbers >= 0, got [5.0, -inf]"),
        (["evaluate", "--results", images, "--boxes", f"{tmp}/boxes.csv", "--output", f"{BAD}/e.json", "--kernels",
          "addk,nope"], "unknown kernel 'nope'"),
        (["expert", "init", "--class-name", "A", "--arch", "resnet18", "--output", afile],
         f"--output {afile} is a file, not a folder"),
    ]


SPECS = [  # (spec, what the error line says), each run by its job's entrypoint function
    ({"job": "score", "alpha": -1}, "alpha must be a finite number >= 0, got -1"),
    ({"job": "score", "alpha": "5"}, "alpha must be a number, got '5'"),
    ({"job": "score", "batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"job": "score", "batch_size": 2.5}, "batch_size must be an integer, got 2.5"),
    ({"job": "score", "max_error_fraction": 2}, "max_error_fraction must be a share in [0, 1], got 2"),
    ({"job": "score", "retry_errors": "yes"}, "retry_errors must be true or false, got 'yes'"),
    ({"job": "score", "input": ["a", "b"]}, "input must be a string, got ['a', 'b']"),
    ({"job": "drift", "threshold": 2}, "threshold is compared with cam_correlation in [-1, 1], got 2"),
    ({"job": "drift", "rows": "all"}, "rows must be an integer, got 'all'"),
    ({"job": "train", "epochs": 0}, "epochs must be an integer >= 1, got 0"),
    ({"job": "train", "arch": "resnet999"}, "arch must be one of resnet18, resnet34"),
    ({"job": "train", "views": ["PA", 1]}, "views must be a string or a list of strings, got ['PA', 1]"),
]
SPEC_BASE = {
    "score": {"expert1": "c1", "expert2": "c2", "input": "images", "output": BAD},
    "drift": {"old_expert": "c1", "new_expert": "c1", "input": "images", "output": BAD},
    "train": {"data": "manifest.csv", "class1": "A", "output": BAD},
}


@pytest.fixture(scope="module")
def refused(tmp_path_factory) -> tuple[list, list]:
    """Every case and spec run in one Python without Ray: (argv or spec, exit status, stderr, outputs made)."""
    tmp = tmp_path_factory.mktemp("arguments")
    (tmp / "afile.txt").write_text("a file, not a folder")
    (tmp / "images").mkdir()
    (tmp / "images" / "x.png").write_bytes(b"not decoded: nothing gets that far")
    (tmp / "empty").mkdir()
    (tmp / "empty" / "notes.csv").write_text("a,b\n")
    specs = []
    for i, (spec, _) in enumerate(SPECS):
        path = tmp / f"spec-{i}.yaml"
        path.write_text(json.dumps({**spec, **{k: str(tmp / v) if v != BAD else str(tmp / f"out-spec-{i}")
                                               for k, v in SPEC_BASE[spec["job"]].items() if k not in spec}}))
        specs.append((spec["job"], str(path)))
    argvs = [[str(tmp / f"out-{i}") + a[len(BAD):] if a.split("/")[0] == BAD else a for a in argv]
             for i, (argv, _) in enumerate(cases(tmp))]
    code = f"""
import contextlib, io, json, os
from dualcam.cli import main
from dualcam.jobspec import run_job
out = []
for argv in {argvs!r}:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exit:  # argparse's own refusals
            status = exit.code
    out.append([status, err.getvalue()])
for job, spec in {specs!r}:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = run_job(job, [spec])
    out.append([status, err.getvalue()])
print(json.dumps(out))
"""
    results = json.loads(run_without_ray(code, timeout=600).splitlines()[-1])
    made = sorted(p.name for p in tmp.iterdir() if p.name.startswith("out-"))
    return tmp, results[:len(argvs)], results[len(argvs):], made


@pytest.mark.parametrize("index", range(len(cases("T"))), ids=lambda i: " ".join(cases("T")[i][0][:1] + [
    a for a in cases("T")[i][0] if a.startswith("--") and a not in (
        "--expert1", "--expert2", "--old-expert", "--new-expert", "--class1", "--input", "--output", "--results",
        "--data")]))
def test_a_command_refuses_an_unusable_argument_before_any_work(refused, index):
    tmp, results, _, made = refused
    status, stderr = results[index]
    argv, message = cases(tmp)[index]
    assert status == 2, (argv, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dualcam: error: ") and message in lines[0], (argv, stderr)
    assert made == []  # no output folder of any case was made


@pytest.mark.parametrize("index", range(len(SPECS)), ids=lambda i: "-".join(map(str, SPECS[i][0].items())))
def test_a_job_spec_is_refused_as_its_command_would_be(refused, index):
    _, _, results, made = refused
    status, stderr = results[index]
    assert status == 2 and SPECS[index][1] in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert made == []
