"""One writer per output: the lease a run holds on its output folder (local or s3://) while it lives.

Two runs into one output would each score every input the other has not written yet, and the
output would hold those inputs twice. So a run takes its output's lease before it looks at what
is done, and holds it to its end; a second run is refused (``LeaseHeld``, naming the holder: host,
pid, when it started, when its lease expires) or, with ``wait=True``, waits for the lease to be free.

The lease is ``_lease.json`` in the output (names starting with ``_`` are not data): the holder and
``expires``. A heartbeat thread renews it every third of its duration (``LEASE_SECONDS``), so it
expires only when its run is gone:

- **S3**: ``_lease.json`` is created with a conditional PUT (``If-None-Match: *``): of two runs
  starting at once, one creates it and the other gets 412 Precondition Failed. Renewing, and taking
  over a lease that expired (its driver was killed), are PUTs with ``If-Match`` on the ETag last
  seen, so of two runs taking over at once only one wins. The store must support conditional
  writes (AWS S3 does since 2024, as do MinIO and moto); hosts' clocks must agree to within seconds.
- **Local** (and shared file systems): ``_lease.lock`` is held with an exclusive ``flock`` for the
  run's life. The kernel drops it the moment the process dies, so the rerun of a killed driver goes
  on at once; ``_lease.json`` only tells others who holds it.

A run that finds its lease taken (its driver was paused past the expiry and another run took the
output over) stops with ``LeaseLost`` instead of writing beside the other.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from dualcam.io import storage

LEASE_FILE = "_lease.json"
LOCK_FILE = "_lease.lock"
LEASE_SECONDS = 60.0
"""How long a lease lasts without renewal: the longest a killed driver's S3 output stays locked."""
POLL_SECONDS = 5.0
"""How often a waiting run looks at the lease again."""


