"""The fault suite (``make faults``): a run's promises kept through an operator's bad night.

Drivers killed at several moments, scoring actors and the write worker killed, S3 frozen (SIGSTOP)
and lost, input files changed under a running job, two runs into one output, a whole Ray node lost
mid-run and a training worker killed mid-training. Every scenario ends with every input in the
output exactly once (scored, or with its error) and records what it saw (``observed``; listed at the
end of the session). Faults are injected when something observable happens (a line printed, a file
written), never after a fixed sleep, so the suite holds on a slow machine.

Real parts throughout: drivers are real processes (``dualcam`` as a user runs it) joined to the
session's Ray, or to a Ray of their own where the scenario needs other S3 settings or other nodes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pytest

from dualcam import load_meta
from dualcam.bench.s3server import free_port
from dualcam.cli import main
from dualcam.io.results import data_files
from dualcam.scoring.scorers import POISON_DEATHS
from dualcam.synthetic.scenarios import write_synthetic_xrays

from conftest import ROOT
from fault_harness import (
    SCORING_A_BATCH,
    Created,
    Driver,
    MotoProcess,
    Opened,
    assert_whole,
    counts,
    folder_rows,
    holding_open,
    joined,
    ray_processes,
    score_options,
    scoring,
)
from samples import write_labelled_folder

pytestmark = pytest.mark.faults

INPUT_SIZE = 128
"""Of the experts (conftest's ``experts`` fixture)."""
N = 48
"""Images per scenario: six files of 8 rows (batches of 2, blocks of 4 batches), a few seconds of scoring here."""


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_synthetic_xrays(root, N, size=96)
    return root


@pytest.fixture
def drivers(tmp_path):
    """``drivers(name, env, **options)`` starts a ``Driver``; any still running at the end is killed."""
    started = []

    def start(name: str, env: dict[str, str], **options) -> Driver:
        started.append(Driver(name, tmp_path, env, **options))
        return started[-1]

    yield start
    for driver in started:
        driver.end()


# --- the driver killed ------------------------------------------------------------------------------

MOMENTS = {
    "while its actor starts": lambda driver, out, created: "dualcam: scoring" in driver.stderr(),
    "as the first hidden .inflight file appears":
        lambda driver, out, created: any(name.endswith(".inflight") for name in created()),
    "half way": lambda driver, out, created: len(data_files(str(out))) >= 3,
}


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_driver_killed_then_rerun_leaves_every_input_once(
    ray_cluster, experts, images, tmp_path, drivers, observed, moment,
):
    out = tmp_path / "out"
    out.mkdir()  # empty: a new output, watched from the start
    created = Created(out)
    killed = drivers("killed", joined(ray_cluster), **score_options(experts, images, out))
    killed.wait_until(lambda: MOMENTS[moment](killed, out, created), moment)
    killed.kill()
    created.close()
    left = folder_rows(out)
    observed(f"driver SIGKILLed {moment}", **counts(left, N), exit="SIGKILL")

    rerun = drivers("rerun", joined(ray_cluster), **score_options(experts, images, out))
    assert rerun.finish() == 0, rerun.stderr()
    rows = folder_rows(out)
    observed("its rerun", **counts(rows, N), exit=0)
    assert_whole(rows, [str(p) for p in images.iterdir()])
    assert f"{left.num_rows} already done" in rerun.stdout()
    assert not list(out.glob(".*"))  # no hidden leftovers: .inflight files were cleared, the probe removed


def test_a_killed_drivers_s3_output_is_locked_until_its_lease_expires_then_resumed(
    ray_cluster, experts, images, s3_bucket, drivers, observed, capsys,
):
    from dualcam.io import storage

    inputs = f"{s3_bucket}/images"
    for path in sorted(images.iterdir()):
        storage.write_bytes(f"{inputs}/{path.name}", path.read_bytes())
    out = f"{s3_bucket}/out"
    options = score_options(experts, inputs, out, lease_seconds=30)
    killed = drivers("killed", joined(ray_cluster), **options)
    killed.wait_until(lambda: len(data_files(out)) >= 1, "the first file")
    killed.kill()
    left = folder_rows(out)
    observed("driver with an S3 output SIGKILLed after the first file", **counts(left, N), exit="SIGKILL")

    # a rerun at once (here, in this process: it stops before Ray, at the lease)
    command = ["score", "--expert1", experts[0], "--expert2", experts[1], "--input", inputs, "--output", out]
    assert main(command) == 2
    assert f"is being written by another run (held by host {socket.gethostname()}, pid {killed.pid}, " \
           in capsys.readouterr().err
    observed("a rerun at once", **counts(folder_rows(out), N), exit=2)
    waited = drivers("waited", joined(ray_cluster), **options, wait_for_lease=True)
    assert waited.finish() == 0, waited.stderr()
    rows = folder_rows(out)
    # it waited, unless starting it took longer than what was left of the lease
    said = "waited for the lease" if "dualcam: waiting for the run writing" in waited.stderr() else "lease had expired"
    observed(f"a rerun with --wait-for-lease ({said})", **counts(rows, N), exit=0)
    assert_whole(rows, [f"{inputs}/{p.name}" for p in images.iterdir()])


@pytest.mark.parametrize("sigint", ["handled", "ignored"])
def test_a_driver_paused_past_its_lease_lands_nothing_after_the_takeover(
    experts, images, s3_bucket, drivers, observed, sigint,
):
    import pyarrow.parquet as pq

    from dualcam.io import storage

    inputs, out = f"{s3_bucket}/{sigint}/images", f"{s3_bucket}/{sigint}/out"  # one bucket for both cases
    for path in sorted(images.iterdir()):
        storage.write_bytes(f"{inputs}/{path.name}", path.read_bytes())
    options = score_options(experts, inputs, out, lease_seconds=6)
    # each driver a Ray of its own (no RAY_ADDRESS), as on two machines: the paused driver's actors keep their
    # CPUs, which on one shared 2-CPU Ray would leave the taker none
    own_ray = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    stale = drivers("stale", own_ray, ignore_sigint=sigint == "ignored", **options)
    stale.wait_until(scoring, "scoring")
    os.kill(stale.pid, signal.SIGSTOP)  # the driver only: a frozen VM, a debugger; its Ray workers go on
    taker = drivers("taker", own_ray, **options, wait_for_lease=True)
    assert taker.finish() == 0, taker.stderr()  # took the lease once it expired, cleared the stale staging
    os.kill(stale.pid, signal.SIGCONT)
    assert stale.finish() == 1, stale.stderr()
    assert "another run took over" in stale.stderr()
    path, filesystem = storage.arrow_source(out)
    rows = pq.read_table(path, filesystem=filesystem, columns=["uri", "status"])  # a plain reader's view
    observed(f"S3 driver SIGSTOPped while scoring, past its lease (SIGINT {sigint}); a --wait-for-lease run took "
             "over; then SIGCONT", **counts(rows, N), exit_stale=1, exit_taker=0)
    assert_whole(rows, [f"{inputs}/{p.name}" for p in images.iterdir()])


# --- Ray's workers killed -------------------------------------------------------------------------------

@pytest.mark.parametrize(("victim", "title", "times"), [
    ("the scoring actor", SCORING_A_BATCH, 1),
    ("the scoring actor, twice", SCORING_A_BATCH, 2),
    ("the write worker", "ray::MapBatches(count_rows)->Write", 1),  # Ray Data fuses the rows' count into it
])
def test_rays_workers_killed_mid_run_are_replaced_and_the_run_finishes(
    ray_cluster, experts, images, tmp_path, drivers, observed, victim, title, times,
):
    # The victim is killed at work: an actor while it runs a batch (its title ends in ``.submit``), the write
    # worker while it writes; each kill hits a process that was not there before (a restarted one).
    out = tmp_path / "out"
    driver = drivers("driver", joined(ray_cluster), **score_options(experts, images, out))
    killed: list[int] = []
    written: list[int] = []
    while len(killed) < times:
        driver.wait_until(lambda: bool(set(ray_processes(title)) - set(killed)), f"{victim} at work")
        pid = sorted(set(ray_processes(title)) - set(killed))[0]
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended between the look and the kill: wait for the next one
            continue
        killed.append(pid)
        written.append(folder_rows(out).num_rows)
    assert driver.finish() == 0, driver.stderr()
    rows = folder_rows(out)
    observed(f"{victim} SIGKILLed at work, with {' then '.join(map(str, written))} rows written", **counts(rows, N),
             exit=0)
    assert_whole(rows, [str(p) for p in images.iterdir()])


def test_an_input_that_kills_its_worker_each_time_becomes_one_error_row_never_read_again(
    ray_cluster, experts, images, tmp_path, drivers, observed,
):
    # Each time a worker opens the file, it is SIGKILLed while it reads, as the kernel kills a process out of
    # memory (a decoder's segfault ends it the same way): Ray alone restarts the actor and retries for ever.
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    poison = folder / "poison.png"
    with open(poison, "wb") as file:
        file.truncate(400 * 2**20)  # sparse, under the byte limit: a read long enough to be seen at it
    opened, out = Opened(poison), tmp_path / "out"
    driver = drivers("driver", joined(ray_cluster), **score_options(experts, folder, out))
    killed: list[int] = []
    while driver.process.poll() is None:
        if len(opened()) > len(killed):
            readers = holding_open(poison)
            assert readers, "a read of the poison file ended before it could be killed"
            for pid in readers:
                os.kill(pid, signal.SIGKILL)
            killed.append(readers[0])
        time.sleep(0.002)
    assert driver.finish() == 0, driver.stderr()
    rows = folder_rows(out)
    observed(f"a file whose worker is killed each time it is read: {len(killed)} workers killed",
             **counts(rows, N + 1), exit=0)
    assert len(killed) == POISON_DEATHS
    assert_whole(rows, [str(p) for p in folder.iterdir()], errors=1)
    assert rows.filter(pa.compute.equal(rows.column("status"), "error")).column("error").to_pylist() == [
        f"{poison}: 3 workers died while it was being read or decoded (killed for memory, a crash in a "
        "decoder, or decoding past 300 s); not tried again unless --retry-errors"]

    rerun = drivers("rerun", joined(ray_cluster), **score_options(experts, folder, out))
    assert rerun.finish() == 0, rerun.stderr()
    observed("then a plain rerun", **counts(folder_rows(out), N + 1), exit=0)
    assert len(opened()) == len(killed) and folder_rows(out).num_rows == N + 1  # never read again
    opened.close()


# --- S3 frozen and lost ------------------------------------------------------------------------------

@pytest.fixture
def moto_process():
    server = MotoProcess()
    yield server
    server.stop()


FREEZES = {  # (seconds frozen, read timeout): shorter than the deadline, and longer
    "frozen 20 s": (20.0, None),
    "frozen 15 s, past a 4 s read timeout": (15.0, 4.0),
}


@pytest.mark.parametrize("freeze", FREEZES)
def test_s3_frozen_mid_run(experts, images, tmp_path, drivers, moto_process, observed, freeze):
    seconds, read_timeout = FREEZES[freeze]
    uris = moto_process.upload("frozen", images)
    extra = {"read_timeout": read_timeout, "max_error_fraction": 1.0} if read_timeout else {}
    # a Ray of its own (no RAY_ADDRESS): its workers must see this S3, not the session's
    options = score_options(experts, "s3://frozen/images", "s3://frozen/out", **extra)
    driver = drivers("driver", moto_process.env, **options)
    driver.wait_until(scoring, "scoring")  # inputs still to read, rows to write
    moto_process.freeze()
    time.sleep(seconds)  # the fault itself: S3 answers nothing for this long
    moto_process.thaw()
    assert driver.finish() == 0, driver.stderr()
    rows = moto_process.rows("frozen")
    observed(f"S3 {freeze}, from the first batch on", **counts(rows, N), exit=0)
    if read_timeout is None:
        assert_whole(rows, uris)
        return
    timed_out = rows.filter(pa.compute.equal(rows.column("status"), "error")).column("error").to_pylist()
    assert timed_out and all(f"no answer within {read_timeout:g} s" in e for e in timed_out), timed_out
    assert_whole(rows, uris, errors=len(timed_out))
    rerun = drivers("rerun", moto_process.env, **options)  # timeouts are transient: a plain rerun retries them
    assert rerun.finish() == 0, rerun.stderr()
    rows = moto_process.rows("frozen")
    observed("then a plain rerun", **counts(rows, N), exit=0)
    assert_whole(rows, uris)


def test_s3_lost_mid_run_fails_in_one_line_then_retry_errors_completes(
    experts, images, tmp_path, drivers, moto_process, observed,
):
    uris = moto_process.upload("lost", images)
    options = score_options(experts, "s3://lost/images", "s3://lost/out")
    env = {**moto_process.env, "DUALCAM_LOG_DIR": str(tmp_path / "logs")}
    driver = drivers("driver", env, **options)
    driver.wait_until(lambda: len(moto_process.data_files("lost")) >= 1, "the first file")
    moto_process.lose()
    status = driver.finish()
    err = driver.stderr().splitlines()
    observed("S3 lost and restarted empty", **counts(moto_process.rows("lost"), N), exit=status)
    assert status == 1, err[-3:]  # a failed run, never "unusable arguments" (2), wherever the loss fell
    last = [line for line in err if line.startswith("dualcam: ")][-1]  # Ray may still relay a cancelled worker's
    assert "\x1b" not in last and "lost" in last, last                     # output after it
    if last.startswith("dualcam: error: "):  # a write, publishing or reading back failed: traceback logged
        log = Path(last.rsplit("(full traceback: ", 1)[1].rstrip(")"))
        assert log.parent == tmp_path / "logs" and "Traceback" in log.read_text()
    else:  # every row was written before the loss took them: the check of the output sees them gone
        assert last.startswith("dualcam: run failed: ") and "not in s3://lost/out" in last, last

    assert moto_process.upload("lost", images) == uris  # the archive restored; the results were lost with S3
    retried = drivers("retried", env, **options, retry_errors=True)
    assert retried.finish() == 0, retried.stderr()
    rows = moto_process.rows("lost")
    observed("then the inputs restored and --retry-errors", **counts(rows, N), exit=0)
    assert_whole(rows, uris)


# --- files changing under the run ----------------------------------------------------------------------

def test_files_changed_under_a_running_job_get_an_error_row_each(
    ray_cluster, experts, tmp_path, drivers, observed,
):
    images, out = tmp_path / "images", tmp_path / "out"
    write_synthetic_xrays(images, N, size=96)
    last = sorted(images.iterdir())[-6:]  # scored last: still unread while the first batch is scored
    driver = drivers("driver", joined(ray_cluster), **score_options(experts, images, out, max_error_fraction=0.5))
    driver.wait_until(scoring, "scoring")
    deleted, truncated, emptied, overwritten, folder, pipe = last
    deleted.unlink()
    truncated.write_bytes(truncated.read_bytes()[:200])
    emptied.write_bytes(b"")
    overwritten.write_bytes(b"no longer an image" * 10)
    folder.unlink()
    folder.mkdir()
    pipe.unlink()
    os.mkfifo(pipe)
    assert driver.finish() == 0, driver.stderr()
    rows = folder_rows(out)
    observed("six inputs deleted, truncated, emptied, overwritten, replaced by a folder and by a named pipe",
             **counts(rows, N), exit=0)
    assert_whole(rows, [str(p) for p in images.iterdir()] + [str(deleted)], errors=6)
    reasons = {r["uri"]: r["error"] for r in rows.to_pylist() if r["status"] == "error"}
    expected = {deleted: "No such file", truncated: "corrupt or truncated PNG", emptied: "empty file",
                overwritten: "not a PNG, JPEG or DICOM file", folder: "not a regular file but a folder",
                pipe: "not a regular file but a named pipe"}
    for path, reason in expected.items():
        assert reason in reasons[str(path)] and str(path) in reasons[str(path)], reasons[str(path)]


# --- two runs at once -----------------------------------------------------------------------------------

def test_two_runs_at_once_into_one_output_write_each_input_once(
    ray_cluster, experts, images, tmp_path, drivers, observed,
):
    out = tmp_path / "out"
    env = joined(ray_cluster)
    first, second = (drivers(name, env, **score_options(experts, images, out)) for name in ("first", "second"))
    patient = drivers("patient", env, **score_options(experts, images, out), wait_for_lease=True)
    statuses = {d: d.finish() for d in (first, second, patient)}
    # whichever took the lease first wrote everything (the waiting run too, when it came first)
    (winner,) = [d for d in statuses if f"scored {N} images" in d.stdout()]
    assert statuses[winner] == statuses[patient] == 0, [d.stderr() for d in statuses]
    for loser in {first, second} - {winner}:
        assert statuses[loser] == 2, loser.stderr()
        assert f"(held by host {socket.gethostname()}, pid {winner.pid}, started " in loser.stderr()
    if winner is not patient:
        assert "scored 0 images" in patient.stdout() and f"{N} already done" in patient.stdout()
    rows = folder_rows(out)
    observed(f"two runs started at once, and a third with --wait-for-lease ({winner.name} took the lease first)",
             **counts(rows, N), exit=f"{statuses[first]}, {statuses[second]} and {statuses[patient]}")
    assert_whole(rows, [str(p) for p in images.iterdir()])


# --- a Ray node lost ------------------------------------------------------------------------------------

def test_a_ray_node_lost_mid_run_loses_no_input(experts, tmp_path, observed):
    images, out = tmp_path / "images", tmp_path / "out"
    write_synthetic_xrays(images, 300, size=96)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    script = ROOT / "tests" / "node_loss.py"
    result = subprocess.run([sys.executable, str(script), "score", *experts, str(images), str(out)], env=env,
                            capture_output=True, text=True, timeout=1200, start_new_session=True)
    assert result.returncode == 0, result.stderr[-5000:]
    # its one JSON line; Ray may print its own lines to stdout as the cluster shuts down
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, result.stdout[-5000:]
    seen = json.loads(lines[0])
    rows = folder_rows(out)
    observed(f"a node of 3 removed {seen['removed_after_s']:.0f} s into scoring, with {seen['rows_then']} rows "
             "written", **counts(rows, 300), exit=0)
    assert seen["nodes"] == 3 and seen["actors"] == 3 and seen["alive_after"] == 2
    assert_whole(rows, [str(p) for p in images.iterdir()])


# --- a local output on a cluster of several machines -----------------------------------------------------

NODE_PORTS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
              "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")


