"""Fenced writes to S3: a run's rows become visible only when published by a run that still holds the lease.

On S3 a run that was paused past its lease (a SIGSTOPped driver, a frozen VM) has lost the output to
another run, but its Ray workers do not know that and go on writing. So they write nowhere a reader
looks: under ``_staging/<token>/`` in the output (names starting with ``_`` are not data for pyarrow,
pandas or DuckDB), ``token`` being the lease's. The driver's ``Publisher`` moves each file into the
output (a server-side copy, whole, then a delete) every ``PUBLISH_SECONDS`` while the run writes and
once at its end, each file right after asking the store whether this run still holds the lease
(``Lease.still_held``, a conditional PUT). A run that lost its lease publishes nothing more; what it
had staged stays hidden until the next run that takes the lease deletes it (``clear``). The window
left is one copy request: a driver paused between the store's answer and its copy, past its lease,
publishes that one file late.

A local output needs none of this: its lease is a ``flock`` the kernel holds as long as the driver
lives, paused or not, so no other run can take it over meanwhile; its files are written in place.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from dualcam.io import storage
from dualcam.io.lease import LeaseLost

STAGING = "_staging"
PUBLISH_SECONDS = 2.0
"""How often staged files are published while a run writes: what a killed driver's run loses at most."""


def clear(output: str) -> int:
    """Delete what earlier runs left staged in ``output`` (run under the lease, before writing); how many."""
    if not storage.is_s3(output):
        return 0
    staged = _listed(storage.join(output, STAGING))
    for uri in staged:
        storage.delete(uri)
    return len(staged)


@contextmanager
def fenced(output: str, token: str, still_held: Callable[[], None]) -> Iterator[str]:
    """The folder a run's workers write into while inside: ``output`` itself when local; on S3 the
    run's staging folder, published into ``output`` as it fills and at the end (``Publisher``)."""
    if not storage.is_s3(output):
        yield output
        return
    with Publisher(storage.join(output, STAGING, token), output, still_held) as publisher:
        yield publisher.staged


class Publisher:
    """Moves the files under ``staged`` into ``output``, each only after ``still_held()`` returned, in a
    thread every ``PUBLISH_SECONDS`` and once more on leaving, however the block ends (what a run staged
    while it held the lease is its work; that pass's errors are raised when the block itself raised none)."""

    def __init__(self, staged: str, output: str, still_held: Callable[[], None]):
        self.staged, self.output, self.still_held = staged, output, still_held
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dualcam-publish {output}", daemon=True)

    def __enter__(self) -> Publisher:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self._stop.set()
        self._thread.join()
        if kind is None:
            self.publish()  # the last files; LeaseLost if the lease went meanwhile
            return
        with contextlib.suppress(LeaseLost, OSError):  # the block's own error is the one raised
            self.publish()  # what stays staged, the next run clears

    def _run(self) -> None:
        while not self._stop.wait(PUBLISH_SECONDS):
            try:
                self.publish()
            except LeaseLost:
                return  # nothing more is published; the last pass says why
            except OSError:
                continue  # storage unreachable for now: the next turn, or the last pass, tries again

    def publish(self) -> None:
        """One pass: every complete staged file into the output."""
        for uri in _listed(self.staged):
            self.still_held()
            storage.move(uri, storage.join(self.output, uri[len(self.staged):].lstrip("/")))


def _listed(prefix: str) -> list[str]:
    """The objects under ``prefix`` (none when it is absent)."""
    try:
        return storage.list_files(prefix)
    except FileNotFoundError:
        return []