class LeaseHeld(storage.StorageError):
    """Another run holds the output's lease (exit status 2: the output cannot be used now)."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over by another run; this run stopped writing."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as ``_lease.json`` records it; times are seconds since the epoch."""

    host: str
    pid: int
    started: float
    expires: float
    token: str

    @classmethod
    def me(cls, seconds: float, started: float | None = None, token: str | None = None) -> Holder:
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), started or now, now + seconds, token or secrets.token_hex(8))

    def describe(self) -> str:
        return (f"held by host {self.host}, pid {self.pid}, started {_utc(self.started)}, "
                f"lease expires {_utc(self.expires)} unless renewed")

    def to_json(self) -> bytes:
        return json.dumps({**asdict(self), "started_utc": _utc(self.started), "expires_utc": _utc(self.expires)},
                          indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Holder:
        fields = json.loads(data)
        return cls(str(fields["host"]), int(fields["pid"]), float(fields["started"]), float(fields["expires"]),
                   str(fields["token"]))


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class Lease:
    """The lease on ``output``, held inside ``with``: ``with Lease(output) as lease: ...``.

    Entering takes it (``LeaseHeld`` when another run holds it, or waits when ``wait``); a heartbeat
    thread renews it while the block runs; leaving gives it back. When the lease is taken over
    meanwhile, the block is interrupted (from the main thread) and ``LeaseLost`` raised.
    """

    def __init__(self, output: str, seconds: float = LEASE_SECONDS, wait: bool = False,
                 log: Callable[[str], None] | None = None, on_beat: Callable[[bool], None] | None = None):
        if not seconds > 0:
            raise ValueError(f"a lease lasts more than 0 seconds, got {seconds!r}")
        self.output, self.seconds, self.wait = output, float(seconds), wait
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.on_beat = on_beat or (lambda renewed: None)  # each heartbeat: renewed, or storage unreachable
        self.store = _S3Store(output) if storage.is_s3(output) else _LocalStore(output)
        self.holder = Holder.me(self.seconds)
        self.lost: Holder | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._interrupts_main = False

    def __enter__(self) -> Lease:
        announced = False
        while (other := self.store.acquire(self.holder)) is not None:
            if not self.wait:
                raise LeaseHeld(f"{self.output} is being written by another run ({other.describe()}); let it "
                                "finish, or rerun with --wait-for-lease to start when it has")
            if not announced:
                self.log(f"dualcam: waiting for the run writing {self.output} to end ({other.describe()})")
                announced = True
            time.sleep(POLL_SECONDS)
            self.holder = Holder.me(self.seconds, token=self.holder.token)
        self._interrupts_main = threading.current_thread() is threading.main_thread()
        self._heartbeat = threading.Thread(target=self._beat, name=f"dualcam-lease {self.output}", daemon=True)
        self._heartbeat.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            try:
                self._heartbeat.join()
            except KeyboardInterrupt:  # its interrupt, sent just as the block ended
                if self.lost is None:
                    raise
                self._heartbeat.join()
        if self.lost is None:
            self.store.release(self.holder)
            return
        if kind is None or issubclass(kind, KeyboardInterrupt):
            raise LeaseLost(f"another run took over {self.output} ({self.lost.describe()}) while this one was "
                            "paused past its lease; this run stopped, the other goes on") from None

    def _beat(self) -> None:
        """Renew every third of the lease's duration; after a failure to reach storage, sooner."""
        interval = self.seconds / 3
        while not self._stop.wait(interval):
            renewed = Holder.me(self.seconds, self.holder.started, self.holder.token)
            try:
                taker = self.store.renew(renewed)
            except OSError:
                self.on_beat(False)
                interval = min(self.seconds / 3, 2.0)  # storage unreachable: nobody can take over meanwhile
                continue
            if taker is not None:
                self.lost = taker
                main = threading.main_thread().ident  # set: the main thread is running
                if self._interrupts_main and main is not None:  # a real SIGINT, so that a blocking call returns too
                    signal.pthread_kill(main, signal.SIGINT)
                return
            self.on_beat(True)
            self.holder, interval = renewed, self.seconds / 3


class _S3Store:
    """``_lease.json`` as an S3 object, changed only by conditional PUTs (``storage.put_if``)."""

    def __init__(self, output: str):
        self.uri = storage.join(output, LEASE_FILE)
        self.etag: str | None = None

    def acquire(self, me: Holder) -> Holder | None:
        """Take the lease (None) or say who holds it."""
        for _ in range(10):  # each turn, another run changed the lease between our two requests
            if self._put(me, None):
                return None
            current = self._read()
            if current is None:
                continue  # released in between
            holder, etag = current
            if holder.expires > time.time():
                return holder
            if self._put(me, etag):  # expired: take it over, unless another run just did
                return None
        raise LeaseHeld(f"{self.uri}: the lease keeps changing hands; try again")

    def renew(self, me: Holder) -> Holder | None:
        """None when renewed; the run that took the lease over otherwise."""
        if self._put(me, self.etag) or self._put(me, None):  # gone (say, a store reset): taken again
            return None
        current = self._read()
        return current[0] if current else Holder("unknown", 0, 0.0, 0.0, "")

    def release(self, me: Holder) -> None:
        try:
            current = self._read()
            if current and current[0].token == me.token:
                storage.delete(self.uri)
        except OSError:
            pass  # storage unreachable now: the lease expires by itself

    def _put(self, holder: Holder, etag: str | None) -> bool:
        written = storage.put_if(self.uri, holder.to_json(), etag)
        self.etag = written or self.etag
        return written is not None

    def _read(self) -> tuple[Holder, str] | None:
        found = storage.read_tagged(self.uri)
        return None if found is None else (Holder.from_json(found[0]), found[1])


class _LocalStore:
    """An exclusive ``flock`` on ``_lease.lock``, and ``_lease.json`` saying who holds it."""

    def __init__(self, output: str):
        self.lock = Path(output) / LOCK_FILE
        self.record = Path(output) / LEASE_FILE
        self.fd: int | None = None

    def acquire(self, me: Holder) -> Holder | None:
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        # never deleted: a run that opened it must lock the same file as the others
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return self._read() or Holder("unknown (its record is not written yet)", 0, 0.0, 0.0, "")
        self.fd = fd
        storage.write_bytes(str(self.record), me.to_json())
        return None

    def renew(self, me: Holder) -> Holder | None:
        storage.write_bytes(str(self.record), me.to_json())  # the lock itself lasts as long as the process
        return None

    def release(self, me: Holder) -> None:
        self.record.unlink(missing_ok=True)
        if self.fd is not None:
            os.close(self.fd)  # drops the lock
            self.fd = None

    def _read(self) -> Holder | None:
        try:
            return Holder.from_json(self.record.read_bytes())
        except (OSError, ValueError, KeyError):
            return None
