"""One writer per output: the lease, held by real processes, locally and on S3 (moto), refused, waited for,
expired after a SIGKILL, and lost after a pause. No Ray."""

import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from dualcam.io import lease, storage
from dualcam.io.lease import LEASE_FILE, Holder, Lease, LeaseHeld

HOLD = """
import sys
from dualcam.commands.common import exit_status
from dualcam.io.lease import Lease

def run():
    with Lease(sys.argv[1], seconds=float(sys.argv[2])):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes it
    return 0

sys.exit(exit_status(run))
"""


def hold(output: str, seconds: float = 60) -> subprocess.Popen:
    """A process that takes the lease on ``output`` and holds it until its stdin is closed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, output, str(seconds)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n", holder.stderr.read()
    return holder


def finish(holder: subprocess.Popen) -> tuple[int, str]:
    holder.stdin.close()
    return holder.wait(60), holder.stderr.read()


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_bucket") + "/out"


def test_a_second_run_is_refused_naming_the_holder_until_the_first_ends(output):
    holder = hold(output)
    recorded = Holder.from_json(storage.read_bytes(storage.join(output, LEASE_FILE)))
    assert (recorded.host, recorded.pid) == (socket.gethostname(), holder.pid)
    pattern = (rf"{output} is being written by another run \(held by host {socket.gethostname()}, pid {holder.pid}, "
               r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, lease expires .* UTC unless renewed; last renewed \d+ s "
               r"ago\); .*--wait-for-lease")
    with pytest.raises(LeaseHeld, match=pattern), Lease(output):
        pass
    assert finish(holder) == (0, "")
    assert not storage.exists(storage.join(output, LEASE_FILE))  # given back
    with Lease(output) as taken:
        assert Holder.from_json(storage.read_bytes(storage.join(output, LEASE_FILE))).token == taken.holder.token


def test_a_waiting_run_starts_when_the_holder_ends(output, monkeypatch):
    monkeypatch.setattr(lease, "POLL_SECONDS", 0.2)
    holder = hold(output)
    said = []
    ended = []

    def end_holder_once_waiting(line: str) -> None:
        said.append(line)
        ended.append(finish(holder))  # the holder ends while this run waits

    with Lease(output, wait=True, log=end_holder_once_waiting):
        assert ended == [(0, "")]
    assert len(said) == 1 and f"waiting for the run writing {output} to end (held by host" in said[0]


def test_a_killed_drivers_lease_frees_at_once_locally_and_at_its_expiry_on_s3(output, monkeypatch):
    monkeypatch.setattr(lease, "POLL_SECONDS", 0.2)
    holder = hold(output, seconds=3)
    expires = Holder.from_json(storage.read_bytes(storage.join(output, LEASE_FILE))).expires
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    if not storage.is_s3(output):  # the kernel dropped the lock with the process
        with Lease(output):
            return
    with pytest.raises(LeaseHeld, match=f"pid {holder.pid}"), Lease(output):
        pass
    with Lease(output, wait=True, log=lambda line: None) as taken:
        assert time.time() >= expires  # taken over once it had expired, not before
        assert storage.read_tagged(storage.join(output, LEASE_FILE))[0] == taken.holder.to_json()


def test_a_run_paused_past_its_lease_stops_when_another_has_taken_over(s3_bucket):
    output = f"{s3_bucket}/out"
    holder = hold(output, seconds=2)
    holder.send_signal(signal.SIGSTOP)  # a driver paused (SIGSTOP, a frozen VM) longer than its lease
    expires = Holder.from_json(storage.read_bytes(storage.join(output, LEASE_FILE))).expires
    time.sleep(max(0.0, expires - time.time()) + 2.5)  # expired on the store's clock, to the second
    with Lease(output, seconds=30) as taken:
        holder.send_signal(signal.SIGCONT)  # it renews, finds the lease taken, and stops its run
        status = holder.wait(120)  # a renewal away, then its exit: generous for a loaded machine
        stderr = holder.stderr.read()
        assert status == 1, stderr
        assert stderr.startswith(f"dualcam: error: another run took over {output} (held by host "), stderr
        assert stderr.count("\n") == 1 and "full traceback: " in stderr
        assert storage.read_tagged(storage.join(output, LEASE_FILE))[0] == taken.holder.to_json()  # untouched


def test_conditional_puts_are_compare_and_swap(s3_bucket):
    uri = f"{s3_bucket}/cas"
    first = storage.put_if(uri, b"1", None)
    assert first and storage.put_if(uri, b"2", None) is None  # exists already
    second = storage.put_if(uri, b"2", first)
    assert second and storage.put_if(uri, b"3", first) is None  # a stale ETag
    assert storage.read_tagged(uri)[:2] == (b"2", second)
    assert storage.read_tagged(f"{s3_bucket}/nothing") is None


class _ClockAhead:
    """``time`` for the lease module of a host whose clock runs ``ahead`` seconds fast."""

    def __init__(self, ahead: float):
        self.ahead = ahead

    def time(self) -> float:
        return time.time() + self.ahead

    def __getattr__(self, name: str):
        return getattr(time, name)


def test_a_taker_whose_clock_runs_ahead_does_not_take_a_live_lease(s3_bucket, monkeypatch):
    output = f"{s3_bucket}/out"
    holder = hold(output, seconds=60)
    monkeypatch.setattr(lease, "time", _ClockAhead(120))  # by its own clock the holder's lease expired a minute ago
    with pytest.raises(LeaseHeld, match=f"pid {holder.pid}"), Lease(output):
        pass
    assert finish(holder) == (0, "")


def test_a_renewal_whose_answer_was_lost_is_recognized_as_this_runs_own(s3_bucket):
    output = f"{s3_bucket}/out"
    with Lease(output, seconds=30) as held:
        uri = storage.join(output, LEASE_FILE)
        # the renewal went through, its answer did not come back: the store has a new ETag this run never saw
        assert storage.put_if(uri, Holder.me(30, held.holder.started, held.holder.token).to_json(), held.store.etag)
        held.still_held()  # finds its own token: renewed, not lost
        assert held.lost is None


def _expire(seconds: float) -> None:
    """Wait until a lease of ``seconds`` written now has expired on the store's clock (to the second)."""
    time.sleep(seconds + 2.5)


