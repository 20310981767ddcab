"""dualcam's own counters in Ray's metrics (``ray.util.metrics``), exported wherever Ray exports its own: each
node's metrics port (``--metrics-export-port``; 8080, named ``metrics``, on KubeRay), which Prometheus scrapes
(cluster/kuberay/podmonitor.yaml; queries in docs/cluster.md). As Prometheus names them (Ray adds the ``ray_``
prefix, Prometheus a counter's ``_total``):

- ``ray_dualcam_rows_scored_total{kind, status, error_kind}``: result rows scored, ``kind`` score or drift,
  ``status`` ok or error (the row's input could not be read, decoded or scored), ``error_kind`` of an error row
  transient (a later run retries it) or permanent, ``none`` for an ok row;
- ``ray_dualcam_lease_renewals_total{result}``: the output lease's heartbeats (``dualcam.io.lease``): renewed, or
  failed (its storage unreachable; after a lease's worth of failures another run may take the output over).

A counter is counted in the process that sees the event: rows in Ray Data's workers, the lease in the driver.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from ray.util.metrics import Counter

ROWS_SCORED = "dualcam_rows_scored"
LEASE_RENEWALS = "dualcam_lease_renewals"


@functools.cache
def _counter(name: str, description: str, tags: tuple[str, ...]) -> Counter:
    """This process's counter ``name`` (Ray registers a metric once per process)."""
    from ray.util.metrics import Counter

    return Counter(name, description=description, tag_keys=tags)


def count_rows(batch: pa.Table, kind: str) -> pa.Table:
    """A Ray Data step after scoring: count ``batch``'s rows by ``status`` and ``error_kind``, and pass the batch
    on as it is."""
    rows = _counter(ROWS_SCORED, "result rows scored, by kind (score, drift), status (ok, error) and error kind "
                    "(transient, permanent, none)", ("kind", "status", "error_kind"))
    keys = pc.binary_join_element_wise(batch.column("status"), pc.fill_null(batch.column("error_kind"), "none"), "/")
    for entry in pc.value_counts(keys).to_pylist():
        status, error_kind = str(entry["values"]).split("/")
        rows.inc(entry["counts"], tags={"kind": kind, "status": status, "error_kind": error_kind})
    return batch


def lease_beat(renewed: bool) -> None:
    """Count one heartbeat of an output's lease (``Lease(on_beat=...)``), once this process has joined Ray."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        _counter(LEASE_RENEWALS, "heartbeats of an output's lease: renewed, or failed (its storage unreachable)",
                 ("result",)).inc(1, tags={"result": "renewed" if renewed else "failed"})
