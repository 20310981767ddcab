"""Shared fixtures: X-ray and DICOM samples (generated, plus the real ones from ../shared when present),
and a real S3 endpoint (moto's server on loopback)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from samples import GENERATED_COVID_COUNTS, MONO1_CHEST, MONO_TWINS, write_xray_samples

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class XraySamples:
    """A folder laid out as ../shared/data/xray (``images/`` and ``metadata.csv``, ``dicom/`` and
    ``dicom/dicom.csv``, the COVID-19 collection's metadata) and what the tests know of its files."""

    name: str
    path: Path
    mono_twins: tuple[str, str]
    """A MONOCHROME2 DICOM and its MONOCHROME1 twin (the same pixels), in ``dicom/``."""
    mono1_chest: str
    """A MONOCHROME1 chest film in ``dicom/``."""
    covid_counts: dict
    """What ``read_labelled`` finds in its ``covid-chestxray-dataset-metadata.csv``."""


SHARED_COVID_COUNTS = {"kept": 121, "missing": 181, "covid": 60, "both_views_at_least": 303, "excluded": {
    "view not PA": 353, "not an X-ray": 84, "no finding recorded ('todo')": 12}}
"""Of the real file's 751 rows, 302 are PA X-rays with a finding; 121 of them have their image in the folder."""


def shared_xrays() -> Path | None:
    """The shared chest X-ray folder (see ../shared/data/README.md), or None when absent."""
    path = Path(os.environ.get("DUALCAM_XRAY_SAMPLES", ROOT.parent / "shared" / "data" / "xray"))
    return path if (path / "images").is_dir() else None


@functools.cache
def xray_sample_sets() -> tuple[XraySamples, ...]:
    """The generated samples (written once per session: every kind of file the decoder takes), then
    the real ones from ../shared when present, so a clean clone tests every decoding path too."""
    generated = Path(tempfile.mkdtemp(prefix="dualcam-xray-samples-"))
    atexit.register(shutil.rmtree, generated, True)
    write_xray_samples(generated)
    sets = [XraySamples("generated", generated, MONO_TWINS, MONO1_CHEST, GENERATED_COVID_COUNTS)]
    shared = shared_xrays()
    if shared is not None:
        sets.append(XraySamples("shared", shared, ("1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
                                                   "Fake_MONOHR1.dcm"), "CR-MONO1-10-chest.dcm", SHARED_COVID_COUNTS))
    return tuple(sets)


@pytest.fixture(scope="session", params=xray_sample_sets(), ids=lambda samples: samples.name)
def xray_samples(request) -> XraySamples:
    return request.param


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 with the standard AWS variables pointing at it.

    boto3 (and pyarrow, Ray) then reach it through plain s3:// URIs, as they would AWS or MinIO.
    """
    from dualcam.bench.s3server import MotoServer
    from dualcam.io import storage

    with MotoServer() as server:
        env = server.env
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        storage.s3_client.cache_clear()
        yield server.endpoint
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        storage.s3_client.cache_clear()


@pytest.fixture
def s3_bucket(s3_endpoint, request) -> str:
    """A fresh bucket for one test; returns its s3:// URI."""
    from dualcam.io import storage

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    storage.s3_client().create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def pacs_account() -> None:
    """The test PACS's account (``dualcam.bench.pacs``) in this process's environment, where dualcam reads
    its DICOMweb credentials, for the session: set before Ray starts, so its workers hold it too, as a
    cluster's pods hold theirs."""
    from dualcam.bench import pacs
    from dualcam.io import dicomweb

    os.environ.update({dicomweb.ENV_USER: pacs.USER, dicomweb.ENV_PASSWORD: pacs.PASSWORD})


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint, pacs_account):
    """The one local Ray of the test session: 2 CPUs, bound to 127.0.0.1, workers that see moto's S3 and
    the test PACS's account.

    Returns the address other processes (a killed driver, ``ray job submit``) join it at.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # local Ray on loopback; read at import
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def write_untrained_experts(root: Path, input_size: int, archs: tuple[str, str] = ("resnet18", "resnet18"),
                            ) -> tuple[str, str]:
    """Two untrained experts (COVID-19, pneumonia; of ``archs``; seed 0) saved under ``root``: their URIs."""
    import torch

    from dualcam import build_expert, save_expert

    torch.manual_seed(0)
    uris = []
    for arch, name in zip(archs, ("COVID-19", "pneumonia")):
        uri = str(root / name)
        save_expert(build_expert(arch), uri, {"arch": arch, "class_name": name, "input_size": input_size})
        uris.append(uri)
    return uris[0], uris[1]


@pytest.fixture(scope="module")
def experts(request, tmp_path_factory) -> tuple[str, str]:
    """``write_untrained_experts`` once per test module, at the module's ``INPUT_SIZE``; of its
    ``EXPERT_ARCHS`` when it has them (default two resnet18)."""
    module = request.module
    if not hasattr(module, "INPUT_SIZE"):
        raise pytest.UsageError(f"{module.__name__} uses the experts fixture without setting INPUT_SIZE")
    archs = getattr(module, "EXPERT_ARCHS", ("resnet18", "resnet18"))
    return write_untrained_experts(tmp_path_factory.mktemp("experts"), module.INPUT_SIZE, archs)


def descendants(pid: int | None = None) -> dict[int, str]:
    """The processes below ``pid`` (default: this one), by pid, with their command lines: the Ray this
    session started (its raylet, workers, actors) and the drivers it ran. Read from /proc (Linux)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    below, frontier = {}, [pid or os.getpid()]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in below:
                with contextlib.suppress(OSError):
                    below[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    frontier.append(child)
    return below


OBSERVED: list[str] = []
"""Counts the fault scenarios observed, printed at the end of the session."""


@pytest.fixture
def observed(request):
    """``observed(what, inputs=..., rows=..., unique=..., exit=...)`` records what a scenario saw; the
    session's summary lists every record, so a CI log shows the figures each promise rests on."""
    def record(what: str, **counts) -> None:
        OBSERVED.append(f"{request.node.name}: {what}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))

    return record


def pytest_terminal_summary(terminalreporter) -> None:
    if OBSERVED:
        terminalreporter.section("what the fault scenarios observed")
        for line in OBSERVED:
            terminalreporter.write_line(line)


def run_without_ray(code: str, timeout: float = 300) -> str:
    """Run Python ``code`` in a fresh interpreter where any ``import ray`` fails; its stdout."""
    import subprocess
    import sys

    blocker = "import sys; sys.modules['ray'] = None\n"
    result = subprocess.run([sys.executable, "-c", blocker + code], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result.stdout


def kill_driver_when(code: str, ray_address: str, ready, timeout: float) -> float:
    """Run ``code`` as a Ray driver joined to ``ray_address``; SIGKILL it once ``ready()`` holds.

    Returns when it was killed. Fails if the driver ended on its own first (then nothing was tested).
    """
    import signal
    import subprocess
    import sys
    import time

    driver = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "RAY_ADDRESS": ray_address},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not (was_ready := ready()) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed_at = time.time()
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert driver.returncode == -signal.SIGKILL, driver.stderr.read().decode()[-3000:]
    assert was_ready, f"the moment to kill the driver did not come within {timeout} s"
    return killed_at
