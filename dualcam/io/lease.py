"""One writer per output: the lease a run holds on its output folder (local or s3://) while it lives.

Two runs into one output would each score every input the other has not written yet, and the
output would hold those inputs twice. So a run takes its output's lease before it looks at what
is done, and holds it to its end; a second run is refused (``LeaseHeld``, naming the holder: host,
pid, when it started, when its lease expires, how long since its heartbeat, and whether it is a
stopped process of this host) or, with ``wait=True``, waits for the lease to be free.

The lease is ``_lease.json`` in the output (names starting with ``_`` are not data): the holder and
``expires``. A heartbeat thread renews it every third of its duration (``LEASE_SECONDS``), so it
expires only when its run is gone:

- **S3**: ``_lease.json`` is created with a conditional PUT (``If-None-Match: *``): of two runs
  starting at once, one creates it and the other gets 412 Precondition Failed. Renewing, and taking
  over a lease that expired (its driver was killed), are PUTs with ``If-Match`` on the ETag last
  seen, so of two runs taking over at once only one wins; giving it back is a DELETE with
  ``If-Match``, so a run never deletes a lease another has taken. Whether a lease expired is judged
  on the store's clock (the object's age: the response's ``Date`` less its ``Last-Modified``), so
  the hosts' clocks need not agree. A run whose conditional request failed although its own write
  went through (a lost response, retried; a 409 conflict) finds its own token in the lease and goes
  on. A renewal never creates the lease again: once another run has taken it, this run has lost it,
  even after that run gave it back. The store must support conditional writes and deletes (AWS S3
  does since 2024, as do MinIO and moto).
- **Local** (and shared file systems): ``_lease.lock`` is held with an exclusive ``flock`` for the
  run's life. The kernel drops it the moment the process dies, so the rerun of a killed driver goes
  on at once; ``_lease.json`` only tells others who holds it, and when its heartbeat last renewed it. A
  driver that is stopped (SIGSTOP, Ctrl-Z) keeps the lock: a waiting run says so, and how to resume or end
  it, but never takes a lock the kernel says is held.

A run that finds its lease taken (its driver was paused past the expiry and another run took the
output over), or that could not renew it for a whole lease (its driver cut off from the store while
others may not be), has lost it: it stops with ``LeaseLost``, and ``still_held`` raises it, which
is what keeps what its workers still write from ever being published (``dualcam.io.staging``).
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
    """For people: when the lease expires unless renewed, on the holder's clock (runs judge on the store's)."""
    token: str
    seconds: float = LEASE_SECONDS
    """How long the lease lasts from its last write unless renewed."""

    @classmethod
    def me(cls, seconds: float, started: float | None = None, token: str | None = None) -> Holder:
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), started or now, now + seconds, token or secrets.token_hex(8),
                   seconds)

    def describe(self) -> str:
        """Who holds the lease and how long since its heartbeat renewed it (on the holder's clock, as ``expires``);
        a holder stopped on this host is named so, since a stopped process keeps a local lease forever."""
        if not self.expires:  # no record yet
            return f"held by host {self.host}"
        text = (f"held by host {self.host}, pid {self.pid}, started {_utc(self.started)}, "
                f"lease expires {_utc(self.expires)} unless renewed; last renewed {self.renewed_ago():.0f} s ago")
        if self.stopped_here():
            text += (f"; pid {self.pid} on this host is stopped (SIGSTOP); resume it with kill -CONT {self.pid} "
                     "or end it")
        return text

    def renewed_ago(self) -> float:
        """Seconds since the holder last wrote its record (its heartbeat), on the holder's clock; 0 at the least."""
        return max(0.0, time.time() - (self.expires - self.seconds))

    def stopped_here(self) -> bool:
        """Whether the holder is a process of this host in the stopped state (SIGSTOP, or held by a debugger):
        its heartbeat stops, but its flock on a local lease lasts until it is resumed or ended."""
        if self.host != socket.gethostname() or self.pid <= 0:
            return False
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:  # gone, or no /proc (not Linux)
            return False
        fields = stat.rsplit(")", 1)[-1].split()  # after "pid (command)", which may hold spaces and parentheses
        return bool(fields) and fields[0] in ("T", "t")

    def to_json(self) -> bytes:
        return json.dumps({**asdict(self), "started_utc": _utc(self.started), "expires_utc": _utc(self.expires)},
                          indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Holder:
        fields = json.loads(data)
        return cls(str(fields["host"]), int(fields["pid"]), float(fields["started"]), float(fields["expires"]),
                   str(fields.get("token", "")), float(fields.get("seconds", LEASE_SECONDS)))


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class Lease:
    """The lease on ``output``, held inside ``with``: ``with Lease(output) as lease: ...``.

    Entering takes it (``LeaseHeld`` when another run holds it, or waits when ``wait``); a heartbeat
    thread renews it while the block runs; leaving gives it back. When the lease is lost meanwhile,
    the block is interrupted (from the main thread, when it runs there) and ``LeaseLost`` raised;
    ``still_held`` asks the store itself, for what must not happen unless this run holds the lease.
    """

    def __init__(self, output: str, seconds: float = LEASE_SECONDS, wait: bool = False,
                 log: Callable[[str], None] | None = None, wait_timeout: float | None = None,
                 on_beat: Callable[[bool], None] | None = None):
        if not seconds > 0:
            raise ValueError(f"a lease lasts more than 0 seconds, got {seconds!r}")
        self.output, self.seconds, self.wait, self.wait_timeout = output, float(seconds), wait, wait_timeout
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.on_beat = on_beat or (lambda renewed: None)  # each heartbeat: renewed, or storage unreachable
        self.store = _S3Store(output) if storage.is_s3(output) else _LocalStore(output)
        self.holder = Holder.me(self.seconds)
        self.lost: str | None = None
        """Why this run no longer holds the lease, once it does not."""
        self._stop = threading.Event()
        self._renewing = threading.Lock()  # the heartbeat and still_held: one conditional request at a time
        self._heartbeat: threading.Thread | None = None
        self._interrupts_main = False

    def __enter__(self) -> Lease:
        announced: tuple[str, bool, bool] | None = None
        waiting_since = time.monotonic()
        while (other := self.store.acquire(self.holder)) is not None:
            if not self.wait:
                raise LeaseHeld(f"{self.output} is being written by another run ({other.describe()}); let it "
                                "finish, or rerun with --wait-for-lease to start when it has")
            if self.wait_timeout is not None and time.monotonic() - waiting_since > self.wait_timeout:
                raise LeaseHeld(f"{self.output} is still being written by another run after waiting "
                                f"{self.wait_timeout:g} s (--lease-wait-timeout): {other.describe()}")
            # said again when the holder changes, stops, or its heartbeat falls silent for a whole lease
            state = (other.token, other.stopped_here(), other.renewed_ago() > other.seconds)
            if state != announced:
                self.log(f"dualcam: waiting for the run writing {self.output} to end ({other.describe()})")
                announced = state
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
            raise LeaseLost(self.lost) from None

    def still_held(self) -> None:
        """Renew the lease now, with a conditional request to the store; ``LeaseLost`` when this run has lost it."""
        if self.lost is None:
            self._renew()
        if self.lost is not None:
            raise LeaseLost(self.lost)

    def _renew(self) -> None:
        """One renewal; records the loss (``lost``) when another run holds the lease. OSError when the
        store cannot be reached."""
        with self._renewing:
            renewed = Holder.me(self.seconds, self.holder.started, self.holder.token)
            taker = self.store.renew(renewed)
            if taker is None:
                self.holder = renewed
            elif self.lost is None:
                self.lost = (f"another run took over {self.output} ({taker.describe()}) while this one was paused "
                             "past its lease; this run stopped, the other goes on")

    def _beat(self) -> None:
        """Renew every third of the lease's duration; after a failure to reach storage, sooner. A run that
        cannot renew for a whole lease has lost it: another run may have taken the output over meanwhile."""
        interval, unreachable_since = self.seconds / 3, None
        while self.lost is None and not self._stop.wait(interval):
            try:
                self._renew()
                self.on_beat(self.lost is None)
                interval, unreachable_since = self.seconds / 3, None
            except OSError as err:
                self.on_beat(False)
                unreachable_since = unreachable_since or time.monotonic()
                interval = min(self.seconds / 3, 2.0)
                if time.monotonic() - unreachable_since > self.seconds:
                    self.lost = (f"this run could not renew its lease on {self.output} for more than "
                                 f"{self.seconds:g} s ({err}); another run may have taken it over, so this one stopped")
        main = threading.main_thread().ident  # set: the main thread is running
        if self.lost is not None and self._interrupts_main and main is not None:
            signal.pthread_kill(main, signal.SIGINT)  # a real SIGINT, so that a blocking call returns too


class _S3Store:
    """``_lease.json`` as an S3 object, changed only by conditional requests (``storage.put_if``, ``delete_if``)."""

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
            holder, tagged = current
            if holder.token == me.token:  # our own write went through; its answer was lost
                self.etag = tagged.etag
                return None
            if tagged.age <= holder.seconds + 1:  # the store's clock (to the second): the hosts' need not agree
                return holder
            if self._put(me, tagged.etag):  # expired: take it over, unless another run just did
                return None
        raise LeaseHeld(f"{self.uri}: the lease keeps changing hands; try again")

    def renew(self, me: Holder) -> Holder | None:
        """None when renewed; the run that took the lease over otherwise. Never creates the lease again."""
        if self._put(me, self.etag):
            return None
        current = self._read()
        if current is not None and current[0].token == me.token:  # renewed, but the answer was lost
            self.etag = current[1].etag
            return None
        return current[0] if current else Holder("none now (the run that took it over has given it back)", 0,
                                                 0.0, 0.0, "")

    def release(self, me: Holder) -> None:
        try:
            if self.etag is not None:
                storage.delete_if(self.uri, self.etag)  # not if another run has taken it since
        except OSError:
            pass  # storage unreachable now: the lease expires by itself

    def _put(self, holder: Holder, etag: str | None) -> bool:
        written = storage.put_if(self.uri, holder.to_json(), etag)
        self.etag = written or self.etag
        return written is not None

    def _read(self) -> tuple[Holder, storage.Tagged] | None:
        found = storage.read_tagged(self.uri)
        return None if found is None else (Holder.from_json(found.data), found)


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
