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

import ctypes
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.config import Config

from dualcam import load_meta
from dualcam.cli import main
from dualcam.io.results import data_files, read_results
from dualcam.synthetic.scenarios import write_synthetic_xrays

from conftest import ROOT, _free_port, descendants, write_untrained_experts
from samples import write_labelled_folder

pytestmark = pytest.mark.faults

INPUT_SIZE = 128
N = 48
"""Images per scenario: six files of 8 rows (batches of 2, blocks of 4 batches), a few seconds of scoring here."""


@pytest.fixture(scope="module")
def experts(tmp_path_factory) -> tuple[str, str]:
    return write_untrained_experts(tmp_path_factory.mktemp("experts"), INPUT_SIZE)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_synthetic_xrays(root, N, size=96)
    return root


class Driver:
    """``dualcam score`` (``commands.score.run`` with the given options) in a process of its own, as a user
    or a scheduler starts it; its output goes to files, its process group is ended with the test."""

    def __init__(self, name: str, folder: Path, env: dict[str, str], **options):
        self.name = name
        self.out, self.err = folder / f"{name}.stdout", folder / f"{name}.stderr"
        code = ("import sys\nfrom dualcam.commands import score\nfrom dualcam.commands.common import exit_status\n"
                f"sys.exit(exit_status(lambda: score.run(**{options!r})))\n")
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=out, stderr=err,
                                            cwd=folder, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        return self.err.read_text()

    def stdout(self) -> str:
        return self.out.read_text()

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 600) -> None:
        """Return once ``ready()``; fail if the driver ended first or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.process.poll() is None, f"the driver ended before {what}: {self.stderr()[-3000:]}"
            assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
            time.sleep(0.05)

    def kill(self) -> None:
        os.killpg(self.pid, signal.SIGKILL)
        self.process.wait()

    def finish(self, timeout: float = 900) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the driver did not finish within {timeout} s: {self.stderr()[-3000:]}")

    def end(self) -> None:
        if self.process.poll() is None:
            self.kill()


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


def joined(ray_address: str) -> dict[str, str]:
    """A driver's environment: this session's, joined to its Ray."""
    return {**os.environ, "RAY_ADDRESS": ray_address}


def counts(rows: pa.Table, inputs: int) -> dict[str, int]:
    errors = rows.filter(pa.compute.equal(rows.column("status"), "error")).num_rows
    return {"inputs": inputs, "rows": rows.num_rows, "unique": len(set(rows.column("uri").to_pylist())),
            "errors": errors}


def folder_rows(out: Path) -> pa.Table:
    return read_results(str(out), ["uri", "status", "error"], warn_duplicates=False)


def score_options(experts, input, output, **extra) -> dict:
    return {"c1": experts[0], "c2": experts[1], "input": str(input), "output": str(output), "batch_size": 2,
            "rows_per_file": 8, **extra}


def assert_whole(rows: pa.Table, expected_uris, errors: int = 0) -> None:
    """Every input exactly once, with ``errors`` error rows."""
    uris = rows.column("uri").to_pylist()
    assert len(uris) == len(set(uris)), "an input is in the output twice"
    assert sorted(uris) == sorted(expected_uris)
    assert counts(rows, len(uris))["errors"] == errors, rows.filter(
        pa.compute.equal(rows.column("status"), "error")).column("error").to_pylist()


# --- the driver killed ------------------------------------------------------------------------------

class Created:
    """The names created in a folder so far, from Linux's inotify queue: a file that lives a
    millisecond between two looks (a small Parquet file being written) is still seen."""

    def __init__(self, folder: Path):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, str(folder).encode(), 0x100) < 0:  # IN_CREATE
            raise OSError(ctypes.get_errno(), f"inotify on {folder}")
        self.names: list[str] = []

    def __call__(self) -> list[str]:
        try:
            events = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return self.names
        while events:  # struct inotify_event: int wd; uint32 mask, cookie, len; char name[len]
            length = struct.unpack_from("iIII", events)[3]
            self.names.append(events[16:16 + length].rstrip(b"\0").decode())
            events = events[16 + length:]
        return self.names

    def close(self) -> None:
        os.close(self.fd)


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
    command = ["score", "--c1", experts[0], "--c2", experts[1], "--input", inputs, "--output", out]
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


# --- Ray's workers killed -------------------------------------------------------------------------------

def ray_processes(titled: str) -> list[int]:
    """This session's Ray worker processes whose title (``ray::...``) holds ``titled``."""
    return [pid for pid, command in descendants().items() if command.startswith("ray::") and titled in command]


