"""The Ray layer for scoring archives: Ray Data plumbing around ``dualcam.scoring.scorers``.

Like the rest of the Ray layer (``dualcam.distributed``), the only code that imports Ray, it does so
inside functions only (type names aside), so that ``import dualcam`` works where Ray is absent. Its
options are one ``ArchiveOptions`` (``dualcam.scoring.archive_options``). The pipeline reads top to bottom::

    from_arrow(uris) -> map_batches(load_images)                   read + decode + preprocess, CPU
                     -> map_batches(DualScorer, ActorPoolStrategy)  both experts, GPU if any
                     -> map_batches(count_rows)                     rows counted in Ray's metrics (telemetry)
                     -> write_parquet(output)                         on S3 staged, published under the lease

On a CPU-only cluster both map steps take the same resources, so Ray fuses them into one actor
per CPU, each loading and scoring on one torch thread (``planning.plan_placement`` says why). With
GPUs, one actor per GPU holds both experts, and loading runs in CPU tasks beside the actors, on
every CPU they leave: those tasks only read the JPEGs, which each actor decodes in batches on its
GPU (``device_decode``), and decode the rest (PNG, DICOM, the JPEGs nvJPEG handles badly) with
``imaging.model_input`` as on CPU clusters.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from dualcam.distributed import telemetry
from dualcam.distributed.connect import connect
from dualcam.distributed.crash_ledger import crash_ledger
from dualcam.distributed.request_gate import request_gate
from dualcam.io import errorlog, staging, storage
from dualcam.io.checkpoints import ExpertMeta, load_meta, resolve_expert
from dualcam.io.inputs import Inputs, read_inputs, skipped_files
from dualcam.io.lease import Lease
from dualcam.io.results import (
    RUN_FILE,
    RunSpec,
    check_passthrough,
    data_files,
    drop_rows_to_redo,
    duplicate_rows,
    read_results,
    read_run_spec,
    repeat_message,
)
from dualcam.maps import drift_measures
from dualcam.reports import drift_page
from dualcam.scoring import planning
from dualcam.scoring.archive_options import MAX_ERROR_FRACTION, ArchiveOptions
from dualcam.scoring.scorers import DriftScorer, DualScorer, PairScorer, load_images

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.data import Dataset


@dataclass
class ScoreSummary:
    """What a scoring run did. ``ok``/``errors`` count the rows of the whole output folder; ``run_ok`` and
    ``run_errors`` those of the inputs this run scored, which alone decide whether it failed (an
    outage a later run healed is history, not this run's failure); ``missing`` how many of this run's
    inputs are not in the output at all; ``repeated`` the output's rows whose input is on another row
    too (0 unless two runs once wrote into it at the same time)."""

    output: str
    inputs: int
    already_done: int
    scored_now: int
    ok: int
    errors: int
    seconds: float
    first_error: str | None = None
    """This run's first error row's reason."""
    skipped: pa.ChunkedArray = field(default_factory=lambda: pa.chunked_array([], pa.string()))
    """Inputs left out: files whose names are not images', instances of other modalities (``Inputs.skipped``)."""
    skipped_because: str = ""
    repeated: int = 0
    run_ok: int = 0
    run_errors: int = 0
    missing: int = 0
    first_missing: str | None = None

    @classmethod
    def of(cls, output: str, inputs: Inputs, already_done: int, scored: pa.Array, rows: pa.Table,
           seconds: float) -> ScoreSummary:
        """The summary of a run that set out to score the inputs ``scored`` (URIs), from the output's
        ``uri``, ``status`` and ``error`` columns (``rows``) read back after it wrote."""
        mine = rows.filter(pc.is_in(rows.column("uri"), value_set=scored))
        run_errors = mine.filter(pc.equal(mine.column("status"), "error"))
        missing = scored.filter(pc.invert(pc.is_in(scored, value_set=rows.column("uri"))))
        folder_errors = pc.sum(pc.equal(rows.column("status"), "error")).as_py() or 0
        return cls(
            output=output, inputs=inputs.table.num_rows, already_done=already_done, scored_now=len(scored),
            ok=rows.num_rows - folder_errors, errors=folder_errors, seconds=seconds,
            first_error=run_errors.column("error")[0].as_py() if run_errors.num_rows else None,
            skipped=inputs.skipped, skipped_because=inputs.skipped_because, repeated=duplicate_rows(rows),
            run_ok=mine.num_rows - run_errors.num_rows, run_errors=run_errors.num_rows,
            missing=len(missing), first_missing=missing[0].as_py() if len(missing) else None,
        )

    @property
    def images_per_second(self) -> float:
        return self.scored_now / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_fraction(self) -> float:
        """The share of this run's inputs that failed."""
        return self.run_errors / max(1, self.run_ok + self.run_errors)

    def failure(self, max_error_fraction: float = MAX_ERROR_FRACTION) -> str | None:
        """Why this run counts as failed, or None: an output that holds an input more than once, an input
        this run scored that the output does not hold, none of this run's inputs scored, or more than
        ``max_error_fraction`` of them failed."""
        if self.repeated:
            return repeat_message(self.repeated, self.output)
        if self.missing:
            why = ("were they deleted from it while this run wrote? a rerun scores them again"
                   if storage.is_s3(self.output) else "were they written where this driver cannot read? a cluster "
                   "of several machines needs an --output they all share, such as s3://")
            return (f"{self.missing} of the {self.scored_now} inputs this run scored are not in {self.output}, "
                    f"e.g. {self.first_missing} ({why})")
        if self.run_errors and not self.run_ok:
            return f"none of the {self.run_errors} inputs of this run could be scored; first error: {self.first_error}"
        if self.error_fraction > max_error_fraction:
            return (f"{self.run_errors} of {self.run_ok + self.run_errors} inputs of this run failed "
                    f"({self.error_fraction:.1%}), more than the allowed {max_error_fraction:.1%}; "
                    f"first error: {self.first_error}")
        return None

    def line(self) -> str:
        skipped = skipped_files(self.skipped, self.skipped_because)
        repeated = f" ({self.repeated} rows repeat an input)" if self.repeated else ""
        return (f"scored {self.scored_now} images in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s): "
                f"{self.run_ok} ok, {self.run_errors} errors; {self.already_done} already done; "
                f"{skipped + '; ' if skipped else ''}"
                f"output holds {self.ok} ok, {self.errors} errors{repeated}; results in {self.output}")


@dataclass
class DriftSummary:
    """What a drift run did: the pass itself (``run``) and the summary of its whole output folder
    (``report``, the content of ``_drift.json``)."""

    run: ScoreSummary
    report: drift_page.DriftReport

    @property
    def drifted_share(self) -> float:
        return self.report["drifted_share"]

    @property
    def alert(self) -> bool:
        """True when more than ``max_drift_share`` of the images drifted."""
        return self.report["alert"]

    def line(self) -> str:
        r = self.report
        medians = ", ".join(f"{name} {r['measures'][name]['median']:.3g}" for name in drift_measures.MEASURES
                            if r["measures"][name]["median"] is not None)
        return (f"drift: {r['drifted']} of {r['images']} images drifted ({self.drifted_share:.1%}; "
                f"{r['drifted_when']}), {'more' if self.alert else 'not more'} than the allowed "
                f"{r['max_drift_share']:.1%}; medians: {medians or 'none'}; "
                f"summary in {storage.join(self.run.output, drift_page.SUMMARY_FILE)}, page {r['page']}")


def score_archive(
    c1: str, c2: str, input: str, output: str, options: ArchiveOptions | None = None, **overrides: Any,
) -> ScoreSummary:
    """Score every image under ``input`` with experts ``c1`` (class of interest) and ``c2``; Parquet to ``output``.

    ``options`` (``ArchiveOptions``; its defaults when None), with any of its fields given as
    keywords instead or on top (``alpha=15, progress=False``).
    An expert may be a checkpoint or a folder of versions (``train``'s ``<output>/<class>/``),
    whose latest version is used; the results record which.
    Rerunning into the same ``output`` skips inputs already there, so a killed run resumes
    where it stopped; inputs whose rows are transient errors (``results.TRANSIENT``: no answer,
    throttling, a server or device error) are tried again, and with ``retry_errors`` every error row.
    The output may only ever hold results of one pair of experts and one alpha. Raises before any work
    for unusable options, experts or inputs; bad images become error rows.
    """
    return run_archive(DualScorer, c1, c2, input, output, _with(options, overrides))


def drift_archive(
    old: str, new: str, input: str, output: str, options: ArchiveOptions | None = None, *,
    threshold: float = drift_measures.DRIFT_THRESHOLD, max_drift_share: float = drift_measures.MAX_DRIFT_SHARE,
    top_k: int = drift_measures.TOP_K,
    **overrides: Any,
) -> DriftSummary:
    """Compare two versions of one expert on every image under ``input``: drift rows to ``output``.

    The same pass as ``score_archive`` (options, resume, error rows, placement, one ``_run.json``
    per output) with ``DriftScorer`` in place of ``DualScorer``. Then summarizes the whole output
    folder (``drift_page.summarize``: ``_drift.json`` and the page ``_report/index.html``) with
    ``threshold`` on ``drift_measures.PRIMARY_MEASURE``. Raises before any work when ``old`` and ``new``
    are not the same kind of expert (arch, class, input size, normalization).
    """
    options = _with(options, overrides)
    drift_measures.check_options(threshold, max_drift_share, top_k)
    reports: list[drift_page.DriftReport] = []  # written under the run's lease: a slower run cannot overwrite it
    run = run_archive(DriftScorer, old, new, input, output, options,
                      lambda: reports.append(drift_page.summarize(output, threshold, max_drift_share, top_k)))
    return DriftSummary(run, reports[0])


def _with(options: ArchiveOptions | None, overrides: dict[str, Any]) -> ArchiveOptions:
    """``options`` (or the defaults) with ``overrides`` of its fields; TypeError for a name it has not."""
    return replace(options or ArchiveOptions(), **overrides)


def run_archive(
    scorer: type[PairScorer], first: str, second: str, input: str, output: str, options: ArchiveOptions,
    finish: Callable[[], object] | None = None,
) -> ScoreSummary:
    """One Ray Data pass of ``scorer`` (holding experts ``first`` and ``second``) over ``input`` into ``output``.

    What ``score_archive`` and ``drift_archive`` share: checks before any work, ``_run.json``,
    resume, placement, Parquet writing and the summary of this run and of its output folder, read
    back from the output (``ScoreSummary.of``: an input scored but not readable there fails the run).
    ``finish``, if given, runs last while the run still holds the output's lease (what a run writes
    beside its rows, as ``drift``'s summary, must not race another run's).
    """
    started = time.perf_counter()
    run = _prepare(scorer, first, second, input, output, options)
    storage.check_writable(output)  # before any work: a run that cannot write finds out now, not at its end
    # one writer per output; each heartbeat of its lease counted in Ray's metrics
    with Lease(output, options.lease_seconds, options.wait_for_lease, wait_timeout=options.lease_wait_timeout,
               on_beat=telemetry.lease_beat) as lease:
        # checked again under the lease: a run that held it until now may have claimed a new output
        if _check_output(output, run.spec):
            storage.write_bytes(storage.join(output, RUN_FILE), run.spec.to_json().encode())
        storage.remove_inflight(output)
        staging.clear(output)  # what runs that lost the lease (or died) left staged
        state = planning.progress(run.inputs.table, output, options.retry_errors)
        # error rows to retry (transient ones always: the next run heals them), and inputs changed since scored
        drop_rows_to_redo(output, options.retry_errors, state.changed)
        todo = state.pending if options.limit is None else state.pending.slice(0, options.limit)
        if len(todo):
            ray = connect()
            _check_shared(ray, output)
            placement = planning.plan_placement(ray.cluster_resources(), options.actors, options.gpus_per_actor,
                                                options.cpus_per_actor)
            rows_per_block = planning.block_rows(len(todo), int(ray.cluster_resources().get("CPU", 1)),
                                                 options.batch_size)
            # printed with or without progress bars: a log then says what the run set out to do
            print(f"dualcam: scoring {len(todo)} of {run.inputs.table.num_rows} inputs ({state.done} already in "
                  f"{output}) with {placement.actors} actor(s) of {placement.cpus_per_actor:g} CPU, "
                  f"{placement.gpus_per_actor:g} GPU, in {run.spec.precision}, in blocks of {rows_per_block}",
                  file=sys.stderr)
            ray.data.DataContext.get_current().enable_progress_bars = options.progress
            blocks = [ray.put(block) for block in planning.blocks(run.inputs.table, todo, rows_per_block)]
            pacs = pc.any(pc.match_substring_regex(run.inputs.table.column("uri"), r"^https?://")).as_py()
            scored = _scored(ray, blocks, scorer, run.experts, run.meta, run.spec, placement, options, bool(pacs))
            # Writing is I/O; it must not wait for CPUs the scoring actors hold. On S3, files are staged and
            # published only while this run holds the lease: a run paused past it lands nothing more.
            with _written_mid_run(output), staging.fenced(output, lease.holder.token, lease.still_held) as into:
                scored.write_parquet(storage.absolute(into), filesystem=storage.parquet_filesystem(output),
                                     min_rows_per_file=options.rows_per_file, ray_remote_args={"num_cpus": 0})
        with _written_mid_run(output):
            rows = read_results(output, ["uri", "status", "error"], warn_duplicates=False)
            if finish is not None:
                finish()
    scored = run.inputs.table.column("uri").take(todo).combine_chunks()
    return ScoreSummary.of(output, run.inputs, state.done, scored, rows, time.perf_counter() - started)


@contextmanager
def _written_mid_run(output: str) -> Iterator[None]:
    """The driver's own storage errors once the run writes are ``errorlog.RunFailed`` (exit 1), not unusable
    arguments (exit 2); errors from Ray's workers already say so."""
    try:
        yield
    except OSError as err:
        if errorlog.raised_by_ray(err):
            raise
        raise errorlog.RunFailed(f"{output} failed under this run as it wrote: {err}; a rerun, once it is "
                                 "back, scores every input it does not hold") from err


def _check_shared(ray: ModuleType, output: str) -> None:
    """ValueError, before any input is read, where a joined cluster's node does not see the local folder
    ``output``: the rows its tasks wrote would land on its own disk (the run's check of what it scored would
    find them missing at its end). One probe file, and one task on no CPU per node; nothing to check for an
    s3:// output or a Ray this run started on this machine. Nodes that join later are not seen here."""
    if storage.is_s3(output) or not os.environ.get("RAY_ADDRESS"):
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    probe = storage.join(output, f".dualcam-shared-{secrets.token_hex(6)}")
    storage.write_bytes(probe, b"dualcam checks that every node of the cluster sees this folder\n")
    try:
        sees = ray.remote(num_cpus=0)(os.path.exists)
        seen = ray.get([sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(probe)
                        for node in nodes], timeout=300)
    finally:
        storage.delete(probe)
    blind = [node for node, sees_it in zip(nodes, seen) if not sees_it]
    if blind:
        raise ValueError(f"--output {output} is not on a disk the whole cluster shares: {len(blind)} of its "
                         f"{len(nodes)} nodes (e.g. {blind[0][:12]}) do not see it, and rows they wrote would be "
                         "missing from it; a cluster of several machines needs an --output they all share, such as s3://")


def plan_archive(
    scorer: type[PairScorer], first: str, second: str, input: str, output: str, options: ArchiveOptions,
) -> planning.RunPlan:
    """What ``run_archive`` would do, with nothing started and nothing written (``--dry-run``).

    The same checks, the same inputs and the same set difference against the output (its error
    rows that a run would try again counted as to retry), then the placement and blocks on the cluster at
    hand (``cluster_at_hand``) and on ``options.cluster``, with hours from ``options.rates``.
    """
    started = time.perf_counter()
    run = _prepare(scorer, first, second, input, output, options)
    read_seconds = time.perf_counter() - started
    state = planning.progress(run.inputs.table, output, options.retry_errors)
    clusters = [cluster_at_hand()] + ([planning.Cluster.parse(options.cluster)] if options.cluster else [])
    return planning.RunPlan(
        kind=scorer.layout.kind, input=input, output=output, inputs=run.inputs.table.num_rows,
        read_seconds=read_seconds, skipped=run.inputs.skipped_kinds(),
        skipped_because=run.inputs.skipped_because, done=state.done,
        retried=state.retried, retry_errors=options.retry_errors, changed=len(state.changed),
        pending=len(state.pending), limit=options.limit,
        batch_size=options.batch_size,
        clusters=[(c, planning.plan_placement({"CPU": c.cpus, "GPU": c.gpus}, options.actors,
                                              options.gpus_per_actor, options.cpus_per_actor)) for c in clusters],
        rates=planning.Rates.parse(options.rates) if options.rates else None,
    )


def cluster_at_hand() -> planning.Cluster:
    """The Ray cluster this process has joined, or the one at ``RAY_ADDRESS`` (joined to read its nodes,
    nothing started on it); else this machine, as a new local Ray would have it. Never starts Ray."""
    joined = sys.modules.get("ray") is not None and sys.modules["ray"].is_initialized()
    if joined or os.environ.get("RAY_ADDRESS"):
        ray = connect(quiet=True)
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        return planning.Cluster(tuple((n.get("CPU", 0.0), n.get("GPU", 0.0)) for n in nodes),
                                f"the Ray cluster ({len(nodes)} node{'s' if len(nodes) > 1 else ''})")
    import torch

    return planning.Cluster(((float(len(os.sched_getaffinity(0))), float(torch.cuda.device_count())),),
                            "this machine")


@dataclass
class _Prepared:
    """A run's experts, checked, its ``RunSpec`` and its inputs."""

    experts: tuple[str, str]
    meta: ExpertMeta
    spec: RunSpec
    inputs: Inputs


def _prepare(
    scorer: type[PairScorer], first: str, second: str, input: str, output: str, options: ArchiveOptions,
) -> _Prepared:
    """Every check before any work, reading only: the experts, the inputs (some images, no clashing
    columns) and the output (new, or holding rows of this very run)."""
    first, second = (resolve_expert(storage.absolute(e)) for e in (first, second))
    meta1, meta2 = load_meta(first), load_meta(second)
    scorer.check_experts(meta1, meta2, first, second)
    spec = RunSpec.of(scorer.layout, meta1, meta2, options.alpha, options.precision)
    found = read_inputs(input)
    if found.table.num_rows == 0:
        raise FileNotFoundError(f"{input}: no image files found" + (
            f" ({skipped_files(found.skipped, found.skipped_because)})" if len(found.skipped) else ""))
    check_passthrough(found.table.column_names, scorer.layout)
    _check_output(output, spec)
    return _Prepared((first, second), meta1, spec, found)


def _check_output(output: str, spec: RunSpec) -> bool:
    """Whether ``output`` is new; raises unless it is, or was scored the same way (its ``_run.json``)."""
    existing = read_run_spec(output)
    if existing is None:
        if data_files(output):
            raise ValueError(f"{output} holds Parquet files that dualcam did not write ({RUN_FILE} is missing); "
                             "choose an empty --output")
        return True
    if existing != spec:
        raise ValueError(f"{output} holds results of other experts, another alpha, precision or schema "
                         f"({existing.describe()}); choose another --output")
    return False


def _scored(
    ray: ModuleType, blocks: list[ObjectRef[pa.Table]], scorer: type[PairScorer], experts: tuple[str, str],
    meta: ExpertMeta, spec: RunSpec, placement: planning.Placement, options: ArchiveOptions, pacs: bool,
) -> Dataset:
    """The lazy Ray Dataset of result rows for the inputs in ``blocks`` (object refs of ``planning.blocks``,
    put one at a time: what ``from_arrow`` does with a list it holds whole); with ``pacs``, its
    reads share ``options.pacs_requests`` slots (``request_gate``). Its loaders keep one ``crash_ledger``: an
    input that keeps killing its worker becomes an error row, where Ray alone would retry it for ever."""
    batch_size = options.batch_size
    load_resources = (
        {"num_cpus": 1, "num_gpus": 0} if placement.gpus_per_actor
        else {"num_cpus": placement.cpus_per_actor, "num_gpus": 0}  # same as the actor's: fused into it
    )
    ds = ray.data.from_arrow_refs(blocks)
    ds = ds.map_batches(
        load_images, batch_format="pyarrow", batch_size=batch_size, **load_resources,
        fn_kwargs={"meta": meta, "read_timeout": options.read_timeout, "device_jpeg": bool(placement.gpus_per_actor),
                   "slots": request_gate(ray, options.pacs_requests) if pacs else None,
                   "max_input_bytes": options.max_input_bytes, "ledger": crash_ledger(ray)},
    )
    ds = ds.map_batches(
        scorer, fn_constructor_args=experts,
        fn_constructor_kwargs={"alpha": spec.alpha, "precision": spec.precision,
                               "threads": max(1, round(placement.cpus_per_actor))},
        batch_format="pyarrow", batch_size=batch_size,
        # two calls in flight per actor (threads): one batch loads, and Ray moves the last output,
        # while the other is scored; the scorer runs one forward pass at a time
        compute=ray.data.ActorPoolStrategy(size=placement.actors, max_concurrent_calls_per_actor=2),
        num_cpus=placement.cpus_per_actor, num_gpus=placement.gpus_per_actor,
    )
    # the rows counted in Ray's metrics (telemetry), on no CPU of the actors'
    return ds.map_batches(telemetry.count_rows, fn_kwargs={"kind": scorer.layout.kind}, batch_format="pyarrow",
                          num_cpus=0)
