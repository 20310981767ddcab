"""Ray jobs: specs checked before any work, and the score and train jobs submitted to a real Ray head
(`ray start --head` on 127.0.0.1, its job server, `ray job submit --working-dir`) against moto's S3. The head
runs with the clusters' auth settings (cluster/aws.yaml's start command): a job without the token is refused."""

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from dualcam import build_expert, save_expert
from dualcam.bench.s3server import free_port
from dualcam.cli import build_parser
from dualcam.commands.common import options_of
from dualcam.distributed.train_loop import Recipe
from dualcam.io import storage
from dualcam.io.checkpoints import latest_version, load_meta
from dualcam.io.results import read_results
from dualcam.jobspec import JOBS, load_spec, run_job
from dualcam.scoring.archive_options import ArchiveOptions
from dualcam.synthetic.scenarios import write_synthetic_xrays

from conftest import ROOT
from samples import write_labelled_folder

BIN = Path(sys.executable).parent
HEAD_PORTS = ("--port", "--dashboard-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
              "--runtime-env-agent-port", "--metrics-export-port", "--node-manager-port", "--object-manager-port",
              "--ray-client-server-port")


def write_spec(path: Path, spec: dict) -> str:
    path.write_text(json.dumps(spec))  # JSON is YAML
    return str(path)


# --- Specs, no Ray ---------------------------------------------------------------------------------

JOB_COMMANDS = [("score", "score"), ("train", "train"), ("drift", "drift")]


@pytest.mark.parametrize(("job", "command"), JOB_COMMANDS)
def test_spec_keys_are_the_commands_long_options_with_the_same_defaults(job, command, tmp_path):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    options = {a.dest: a for a in sub._actions if a.dest != "help"}
    long_options = {o[2:].replace("-", "_") for a in sub._actions for o in a.option_strings if o.startswith("--")}
    assert long_options - {"help"} == set(options)
    required = [name for name, a in options.items() if a.required]
    argv = [command, *(arg for name in required for arg in (f"--{name.replace('_', '-')}", f"{name}-value"))]
    command_line = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if k != "command"}
    # what run is given: a spec with the required keys only, and one with every key, as the command line
    minimal = load_spec(write_spec(tmp_path / "minimal.yaml", {"job": job, **{n: f"{n}-value" for n in required}}))
    assert minimal.arguments() == command_line
    every = load_spec(write_spec(tmp_path / "every.yaml", {"job": job, **command_line}))
    assert every.options == command_line and every.arguments() == command_line


@pytest.mark.parametrize(("job", "command"), JOB_COMMANDS)
def test_run_in_python_has_the_commands_defaults(job, command):
    import inspect

    module = JOBS[job]
    options = options_of(module)
    params = {n: p for n, p in inspect.signature(module.run).parameters.items() if p.kind is p.KEYWORD_ONLY}
    for name, param in params.items():
        if param.default is inspect.Parameter.empty:
            assert options[name].required, name
        else:  # a repeatable option's default is [] on the command line, () in Python
            expected = list(param.default) if isinstance(param.default, tuple) else param.default
            assert options[name].default == expected, name
    rest = {name: action.default for name, action in options.items() if name not in params}  # run's **keywords
    if command == "train":
        assert Recipe(**rest) == Recipe()
    else:
        assert ArchiveOptions.from_arguments(**rest) == ArchiveOptions()