SCORING_A_BATCH = "MapBatches(DualScorer)).submit"
"""The title of a scoring actor while it runs a batch (``.__init__`` while it loads the experts, none when idle)."""


def scoring() -> bool:
    """Whether a scoring actor of this session runs a batch: the run is under way, with inputs still unread."""
    return bool(ray_processes(SCORING_A_BATCH))


@pytest.mark.parametrize(("victim", "title", "times"), [
    ("the scoring actor", SCORING_A_BATCH, 1),
    ("the scoring actor, twice", SCORING_A_BATCH, 2),
    ("the write worker", "ray::Write", 1),
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


# --- S3 frozen and lost ------------------------------------------------------------------------------

class MotoProcess:
    """moto's S3 server as a process of its own, which a test can freeze (SIGSTOP), thaw, or lose."""

    def __init__(self):
        self.port = _free_port()
        self.env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
                    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}", "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        # the test's own view: quick to give up, so a frozen server never stalls the test itself
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=self.env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
            aws_secret_access_key="testing", region_name="us-east-1",
            config=Config(connect_timeout=2, read_timeout=5, retries={"total_max_attempts": 1}))
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "moto's server did not start"
                time.sleep(0.1)

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def lose(self) -> None:
        """Killed and started again on the same port, empty: every bucket and object gone."""
        self.process.kill()
        self.process.wait()
        self.start()

    def stop(self) -> None:
        self.thaw()
        self.process.kill()
        self.process.wait()

    def upload(self, bucket: str, folder: Path) -> list[str]:
        self.client.create_bucket(Bucket=bucket)
        for path in sorted(folder.iterdir()):
            self.client.put_object(Bucket=bucket, Key=f"images/{path.name}", Body=path.read_bytes())
        return [f"s3://{bucket}/images/{path.name}" for path in sorted(folder.iterdir())]

    def data_files(self, bucket: str) -> list[str]:
        try:
            listed = self.client.list_objects_v2(Bucket=bucket, Prefix="out/").get("Contents", [])
        except Exception:  # frozen, lost, or no bucket yet: nothing seen
            return []
        return [o["Key"] for o in listed if o["Key"].endswith(".parquet") and "/_" not in o["Key"]
                and "/." not in o["Key"]]

    def rows(self, bucket: str) -> pa.Table:
        tables = [pq.read_table(pa.BufferReader(self.client.get_object(Bucket=bucket, Key=key)["Body"].read()),
                                columns=["uri", "status", "error"]) for key in self.data_files(bucket)]
        return pa.concat_tables(tables) if tables else pa.table({"uri": [], "status": [], "error": []})


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
    retried = drivers("retried", moto_process.env, **options, retry_errors=True)
    assert retried.finish() == 0, retried.stderr()
    rows = moto_process.rows("frozen")
    observed("then --retry-errors", **counts(rows, N), exit=0)
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
    assert status == 1
    last = err[-1]
    assert last.startswith("dualcam: error: ") and "\x1b" not in last and "lost" in last, last
    log = Path(last.rsplit("(full traceback: ", 1)[1].rstrip(")"))
    assert log.parent == tmp_path / "logs" and "Traceback" in log.read_text()

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
    result = subprocess.run([sys.executable, str(script), *experts, str(images), str(out)], env=env,
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


# --- a training worker killed ---------------------------------------------------------------------------

def test_a_training_worker_killed_mid_training_resumes_from_its_last_checkpoint(
    ray_cluster, tmp_path, observed,
):
    labelled, out = tmp_path / "labelled", tmp_path / "models"
    write_labelled_folder(labelled, 24)
    command = [str(Path(sys.executable).parent / "dualcam"), "train", "--data", str(labelled), "--c1", "A",
               "--c2", "B", "--c2-negatives", "normal", "--output", str(out), "--arch", "resnet18", "--weights",
               "none", "--epochs", "3", "--batch-size", "8", "--image-size", "64", "--lr", "0.01", "--seed", "3"]
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
