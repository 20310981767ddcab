"""The Ray layer for scoring archives: Ray Data plumbing around ``dualcam.scoring``.

With ``training`` and ``raycluster``, the only modules that import Ray, and only inside functions,
so that ``import dualcam`` works where Ray is absent. Its options are one ``ArchiveOptions``
(``dualcam.options``). The pipeline reads top to bottom::

    from_arrow(uris) -> map_batches(load_images)                   read + decode + preprocess, CPU
                     -> map_batches(DualScorer, ActorPoolStrategy)  both experts, GPU if any
                     -> write_parquet(output)

On a CPU-only cluster both map steps take the same resources, so Ray fuses them into one actor
that gets all of its node's CPUs. With GPUs, one actor per GPU holds both experts, and loading
runs in CPU tasks beside the actors, on every CPU they leave: those tasks only read the JPEGs,
which each actor decodes in batches on its GPU (``device_decode``), and decode the rest (PNG,
DICOM, the JPEGs nvJPEG handles badly) with ``imaging.model_input`` as on CPU clusters.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from dualcam import drift, drift_report, storage
from dualcam.datasets import read_inputs
from dualcam.experts import ExpertMeta, load_meta, resolve_expert
from dualcam.options import MAX_ERROR_FRACTION, ArchiveOptions
from dualcam.raycluster import connect, largest_node_cpus
from dualcam.results import (
    RUN_FILE,
    RunSpec,
    check_passthrough,
    data_files,
    drop_error_rows,
    read_results,
    read_run_spec,
)
from dualcam.scoring import DriftScorer, DualScorer, PairScorer, load_images

MAX_CPUS_PER_ACTOR = 8


@dataclass
class ScoreSummary:
    """What a scoring run did. ``total``/``ok``/``errors`` count the whole output folder."""

    output: str
    inputs: int
    already_done: int
    scored_now: int
    ok: int
    errors: int
    seconds: float
    first_error: str | None = None

    @property
    def images_per_second(self) -> float:
        return self.scored_now / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_fraction(self) -> float:
        return self.errors / max(1, self.ok + self.errors)

    def failure(self, max_error_fraction: float = MAX_ERROR_FRACTION) -> str | None:
        """Why this run counts as failed, or None. Nothing readable at all is always a failure."""
        if self.errors and not self.ok:
            return f"none of the {self.errors} inputs could be scored; first error: {self.first_error}"
        if self.error_fraction > max_error_fraction:
            return (f"{self.errors} of {self.ok + self.errors} inputs failed ({self.error_fraction:.1%}), "
                    f"more than the allowed {max_error_fraction:.1%}; first error: {self.first_error}")
        return None

    def line(self) -> str:
        return (f"scored {self.scored_now} images in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s); "
                f"{self.already_done} already done; output holds {self.ok} ok, {self.errors} errors; "
                f"results in {self.output}")


@dataclass
class DriftSummary:
    """What a drift run did: the pass itself (``run``) and the summary of its whole output folder
    (``report``, the content of ``_drift.json``)."""

    run: ScoreSummary
    report: dict[str, Any]

    @property
    def drifted_share(self) -> float:
        return self.report["drifted_share"]

    @property
    def alert(self) -> bool:
        """True when more than ``max_drift_share`` of the images drifted."""
        return self.report["alert"]

    def line(self) -> str:
        r = self.report
        medians = ", ".join(f"{name} {r['measures'][name]['median']:.3g}" for name in drift.MEASURES
                            if r["measures"][name]["median"] is not None)
        return (f"drift: {r['drifted']} of {r['images']} images drifted ({self.drifted_share:.1%}; "
                f"{r['drifted_when']}), {'more' if self.alert else 'not more'} than the allowed "
                f"{r['max_drift_share']:.1%}; medians: {medians or 'none'}; "
                f"summary in {storage.join(self.run.output, drift_report.SUMMARY_FILE)}, page {r['page']}")


@dataclass(frozen=True)
class Placement:
    """How many scoring actors run, and what each holds."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float