def test_unusable_specs_exit_2_naming_the_file_and_the_key(tmp_path, capsys):
    base = {"job": "score", "expert1": "a", "expert2": "b", "input": "in", "output": "out"}
    unknown = write_spec(tmp_path / "unknown.yaml", {**base, "batch-size": 8})
    # the entrypoint itself, as a job runs it: no Ray is started for a spec that cannot run
    result = subprocess.run([sys.executable, str(ROOT / "jobs" / "score.py"), unknown],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"{unknown}: unknown option 'batch-size' for score (did you mean 'batch_size'?)" in result.stderr

    missing = write_spec(tmp_path / "missing.yaml", {k: v for k, v in base.items() if k != "expert2"})
    assert run_job("score", [missing]) == 2
    assert f"{missing}: missing option 'expert2' for score" in capsys.readouterr().err
    assert run_job("train", [write_spec(tmp_path / "s.yaml", base)]) == 2
    assert "is a score spec; run it with jobs/score.py" in capsys.readouterr().err
    (tmp_path / "list.yaml").write_text("- job: score\n")
    assert run_job("score", [str(tmp_path / "list.yaml")]) == 2
    assert "a job spec is a mapping of options, got list" in capsys.readouterr().err
    assert run_job("score", [str(tmp_path / "nowhere.yaml")]) == 2
    assert run_job("score", []) == 2
    assert "usage: python jobs/score.py SPEC.yaml" in capsys.readouterr().err


def test_a_spec_in_the_old_names_still_loads_saying_what_to_use(tmp_path, capsys):
    old = write_spec(tmp_path / "old.yaml", {"job": "detect_drift", "old": "a", "new": "b", "top_k": 3,
                                             "input": "in", "output": "out"})
    spec = load_spec(old)
    assert (spec.job, spec.options) == ("drift", {"old_expert": "a", "new_expert": "b", "rows": 3, "input": "in",
                                                  "output": "out"})
    notices = capsys.readouterr().err.splitlines()
    assert notices == [f"{old}: warning: {was} is deprecated; use {now} ({was} goes in dualcam 0.2)" for was, now in
                       [("job: detect_drift", "job: drift"), ("old", "old_expert"), ("new", "new_expert"),
                        ("top_k", "rows")]]
    both = write_spec(tmp_path / "both.yaml", {"job": "score", "c1": "a", "expert1": "a", "expert2": "b",
                                               "input": "in", "output": "out"})
    with pytest.raises(ValueError, match="c1 and expert1 are one option; keep expert1"):
        load_spec(both)


def test_a_spec_is_read_from_s3_too(s3_bucket):
    spec = b"job: train\nclass1: A\noutput: s3://m/\nclass2_negatives: [x, y]\n"
    storage.write_bytes(f"{s3_bucket}/specs/train.yaml", spec)
    spec = load_spec(f"{s3_bucket}/specs/train.yaml")
    assert (spec.job, spec.entrypoint) == ("train", "jobs/train.py")
    assert spec.options["class2_negatives"] == ["x", "y"]


def test_make_submit_needs_a_spec_an_address_and_a_token():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RAY_AUTH_")}
    result = subprocess.run(["make", "-s", "-C", str(ROOT), "submit", "JOB="], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode != 0 and "usage: make submit JOB=spec.yaml RAY_ADDRESS=http://HEAD:8265" in result.stdout
    result = subprocess.run(["make", "-s", "-C", str(ROOT), "submit", "JOB=jobs/examples/score.yaml",
                             "RAY_ADDRESS=http://127.0.0.1:9"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0 and "make submit: set RAY_AUTH_TOKEN" in result.stdout


# --- Jobs submitted to a real Ray head -------------------------------------------------------------

@dataclass
class Head:
    address: str
    env: dict
    metrics: str
    """Ray's metrics of this node, as Prometheus scrapes them."""

    def job_info(self, submission_id: str) -> dict:
        """Status and Ray's start and end times of a job, from the job server."""
        code = ("import json, sys; from ray.job_submission import JobSubmissionClient\n"
                "i = JobSubmissionClient(sys.argv[1]).get_job_info(sys.argv[2])\n"
                "print(json.dumps({'status': str(i.status), 'seconds': (i.end_time - i.start_time) / 1000}))")
        out = subprocess.run([sys.executable, "-c", code, self.address, submission_id], env=self.env,
                             capture_output=True, text=True, timeout=120, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])


def cluster_auth() -> tuple[str, str]:
    """(RAY_AUTH_MODE, --dashboard-host) of the clusters' heads, from cluster/aws.yaml's head start command
    (tests/test_cluster_configs.py checks that command, and KubeRay's authOptions, in full)."""
    command = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())["head_start_ray_commands"][-1]
    mode = re.search(r"export RAY_AUTH_MODE=(\w+)", command).group(1)
    return mode, re.search(r"--dashboard-host=(\S+)", command).group(1)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head on 127.0.0.1 (2 CPUs, dashboard and job server, every port free), stopped afterwards.

    Its processes see no AWS settings: a job gets them from its runtime env, as on a cluster. Jobs run
    this venv's `python` (first on PATH). Auth as on the clusters: the mode of cluster/aws.yaml's head, with
    a token of this module's own in RAY_AUTH_TOKEN (on a cluster, from the secret store).
    """
    temp_dir = tmp_path_factory.mktemp("ray")
    ports = {flag: free_port() for flag in HEAD_PORTS}
    mode, dashboard_host = cluster_auth()
    assert (mode, dashboard_host) == ("token", "127.0.0.1")  # loopback only, here as there
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_AUTH_MODE=mode, RAY_AUTH_TOKEN=secrets.token_hex(16),
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")  # stop at once, not after up to 30 s of draining
    log = (temp_dir / "head.log").open("w")
    command = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               f"--dashboard-host={dashboard_host}", "--include-dashboard=true", "--num-cpus=2",
               f"--temp-dir={temp_dir}", "--disable-usage-stats", *(f"{flag}={port}" for flag, port in ports.items())]
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in (temp_dir / "head.log").read_text():
            assert head.poll() is None and time.monotonic() < deadline, (temp_dir / "head.log").read_text()[-3000:]
            time.sleep(1)
        yield Head(f"http://127.0.0.1:{ports['--dashboard-port']}", env,
                   f"http://127.0.0.1:{ports['--metrics-export-port']}/metrics")
    finally:
        # `ray stop` would stop every Ray on this machine; this head's processes share its session
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()


@pytest.fixture(scope="module")
def s3_jobs(s3_endpoint, tmp_path_factory) -> str:
    """A bucket with two tiny experts (resnet18, 64 px), 4 images to score and a labelled folder."""
    bucket = "s3://jobs"
    storage.s3_client().create_bucket(Bucket="jobs")
    local = tmp_path_factory.mktemp("jobs")
    torch.manual_seed(0)
    for name in ("COVID-19", "pneumonia"):
        save_expert(build_expert("resnet18"), f"{bucket}/experts/{name}",
                    {"arch": "resnet18", "class_name": name, "input_size": 64})
    for path in write_synthetic_xrays(local / "archive", 4, size=96):
        storage.write_bytes(f"{bucket}/archive/{Path(path).name}", Path(path).read_bytes())
    write_labelled_folder(local / "labelled", 6, size=64)
    for path in sorted((local / "labelled").rglob("*.png")):
        storage.write_bytes(f"{bucket}/labelled/{path.parent.name}/{path.name}", path.read_bytes())
    return bucket


def job_env(s3_endpoint: str) -> dict:
    """The runtime env's env_vars: moto's endpoint and its dummy credentials (never real ones)."""
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    return {k: os.environ[k] for k in names}


def test_score_job_submitted_with_make_submit(ray_head, s3_jobs, s3_endpoint, tmp_path, record_property):
    spec = write_spec(tmp_path / "score.yaml", {
        "job": "score", "expert1": f"{s3_jobs}/experts/COVID-19", "expert2": f"{s3_jobs}/experts/pneumonia",
        "input": f"{s3_jobs}/archive/", "output": f"{s3_jobs}/results/", "batch_size": 4, "no_progress": True})
    runtime_env = tmp_path / "runtime_env.yaml"  # cluster/runtime_env.yaml less pip: nothing is installed here
    runtime_env.write_text(json.dumps({"env_vars": job_env(s3_endpoint)}))
    started = time.monotonic()
    result = subprocess.run(["make", "-C", str(ROOT), "submit", f"JOB={spec}", f"RAY_ADDRESS={ray_head.address}",
                             f"RUNTIME_ENV={runtime_env}"], env=ray_head.env, capture_output=True, text=True,
                            timeout=600)
    wall = time.monotonic() - started
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed[-6000:]
    assert "Running entrypoint for job raysubmit_" in printed and f"python jobs/score.py {spec}" in printed
    assert f"output holds 4 ok, 0 errors; results in {s3_jobs}/results/" in printed
    info = ray_head.job_info(re.search(r"Job '(raysubmit_\w+)' succeeded", printed).group(1))
    assert info["status"] == "SUCCEEDED"
    record_property("score_job", {**info, "submit_wall_seconds": round(wall, 1)})
    print(f"score job: {info['status']} in {info['seconds']:.1f} s (make submit: {wall:.1f} s)")

    rows = read_results(f"{s3_jobs}/results/").to_pylist()
    assert sorted(r["uri"] for r in rows) == sorted(storage.list_files(f"{s3_jobs}/archive/"))
    assert all(r["status"] == "ok" and 0 <= r["p1"] <= 1 for r in rows)
    # the rows, counted by dualcam.distributed.telemetry, on the node's metrics port as Prometheus reads it
    labels = ('kind="score"', 'status="ok"', 'error_kind="none"')
    assert scraped(ray_head, 'ray_dualcam_rows_scored_total{', labels) == 4


def scraped(head: Head, metric: str, labels: tuple[str, ...], timeout: float = 90) -> float:
    """The value of ``metric`` with ``labels`` on the head's metrics port, once Ray has exported it (every few s)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        text = urllib.request.urlopen(head.metrics, timeout=30).read().decode()
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith(metric) and all(label in line for label in labels)]
        if values or time.monotonic() > deadline:
            assert values, f"no {metric} with {labels} in {head.metrics}"
            return sum(values)
        time.sleep(2)


def test_a_job_without_the_clusters_token_is_refused_and_one_with_it_runs(ray_head, tmp_path):
    def submit(env: dict) -> tuple[str, subprocess.CompletedProcess]:
        submission_id = f"dualcam-auth-{secrets.token_hex(4)}"
        command = [str(BIN / "ray"), "job", "submit", "--address", ray_head.address, "--submission-id", submission_id,
                   "--", "python", "-c", "print('the job ran')"]
        return submission_id, subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    # no token at all (no RAY_AUTH_*, and a home without ~/.ray/auth_token), and a wrong one
    anonymous = {k: v for k, v in ray_head.env.items() if not k.startswith("RAY_AUTH_")} | {"HOME": str(tmp_path)}
    wrong = {**ray_head.env, "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    refused = {}
    for name, env in (("no token", anonymous), ("a wrong token", wrong)):
        submission_id, result = submit(env)
        printed = result.stdout + result.stderr
        assert result.returncode != 0 and "the job ran" not in printed, (name, printed[-3000:])
        # Ray's CLI says what the job server answered (no token; an invalid one)
        assert re.search(r"Token authentication is enabled but (no authentication token was found|the "
                         r"authentication token is invalid)", printed), (name, printed[-3000:])
        refused[name] = submission_id
        print(f"{name}: exit {result.returncode}: {printed.strip().splitlines()[-1][:300]}")
    # the job server, asked with the token, never heard of them; with the token, the job runs
    code = ("import sys; from ray.job_submission import JobSubmissionClient\n"
            "print(' '.join(j.submission_id or '' for j in JobSubmissionClient(sys.argv[1]).list_jobs()))")
    known = subprocess.run([sys.executable, "-c", code, ray_head.address], env=ray_head.env, capture_output=True,
                           text=True, timeout=120, check=True).stdout.split()
    assert not set(refused.values()) & set(known)
    submission_id, result = submit(ray_head.env)
    assert result.returncode == 0 and "the job ran" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    assert ray_head.job_info(submission_id)["status"] == "SUCCEEDED"


def test_train_job_submitted_with_ray_job_submit(ray_head, s3_jobs, s3_endpoint, tmp_path, record_property):
    spec = write_spec(tmp_path / "train.yaml", {
        "job": "train", "data": f"{s3_jobs}/labelled/", "class1": "A", "output": f"{s3_jobs}/models/",
        "arch": "resnet18", "weights": "none", "epochs": 1, "batch_size": 8, "input_size": 64})
    submission_id = f"dualcam-train-{secrets.token_hex(4)}"
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ray_head.address, "--submission-id", submission_id,
         "--working-dir", str(ROOT), "--runtime-env-json", json.dumps({"env_vars": job_env(s3_endpoint)}),
         "--", "python", "jobs/train.py", spec],
        env=ray_head.env, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - started
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed[-6000:]
    info = ray_head.job_info(submission_id)
    assert info["status"] == "SUCCEEDED"
    record_property("train_job", {**info, "submit_wall_seconds": round(wall, 1)})
    print(f"train job: {info['status']} in {info['seconds']:.1f} s (ray job submit: {wall:.1f} s)")

    version = latest_version(f"{s3_jobs}/models/A")
    assert version and version in printed  # the table names where the checkpoint went
    meta = load_meta(version)
    assert (meta.arch, meta.input_size, meta.metrics["best_epoch"]) == ("resnet18", 64, 1)  # epochs from 1


def test_a_failure_inside_ray_exits_1_not_2(ray_cluster, capsys):
    import ray

    from dualcam.commands.common import exit_status

    @ray.remote(num_cpus=0)
    def write():
        raise OSError("s3://bucket/part-0.parquet: write failed")

    assert exit_status(lambda: ray.get(write.remote())) == 1  # Ray re-raises it as an OSError subclass
    assert exit_status(lambda: (_ for _ in ()).throw(OSError("s3://bucket: no such bucket"))) == 2
    assert "write failed" in capsys.readouterr().err
