"""Shared fixtures: the sample X-rays from ../shared, and a real S3 endpoint (moto's server on loopback)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def xray_samples() -> Path | None:
    """The shared chest X-ray folder (see ../shared/data/README.md), or None when absent."""
    path = Path(os.environ.get("DUALCAM_XRAY_SAMPLES", ROOT.parent / "shared" / "data" / "xray"))
    return path if (path / "images").is_dir() else None


@pytest.fixture(scope="session")
def xray_dir() -> Path:
    path = xray_samples()
    if path is None:
        pytest.skip("sample X-rays not found: set DUALCAM_XRAY_SAMPLES or lay out ../shared/data/xray")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 with the standard AWS variables pointing at it.

    boto3 (and pyarrow, Ray) then reach it through plain s3:// URIs, as they would AWS or MinIO.
    """
    from moto.server import ThreadedMotoServer

    from dualcam import storage

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    storage.s3_client.cache_clear()
    yield env["AWS_ENDPOINT_URL"]
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    storage.s3_client.cache_clear()
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request) -> str:
    """A fresh bucket for one test; returns its s3:// URI."""
    from dualcam import storage

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    storage.s3_client().create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint):
    """The one local Ray of the test session: 2 CPUs, bound to 127.0.0.1, workers that see moto's S3.

    Returns the address other processes (a killed driver, ``ray job submit``) join it at.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # local Ray on loopback; read at import
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


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
    while not ready() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed_at = time.time()
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert driver.returncode == -signal.SIGKILL, driver.stderr.read().decode()[-3000:]
    return killed_at
