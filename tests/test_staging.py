"""Fenced writes on S3 (moto): staged files reach the output only while the run holds its lease. No Ray."""

import time

import pytest

from dualcam.io import staging, storage
from dualcam.io.lease import Lease, LeaseLost
from dualcam.io.results import data_files


def stage(folder: str, n: int) -> list[str]:
    names = [f"part-{i}.parquet" for i in range(n)]
    for name in names:
        storage.write_bytes(storage.join(folder, name), b"PAR1 rows PAR1")
    return names


def test_staged_files_are_published_one_check_each_and_hidden_until_then(s3_bucket, observed):
    output, checks = f"{s3_bucket}/out", []
    with Lease(output) as lease:
        def checked() -> None:
            checks.append(time.perf_counter())
            lease.still_held()

        with staging.fenced(output, lease.holder.token, checked) as into:
            assert into == f"{output}/_staging/{lease.holder.token}"
            names = stage(into, 6)
            assert data_files(output) == []  # staged: no reader sees them yet
        published = time.perf_counter()
    assert sorted(data_files(output)) == [f"{output}/{name}" for name in names]
    assert storage.list_files(f"{output}/_staging") == [] and len(checks) >= 6
    window = max(b - a for a, b in zip(checks, [*checks[1:], published]))
    observed("a lease check, then one copy and delete per file", files=6, longest_window_ms=round(window * 1000))


def test_a_run_that_lost_its_lease_publishes_nothing_and_the_next_clears_its_leftovers(s3_bucket):
    output = f"{s3_bucket}/out"

    def lost() -> None:
        raise LeaseLost("another run took over")

    with pytest.raises(LeaseLost), staging.fenced(output, "stale", lost) as into:
        stage(into, 3)
    assert data_files(output) == [] and len(storage.list_files(f"{output}/_staging/stale")) == 3
    assert staging.clear(output) == 3 and storage.list_files(f"{output}/_staging") == []


def test_a_local_output_is_written_in_place(tmp_path):
    with staging.fenced(str(tmp_path), "token", lambda: None) as into:
        assert into == str(tmp_path)
    assert staging.clear(str(tmp_path)) == 0
