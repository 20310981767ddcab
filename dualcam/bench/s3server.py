"""moto's S3 server on 127.0.0.1, for the tests and the benches: a real S3 endpoint on loopback.

``MotoServer()`` runs it in a thread of this process; ``MotoServer(own_process=True)`` in a process
of its own (``python -m moto.server``), as S3 is another machine: that process can be frozen
(SIGSTOP), killed and started again on the same port. Either way ``env`` holds the standard AWS
variables pointing at it, with one set of fake credentials: boto3, pyarrow and Ray reach it
through plain s3:// URIs once they are in a process's environment. Setting them is the caller's
choice (this module never touches ``os.environ``).

moto is imported here only, and only when a server starts in a thread.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer

HOST = "127.0.0.1"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}
"""The one set of fake credentials every moto server here takes (moto accepts any)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def s3_env(endpoint: str) -> dict[str, str]:
    """The AWS variables that point boto3, pyarrow and Ray at the S3 endpoint ``endpoint``."""
    return {"AWS_ENDPOINT_URL": endpoint, **FAKE_CREDENTIALS}


class MotoServer:
    """moto's S3 server on 127.0.0.1: ``start()`` returns once it answers, ``stop()`` ends it; or use it
    as a context manager. ``endpoint`` and ``env`` (``s3_env``) are set once it has started."""

    def __init__(self, own_process: bool = False, start_timeout: float = 60.0) -> None:
        self.own_process = own_process
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        """The server's process (``own_process``), while it runs."""
        self._threaded: ThreadedMotoServer | None = None

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise RuntimeError("moto's server has not started")
        return f"http://{HOST}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return s3_env(self.endpoint)

    def start(self) -> MotoServer:
        """Start the server (again on its earlier port, if it ran before: an own process restarted empty)."""
        if self.own_process:
            self.port = self.port or free_port()
            self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._wait_until_it_answers()
        else:
            from moto.server import ThreadedMotoServer

            self._threaded = ThreadedMotoServer(ip_address=HOST, port=self.port or 0, verbose=False)
            self._threaded.start()  # returns once it listens
            self.port = self._threaded.get_host_and_port()[1]
        return self

    def _wait_until_it_answers(self) -> None:
        assert self.process is not None and self.port is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto's server did not start on {HOST}:{self.port}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """End the server: its process killed (thawed first, should it be frozen), or its thread stopped."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGCONT)
                self.process.kill()
            self.process.wait()
            self.process = None
        if self._threaded is not None:
            self._threaded.stop()
            self._threaded = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