def plan_placement(
    resources: dict[str, float], node_cpus: float | None = None, actors: int | None = None,
    gpus_per_actor: float | None = None, cpus_per_actor: float | None = None,
) -> Placement:
    """Defaults: one actor per GPU when the cluster has GPUs; else actors of up to 8 CPUs (and at
    most one node's CPUs) each."""
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 1.0)
    node_cpus = cpus if node_cpus is None else node_cpus
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus else 0.0
    if gpus_per_actor > 0 and gpus < gpus_per_actor:
        raise ValueError(f"{gpus_per_actor} GPUs per actor requested, but the cluster has {gpus:g} GPUs")
    if cpus_per_actor is None:
        cpus_per_actor = 1.0 if gpus_per_actor else float(max(1.0, min(node_cpus, MAX_CPUS_PER_ACTOR)))
    if actors is None:
        actors = int(gpus // gpus_per_actor) if gpus_per_actor else int(max(1, cpus // cpus_per_actor))
    if actors < 1:
        raise ValueError(f"actors must be at least 1, got {actors}")
    return Placement(actors, cpus_per_actor, gpus_per_actor)


def score_archive(
    c1: str, c2: str, input: str, output: str, options: ArchiveOptions | None = None, **overrides: Any,
) -> ScoreSummary:
    """Score every image under ``input`` with experts ``c1`` (class of interest) and ``c2``; Parquet to ``output``.

    ``options`` (``ArchiveOptions``; its defaults when None), with any of its fields given as
    keywords instead or on top (``alpha=15, progress=False``).
    An expert may be a checkpoint or a folder of versions (``train``'s ``<output>/<class>/``),
    whose latest version is used; the results record which.
    Rerunning into the same ``output`` skips inputs already there, so a killed run resumes
    where it stopped; ``retry_errors`` first takes the error rows out, so those inputs are tried
    again. The output may only ever hold results of one pair of experts and one alpha. Raises
    before any work for unusable options, experts or inputs; bad images become error rows.
    """
    return run_archive(DualScorer, c1, c2, input, output, _with(options, overrides))


def drift_archive(
    old: str, new: str, input: str, output: str, options: ArchiveOptions | None = None, *,
    threshold: float = drift.DRIFT_THRESHOLD, max_drift_share: float = drift.MAX_DRIFT_SHARE, top_k: int = drift.TOP_K,
    **overrides: Any,
) -> DriftSummary:
    """Compare two versions of one expert on every image under ``input``: drift rows to ``output``.

    The same pass as ``score_archive`` (options, resume, error rows, placement, one ``_run.json``
    per output) with ``DriftScorer`` in place of ``DualScorer``. Then summarizes the whole output
    folder (``drift_report.summarize``: ``_drift.json`` and the page ``_report/index.html``) with
    ``threshold`` on ``drift.PRIMARY_MEASURE``. Raises before any work when ``old`` and ``new``
    are not the same kind of expert (arch, class, input size, normalization).
    """
    options = _with(options, overrides)
    drift.check_options(threshold, max_drift_share, top_k)
    run = run_archive(DriftScorer, old, new, input, output, options)
    return DriftSummary(run, drift_report.summarize(output, threshold, max_drift_share, top_k))


def _with(options: ArchiveOptions | None, overrides: dict[str, Any]) -> ArchiveOptions:
    """``options`` (or the defaults) with ``overrides`` of its fields; TypeError for a name it has not."""
    return replace(options or ArchiveOptions(), **overrides)


def run_archive(
    scorer: type[PairScorer], first: str, second: str, input: str, output: str, options: ArchiveOptions,
) -> ScoreSummary:
    """One Ray Data pass of ``scorer`` (holding experts ``first`` and ``second``) over ``input`` into ``output``.

    What ``score_archive`` and ``drift_archive`` share: checks before any work, ``_run.json``,
    resume, placement, Parquet writing and the summary of the whole output folder.
    """
    started = time.perf_counter()
    first, second = (resolve_expert(storage.absolute(e)) for e in (first, second))
    meta1, meta2 = load_meta(first), load_meta(second)
    scorer.check_experts(meta1, meta2, first, second)
    spec = RunSpec.of(scorer.layout, meta1, meta2, options.alpha, options.precision)
    found = read_inputs(input)
    if found.table.num_rows == 0:
        raise FileNotFoundError(f"{input}: no image files found" + (
            f" ({len(found.skipped)} files with other names, e.g. {found.skipped[0]})" if found.skipped else ""))
    check_passthrough(found.table.column_names, scorer.layout)
    _claim_output(output, spec)
    storage.remove_inflight(output)
    if options.retry_errors:
        drop_error_rows(output)
    done = read_results(output, ["uri"]).column("uri")
    pending = found.table.filter(pc.invert(pc.is_in(found.table.column("uri"), value_set=done.combine_chunks())))
    todo = pending if options.limit is None else pending.slice(0, options.limit)
    if todo.num_rows:
        ray = connect()
        placement = plan_placement(ray.cluster_resources(), largest_node_cpus(ray), options.actors,
                                   options.gpus_per_actor, options.cpus_per_actor)
        if options.progress:
            print(f"dualcam: scoring {todo.num_rows} of {found.table.num_rows} inputs "
                  f"({found.table.num_rows - pending.num_rows} already in {output}) with {placement.actors} actor(s) "
                  f"of {placement.cpus_per_actor:g} CPU, {placement.gpus_per_actor:g} GPU, in {spec.precision}",
                  file=sys.stderr)
        ray.data.DataContext.get_current().enable_progress_bars = options.progress
        scored = _scored(ray, todo, scorer, (first, second), meta1, spec, placement, options.batch_size)
        # Writing is I/O; it must not wait for CPUs the scoring actors hold.
        scored.write_parquet(storage.absolute(output), filesystem=storage.parquet_filesystem(output),
                             min_rows_per_file=options.rows_per_file, ray_remote_args={"num_cpus": 0})
    status = read_results(output, ["status", "error"])
    errors = status.filter(pc.equal(status.column("status"), "error"))
    return ScoreSummary(
        output=output, inputs=found.table.num_rows, already_done=found.table.num_rows - pending.num_rows,
        scored_now=todo.num_rows, ok=status.num_rows - errors.num_rows, errors=errors.num_rows,
        seconds=time.perf_counter() - started,
        first_error=errors.column("error")[0].as_py() if errors.num_rows else None,
    )


def _claim_output(output: str, spec: RunSpec) -> None:
    """Record ``spec`` in a new output folder, or check that an existing one was scored the same way."""
    existing = read_run_spec(output)
    if existing is None:
        if data_files(output):
            raise ValueError(f"{output} holds Parquet files that dualcam did not write ({RUN_FILE} is missing); "
                             "choose an empty --output")
        storage.write_bytes(storage.join(output, RUN_FILE), spec.to_json().encode())
    elif existing != spec:
        raise ValueError(f"{output} holds results of other experts, another alpha, precision or schema "
                         f"({existing.describe()}); choose another --output")


def _scored(
    ray: Any, todo: pa.Table, scorer: type[PairScorer], experts: tuple[str, str], meta: ExpertMeta, spec: RunSpec,
    placement: Placement, batch_size: int,
) -> Any:
    """The lazy Ray Dataset of result rows for the inputs in ``todo``."""
    load_resources = (
        {"num_cpus": 1, "num_gpus": 0} if placement.gpus_per_actor
        else {"num_cpus": placement.cpus_per_actor, "num_gpus": 0}  # same as the actor's: fused into it
    )
    rows_per_block = batch_size * 4
    ds = ray.data.from_arrow([todo.slice(i, rows_per_block) for i in range(0, todo.num_rows, rows_per_block)])
    ds = ds.map_batches(
        load_images, fn_kwargs={"meta": meta, "device_jpeg": bool(placement.gpus_per_actor)},
        batch_format="pyarrow", batch_size=batch_size, **load_resources,
    )
    return ds.map_batches(
        scorer, fn_constructor_args=experts,
        fn_constructor_kwargs={"alpha": spec.alpha, "precision": spec.precision,
                               "threads": max(1, round(placement.cpus_per_actor))},
        batch_format="pyarrow", batch_size=batch_size,
        # two calls in flight per actor (threads): one batch loads, and Ray moves the last output,
        # while the other is scored; the scorer runs one forward pass at a time
        compute=ray.data.ActorPoolStrategy(size=placement.actors, max_concurrent_calls_per_actor=2),
        num_cpus=placement.cpus_per_actor, num_gpus=placement.gpus_per_actor,
    )