def node_with_own_disk(start: list[str], disk: Path, log: Path, auth: dict[str, str]) -> subprocess.Popen:
    """``ray start ... --block`` in a mount namespace of its own where ``disk`` is a fresh tmpfs: a node on this
    host whose files under ``disk`` nobody else sees, as another machine's. Ready once it says so."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}  # on 127.0.0.1 by its flag
    env.update(RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0", **auth)
    ports = [f"{flag}={free_port()}" for flag in NODE_PORTS]
    with log.open("w") as out:
        node = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount -t tmpfs node "$0" && exec "$@"',
             str(disk), sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--node-ip-address=127.0.0.1",
             "--num-cpus=1", "--disable-usage-stats", *ports, *start],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while "Ray runtime started" not in log.read_text():
        assert node.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    return node


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="nodes with disks of their own need mount namespaces: root and unshare (CI runs as root)")
def test_a_local_output_on_several_machines_is_refused_before_any_input_is_read(
    experts, images, tmp_path, drivers, observed,
):
    # A head and a worker node, each with its own disk at the output's folder; the driver beside them, as on a
    # machine of its own that reaches the cluster at RAY_ADDRESS: Ray's tasks would write the rows on the nodes'
    # disks, where the driver never sees them.
    disk = tmp_path / "disk"
    disk.mkdir()
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths live under it
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}  # as on the clusters
    nodes = []
    try:
        nodes.append(node_with_own_disk(["--head", f"--port={port}", "--include-dashboard=false",
                                         f"--temp-dir={temp_dir}"], disk, tmp_path / "head.log", auth))
        nodes.append(node_with_own_disk([f"--address=127.0.0.1:{port}"], disk, tmp_path / "worker.log", auth))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_ADDRESS=f"127.0.0.1:{port}", **auth)
        out = disk / "out"
        driver = drivers("driver", env, **score_options(experts, images, out))
        assert driver.finish() == 2, driver.stderr()
    finally:
        for node in nodes:
            os.killpg(node.pid, signal.SIGTERM)
            node.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)
    rows = folder_rows(out)
    observed("a local --output on a head and a worker node with disks of their own", **counts(rows, N), exit=2)
    assert rows.num_rows == 0 and "dualcam: scoring" not in driver.stderr()
    assert driver.stderr().strip().splitlines()[-1] == (
        f"dualcam: error: --output {out} is not on a disk the whole cluster shares: 2 of its 2 nodes (e.g. "
        f"{driver.stderr().split('(e.g. ')[1][:12]}) do not see it, and rows they wrote would be missing from it; a "
        "cluster of several machines needs an --output they all share, such as s3://")


# --- a training worker killed ---------------------------------------------------------------------------

def test_a_training_worker_killed_mid_training_resumes_from_its_last_checkpoint(
    ray_cluster, tmp_path, observed,
):
    labelled, out = tmp_path / "labelled", tmp_path / "models"
    write_labelled_folder(labelled, 24)
    command = [str(Path(sys.executable).parent / "dualcam"), "train", "--data", str(labelled), "--class1", "A",
               "--class2", "B", "--class2-negatives", "normal", "--output", str(out), "--arch", "resnet18", "--weights",
               "none", "--epochs", "3", "--batch-size", "8", "--input-size", "64", "--lr", "0.01", "--seed", "3"]
    driver = subprocess.Popen(command, env=joined(ray_cluster), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        # both experts have reported their first epoch (and its checkpoint): then one worker dies
        deadline = time.monotonic() + 900
        while len(list(out.glob("_ray_train/*/checkpoint_manager_snapshot.json"))) < 2:
            assert driver.poll() is None and time.monotonic() < deadline, "no two first epochs"
            time.sleep(0.05)
        workers = ray_processes("RayTrainWorker")
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        killed_at = time.time()
        printed, _ = driver.communicate(timeout=900)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, printed[-5000:]
    histories = {label: load_meta(str(next((out / label).glob("2*")))).metrics["history"] for label in "AB"}
    resumed = {label: [h["resumed_from_epoch"] for h in history] for label, history in histories.items()}
    restarted = [label for label, marks in resumed.items() if any(m is not None for m in marks)]
    assert len(restarted) == 1, resumed  # the other expert trained on, untouched
    label = restarted[0]
    history = histories[label]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    k = next(m for m in resumed[label] if m is not None)  # the epoch (from 1) whose checkpoint it went on from
    # it went on from the last epoch it had reported before the kill, and redid only what came after
    assert history[k - 1]["epoch_end_time"] < killed_at < history[k]["epoch_end_time"]
    assert resumed[label] == [None] * k + [k] * (3 - k)
    assert f"[{label}] resumed from the checkpoint of epoch {k}/3" in printed
    observed(f"expert {label}'s training worker SIGKILLed after epoch {k} of 3 was reported",
             resumed_from_epoch=k, epochs=len(history), exit=0)
    shutil.rmtree(out, ignore_errors=True)


def test_a_training_node_lost_mid_epoch_resumes_from_its_last_checkpoint(tmp_path, observed):
    """A spot GPU node taken away mid-epoch, on three nodes of a Ray of its own (tests/node_loss.py): Ray Train
    (``FailureConfig(max_failures)``, which ``dualcam train`` sets) starts a new worker on the node left, which
    goes on from the last reported checkpoint."""
    labelled, out = tmp_path / "labelled", tmp_path / "models"
    write_labelled_folder(labelled, 24)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "node_loss.py"), "train", str(labelled), str(out)],
                            env=env, capture_output=True, text=True, timeout=1200, start_new_session=True)
    assert result.returncode == 0, result.stderr[-5000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("{")]
    seen = json.loads(line)
    assert seen["nodes"] == 3 and seen["alive_after"] == 2
    assert seen["epochs"] == [1, 2, 3]
    # removed after epoch 1 was reported and before epoch 2 was: epochs 2 and 3 ran on from epoch 1's checkpoint
    assert seen["resumed_from_epoch"] == [None, 1, 1], seen
    first, second, third = seen["epoch_end_after_removal_s"]
    assert first < 0 < second < third
    observed(f"the node of expert A's training worker removed {seen['removed_after_s']:.0f} s in, after epoch 1 "
             f"of 3; epoch 2 ended {second:.0f} s after the removal, the run after {seen['total_s']:.0f} s",
             resumed_from_epoch=1, epochs=3, exit=0)
