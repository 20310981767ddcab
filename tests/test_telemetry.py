"""dualcam's counters: what ``count_rows`` adds to Ray's (the export itself is scraped in tests/test_jobs.py)."""

import pyarrow as pa

from dualcam.distributed import telemetry


class Recorded:
    """A counter that keeps what it was given: Ray's registers with a running Ray, which this test does not need."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, ...], float] = {}

    def inc(self, value: float, tags: dict[str, str]) -> None:
        key = tuple(sorted(tags.items()))
        self.counts[key] = self.counts.get(key, 0) + value


def test_rows_are_counted_by_status_and_error_kind_and_passed_on_unchanged(monkeypatch):
    counter = Recorded()
    monkeypatch.setattr(telemetry, "_counter", lambda *_: counter)
    batch = pa.table({"status": ["ok", "error", "ok", "error", "error"],
                      "error_kind": [None, "transient", None, "permanent", "transient"]})
    assert telemetry.count_rows(batch, "drift") is batch
    assert counter.counts == {
        (("error_kind", "none"), ("kind", "drift"), ("status", "ok")): 2,
        (("error_kind", "transient"), ("kind", "drift"), ("status", "error")): 2,
        (("error_kind", "permanent"), ("kind", "drift"), ("status", "error")): 1,
    }
