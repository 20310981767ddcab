"""The summary of a drift output folder: ``_drift.json`` for machines.

Reads the rows of every run into the folder (no Ray), so a resumed run or another threshold
summarizes the whole folder, and rewrites the summary beside the rows.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict
from typing import Any

import pyarrow.compute as pc

from dualcam import drift, storage
from dualcam.results import DRIFT, read_results, read_run_spec

SUMMARY_FILE = "_drift.json"
LISTED = ("p_old", "p_new", "gained_peak_x", "gained_peak_y")
"""Per-image values listed with the measures for each of the most drifted images."""


def summarize(
    output: str, threshold: float = drift.DRIFT_THRESHOLD, max_drift_share: float = drift.MAX_DRIFT_SHARE,
    top_k: int = drift.TOP_K,
) -> dict[str, Any]:
    """Summarize the drift rows in ``output`` and write them to ``<output>/_drift.json``; returns that content.

    ``alert`` is true when the share of drifted images (``drift.PRIMARY_MEASURE`` below
    ``threshold``) exceeds ``max_drift_share``.
    """
    spec = read_run_spec(output)
    if spec is None or spec.kind != DRIFT.kind:
        raise ValueError(f"{output} holds no drift results" + (f" ({spec.describe()})" if spec else ""))
    table = read_results(output, ["uri", "status", *drift.MEASURES, *LISTED])
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    rows = {name: ok.column(name).to_numpy(zero_copy_only=False) for name in ("uri", *drift.MEASURES, *LISTED)}
    stats = drift.summarize(rows, threshold, top_k)
    old, new = (asdict(e) for e in spec.experts)
    summary = {
        "kind": DRIFT.kind, "output": output, "old": old, "new": new, "alpha": spec.alpha,
        "primary_measure": drift.PRIMARY_MEASURE, "threshold": threshold,
        "drifted_when": f"{drift.PRIMARY_MEASURE} < {threshold:g}",
        "max_drift_share": max_drift_share, "alert": stats["drifted_share"] > max_drift_share,
        "errors": table.num_rows - ok.num_rows, **stats,
        "created_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    storage.write_bytes(storage.join(output, SUMMARY_FILE), json.dumps(summary, indent=2).encode())
    return summary
