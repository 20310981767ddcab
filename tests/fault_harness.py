"""The fault suite's harness (``tests/test_faults.py``): drivers as processes of their own, moto's S3
server as one, watching a folder and Ray's workers, and the checks every scenario ends with."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
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

from dualcam.bench.s3server import MotoServer
from dualcam.io.results import read_results

from conftest import descendants


class Driver:
    """``dualcam score`` (``commands.score.run`` with the given options) in a process of its own, as a user
    or a scheduler starts it; its output goes to files, its process group is ended with the test."""

    def __init__(self, name: str, folder: Path, env: dict[str, str], ignore_sigint: bool = False, **options):
        self.name = name
        self.out, self.err = folder / f"{name}.stdout", folder / f"{name}.stderr"
        code = ("import signal, sys\nfrom dualcam.commands import score\n"
                "from dualcam.commands.common import exit_status\n"
                + ("signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `cmd &` from a script leaves it\n"
                   if ignore_sigint else "")
                + f"sys.exit(exit_status(lambda: score.run(**{options!r})))\n")
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
    return {"expert1": experts[0], "expert2": experts[1], "input": str(input), "output": str(output), "batch_size": 2,
            "rows_per_file": 8, **extra}


def assert_whole(rows: pa.Table, expected_uris, errors: int = 0) -> None:
    """Every input exactly once, with ``errors`` error rows."""
    uris = rows.column("uri").to_pylist()
    assert len(uris) == len(set(uris)), "an input is in the output twice"
    assert sorted(uris) == sorted(expected_uris)
    assert counts(rows, len(uris))["errors"] == errors, rows.filter(
        pa.compute.equal(rows.column("status"), "error")).column("error").to_pylist()


class Watched:
    """Linux inotify events on a path so far, read from the kernel's queue: one that lives a millisecond
    between two looks (a small Parquet file being written) is still seen. Each event's name (empty for a
    file's own events)."""

    def __init__(self, path: Path, mask: int):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, str(path).encode(), mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {path}")
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


class Created(Watched):
    """The names created in a folder so far."""

    def __init__(self, folder: Path):
        super().__init__(folder, 0x100)  # IN_CREATE


class Opened(Watched):
    """One entry per time a file was opened so far."""

    def __init__(self, file: Path):
        super().__init__(file, 0x20)  # IN_OPEN


def holding_open(file: Path) -> list[int]:
    """This session's Ray processes that have ``file`` open now."""
    def holds(pid: int) -> bool:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == str(file):
                        return True
        return False

    return [pid for pid in ray_processes("") if holds(pid)]


def ray_processes(titled: str) -> list[int]:
    """This session's Ray worker processes whose title (``ray::...``) holds ``titled``."""
    return [pid for pid, command in descendants().items() if command.startswith("ray::") and titled in command]


SCORING_A_BATCH = "MapBatches(DualScorer)).submit"
"""The title of a scoring actor while it runs a batch (``.__init__`` while it loads the experts, none when idle)."""


def scoring() -> bool:
    """Whether a scoring actor of this session runs a batch: the run is under way, with inputs still unread."""
    return bool(ray_processes(SCORING_A_BATCH))


class MotoProcess:
    """moto's S3 server as a process of its own (``MotoServer(own_process=True)``), which a test can
    freeze (SIGSTOP), thaw, or lose; ``env`` is this session's environment pointed at it, without Ray's address."""

    def __init__(self) -> None:
        self.server = MotoServer(own_process=True).start()
        s3 = self.server.env
        self.env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **s3}
        # the test's own view: quick to give up, so a frozen server never stalls the test itself
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=s3["AWS_ENDPOINT_URL"], aws_access_key_id=s3["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=s3["AWS_SECRET_ACCESS_KEY"], region_name=s3["AWS_DEFAULT_REGION"],
            config=Config(connect_timeout=2, read_timeout=5, retries={"total_max_attempts": 1}))

    def _signal(self, signum: signal.Signals) -> None:
        assert self.server.process is not None, "moto's server is not running"
        self.server.process.send_signal(signum)

    def freeze(self) -> None:
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def lose(self) -> None:
        """Killed and started again on the same port, empty: every bucket and object gone."""
        self.server.stop()
        self.server.start()

    def stop(self) -> None:
        self.server.stop()  # thawed first, should it be frozen

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