def test_a_stale_holder_neither_takes_back_a_released_lease_nor_deletes_anothers(s3_bucket):
    uri = f"{s3_bucket}/out/{LEASE_FILE}"
    stale, stale_me = lease._S3Store(f"{s3_bucket}/out"), Holder.me(1)
    assert stale.acquire(stale_me) is None
    _expire(1)  # its driver paused past its lease
    taker, taker_me = lease._S3Store(f"{s3_bucket}/out"), Holder.me(30)
    assert taker.acquire(taker_me) is None
    stale.release(stale_me)  # a conditional delete: the taker's lease stays
    assert Holder.from_json(storage.read_tagged(uri).data).token == taker_me.token
    taker.release(taker_me)
    assert stale.renew(stale_me).host.startswith("none now")  # lost, even with the lease free
    assert storage.read_tagged(uri) is None


def test_a_waiting_run_gives_up_after_its_timeout(output, monkeypatch):
    monkeypatch.setattr(lease, "POLL_SECONDS", 0.2)
    holder = hold(output)  # locally: a lease that lasts as long as its process, paused or not
    started = time.monotonic()
    with pytest.raises(LeaseHeld, match=rf"still being written by another run after waiting 1 s .*pid {holder.pid}"), \
            Lease(output, wait=True, log=lambda line: None, wait_timeout=1):
        pass
    assert 1 <= time.monotonic() - started < 10
    assert finish(holder) == (0, "")


def process_state(pid: int) -> str:
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads a process's state in /proc")
def test_a_stopped_holder_is_named_with_its_silent_heartbeat_and_its_lock_is_not_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "POLL_SECONDS", 0.2)
    output = str(tmp_path / "out")
    holder = hold(output, seconds=1)  # renews every third of a second while it runs
    try:
        holder.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while process_state(holder.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # past a whole lease without a heartbeat
        stopped = (rf"last renewed [1-9]\d* s ago; pid {holder.pid} on this host is stopped \(SIGSTOP\); resume it "
                   rf"with kill -CONT {holder.pid} or end it")
        with pytest.raises(LeaseHeld, match=rf"being written by another run \(held by host .*{stopped}\); let it"), \
                Lease(output):
            pass
        said: list[str] = []
        with pytest.raises(LeaseHeld, match=rf"after waiting 1 s .*{stopped}"), \
                Lease(output, wait=True, log=said.append, wait_timeout=1):
            pass
        assert len(said) == 1 and "is stopped (SIGSTOP)" in said[0]
        holder.send_signal(signal.SIGCONT)
        record = storage.join(output, LEASE_FILE)
        deadline = time.monotonic() + 10
        while Holder.from_json(storage.read_bytes(record)).renewed_ago() > 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)  # until its heartbeat renews the lease again
        with pytest.raises(LeaseHeld) as refused, Lease(output):
            pass
        assert "is stopped" not in str(refused.value) and re.search(r"last renewed [01] s ago\)", str(refused.value))
        assert finish(holder) == (0, "")
    finally:
        holder.send_signal(signal.SIGCONT)
        holder.kill()
        holder.wait(60)
