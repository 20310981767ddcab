"""Fine-tuning the two binary experts with Ray Train, both at once: the driver (``dualcam train``).

The driver reads and splits the data (``plan_experts``), prints each expert's per-split counts,
then runs one ``TorchTrainer`` per expert (``_fit``), each ``fit()`` in its own thread so both
train concurrently, each with its own ``ScalingConfig`` (DDP inside when it has several workers),
and writes each expert's best epoch as a new checkpoint version (``_publish``). What runs on each
worker, and the ``Recipe`` it follows (the paper's by default), is ``train_loop``: workers stream
``(uri, target)`` rows from Ray Data shards and read, decode and preprocess each batch themselves
(one batch ahead, in a thread), so images stream from S3 and no CPU is needed beyond the
workers'. Every epoch reports train loss and validation and test metrics with a checkpoint;
Ray keeps the best by validation accuracy (and the latest, for resuming). The test metrics of
the best epoch are the expert's reported test performance: selection looks at validation only.

Ray is imported inside functions only (``connect``), as in ``pipeline``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dualcam.distributed.connect import connect, largest_node_cpus
from dualcam.distributed.train_loop import Recipe, read_state, train_loop, unloaded_note
from dualcam.io import errorlog, storage
from dualcam.io.checkpoints import (
    META_FILE,
    POSITIVE_INDEX,
    ExpertMeta,
    build_expert,
    latest_version,
    list_versions,
    load_meta,
    save_expert_version,
)
from dualcam.io.labelled import SPLITS, Labelled, assign_splits, expert_rows, read_labelled, split_counts
from dualcam.scoring.archive_options import check_value

if TYPE_CHECKING:
    from ray.train import Result


@dataclass
class ExpertPlan:
    """One expert to train: its class, its rows (uri, label, split, target) and where it starts from."""

    label: str
    rows: pa.Table
    negatives: list[str] | None
    data: str
    init_from: str | None = None
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)

    @functools.cached_property
    def data_fingerprint(self) -> str:
        """A hash of the images (each with its version, ``storage.version_of``: a retrain after an image was
        replaced in place is not skipped as already trained), their targets and splits."""
        digest = hashlib.sha256()
        columns = [self.rows.column(c).to_pylist() for c in ("uri", "target", "split")]
        for uri, version, target, split in zip(columns[0], storage.versions(self.rows.column("uri")).to_pylist(),
                                               *columns[1:]):
            digest.update(f"{uri}\t{version}\t{target}\t{split}\n".encode())
        return digest.hexdigest()

    def training_key(self, recipe: Recipe) -> str:
        """Same data and recipe, same key: an expert with this key needs no training again."""
        described = json.dumps([self.data_fingerprint, asdict(recipe)], sort_keys=True)
        return hashlib.sha256(described.encode()).hexdigest()

    def run_name(self, recipe: Recipe) -> str:
        """Names the Ray Train run, so that rerunning the same command resumes it."""
        key = hashlib.sha256(f"{self.training_key(recipe)}\t{self.init_from}".encode()).hexdigest()
        return f"{''.join(c if c.isalnum() or c in '-_' else '_' for c in self.label)}-{key[:16]}"


@dataclass
class TrainedExpert:
    label: str
    uri: str
    meta: ExpertMeta
    best_epoch: int
    already_trained: bool = False


def plan_experts(
    data: str | None, classes: Sequence[str], negatives: Sequence[Sequence[str] | None],
    per_expert_data: Sequence[str | None], seed: int, views: Sequence[str] = ("PA",),
) -> tuple[list[ExpertPlan], dict[str, Labelled]]:
    """Read every data source once, split the union (so an image shared by both experts lands in
    the same split for both) and select each expert's rows."""
    sources = [s for s in (d or data for d in per_expert_data) if s is not None]
    if len(sources) != len(per_expert_data):
        raise ValueError("give --data, or --class1-data and --class2-data for every expert")
    labelled = {s: read_labelled(s, views) for s in dict.fromkeys(sources)}
    union = pa.concat_tables([_with_optional(lab.table) for lab in labelled.values()], promote_options="permissive")
    _, first = np.unique(np.array(union.column("uri").to_pylist(), dtype=object), return_index=True)
    splits = assign_splits(union.take(np.sort(first)), seed)
    split_of = dict(zip(splits.column("uri").to_pylist(), splits.column("split").to_pylist()))
    plans = []
    for label, negs, source in zip(classes, negatives, sources):
        table = labelled[source].table
        table = _with_optional(table).drop_columns(["split"]).append_column(
            "split", pa.array([split_of[u] for u in table.column("uri").to_pylist()], pa.string()))
        rows = expert_rows(table, label, negs)
        plan = ExpertPlan(label, rows, list(negs) if negs else None, source, counts=split_counts(rows))
        for split, (pos, neg) in plan.counts.items():
            if split in ("train", "val") and (pos == 0 or neg == 0):
                raise ValueError(f"expert {label!r}: the {split} split has {pos} positives and {neg} negatives; "
                                 "it needs both (more data, or other --negatives)")
        plans.append(plan)
    return plans, labelled


def _with_optional(table: pa.Table) -> pa.Table:
    for name in ("patient_id", "split"):
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    return table.select(["uri", "label", "patient_id", "split"])


def counts_table(plans: Sequence[ExpertPlan]) -> str:
    """The paper's Table I: positives / negatives per split, per expert."""
    lines = [f"{'expert':24s} " + " ".join(f"{s:>15s}" for s in SPLITS),
             f"{'':24s} " + " ".join(f"{'pos / neg':>15s}" for _ in SPLITS)]
    for plan in plans:
        cells = (f"{f'{p} / {n}':>15s}" for p, n in (plan.counts[s] for s in SPLITS))
        lines.append(f"{plan.label:24s} " + " ".join(cells))
    return "\n".join(lines)


def resolve_init_from(uris: Sequence[str], labels: Sequence[str]) -> dict[str, str]:
    """Map each expert's class to the checkpoint it warm-starts from.

    Each URI is an expert checkpoint (it applies to the expert of its class) or a training output
    root (each expert takes its latest version under ``<root>/<class>/``).
    """
    chosen: dict[str, str] = {}
    for uri in map(storage.absolute, uris):
        if storage.exists(storage.join(uri, META_FILE)):
            name = load_meta(uri).class_name
            if name not in labels:
                raise ValueError(f"--init-from {uri} is an expert for {name!r}, which is not being trained "
                                 f"({', '.join(labels)})")
            chosen[name] = uri
            continue
        found = {label: latest_version(storage.join(uri, label)) for label in labels}
        if not any(found.values()):
            raise ValueError(f"--init-from {uri}: neither an expert checkpoint nor a folder with <class>/<version>/ "
                             "checkpoints")
        chosen.update({label: v for label, v in found.items() if v})
    for uri in chosen.values():
        meta = load_meta(uri)
        if (meta.num_outputs, meta.class_index, meta.activation) != (2, POSITIVE_INDEX, "softmax"):
            raise ValueError(
                f"--init-from {uri}: training warm-starts binary experts only (2 outputs, softmax, class at "
                f"{POSITIVE_INDEX}); this one has {meta.num_outputs} outputs, class at {meta.class_index}, "
                f"{meta.activation}")
    return chosen


def train_experts(
    output: str, classes: Sequence[str], *, data: str | None = None,
    negatives: Sequence[Sequence[str] | None] | None = None, per_expert_data: Sequence[str | None] | None = None,
    recipe: Recipe = Recipe(), init_from: Sequence[str] = (), workers_per_expert: int = 1,
    gpus_per_worker: float | None = None, cpus_per_worker: float | None = None, max_failures: int = 2,
    views: Sequence[str] = ("PA",), storage_path: str | None = None, export_epochs: bool = False,
    log: Callable[[str], None] = print,
) -> list[TrainedExpert]:
    """Train one binary expert per class in ``classes`` (the paper: C1, C2) concurrently on Ray.

    Each is written as a new version, ``<output>/<class>/<version>/`` (``save_expert_version``),
    with its metrics, recipe and data fingerprint. Rerunning after the driver died resumes from the last
    checkpoint; rerunning after success finds the finished expert and trains nothing.

    ``export_epochs`` also writes every epoch's weights as an expert checkpoint,
    ``<output>/<class>/_epochs/<run>/epoch-<NNN>/`` (NNN from 001, as ``epoch`` in the history and
    ``best_epoch``), so that two epochs of one run can be compared (``dualcam drift``). Ray Train's
    own checkpoints keep only the best and the latest epoch.

    Unusable arguments raise ValueError before any data is read or Ray starts.
    """
    check_value(workers_per_expert, "workers_per_expert", "an integer >= 1", int, lambda v: v >= 1)
    check_value(gpus_per_worker, "gpus_per_worker", "a number >= 0", float, lambda v: v >= 0, optional=True)
    check_value(cpus_per_worker, "cpus_per_worker", "a number > 0", float, lambda v: v > 0, optional=True)
    check_value(max_failures, "max_failures", "an integer >= 0", int, lambda v: v >= 0)
    _check_weights(recipe.weights)
    todo, finished = [], []
    for plan in _planned(classes, data, negatives, per_expert_data, recipe.seed, views, init_from, log):
        done = _finished_version(output, plan, recipe)
        if done:
            log(f"{plan.label}: already trained with this data and recipe: {done.uri}")
            finished.append(done)
        else:
            todo.append(plan)
    if not todo:
        return finished

    ray = connect()
    gpus_per_worker, cpus_per_worker = _worker_resources(ray, len(todo) * workers_per_expert, gpus_per_worker,
                                                         cpus_per_worker)
    storage_path = storage_path or _default_storage(output)
    exports = {plan.label: _epochs_root(output, plan, recipe) if export_epochs else None for plan in todo}
    for label, root in exports.items():
        if root:
            log(f"{label}: every epoch's weights go to {root}/epoch-NNN")
    trained, failed = [], []
    with ThreadPoolExecutor(len(todo)) as pool:
        futures = {pool.submit(_fit, ray, plan, recipe, workers_per_expert, gpus_per_worker, cpus_per_worker,
                               max_failures, storage_path, exports[plan.label]): plan for plan in todo}
        for future in as_completed(futures):  # one expert's failure never costs the other its result
            plan = futures[future]
            try:
                trained.append(_publish(output, plan, recipe, future.result(), exports[plan.label]))
                log(f"{plan.label}: wrote {trained[-1].uri}")
            except Exception as err:  # reported below, after the others are published
                failed.append((plan.label, err))
    if failed:
        reasons = "; ".join(f"{label}: {errorlog.one_line(err)}" for label, err in failed)
        raise RuntimeError(f"training failed for {reasons}") from failed[0][1]
    return sorted(finished + trained, key=lambda e: list(classes).index(e.label))


def _check_weights(weights: str) -> None:
    """FileNotFoundError for a state dict that is not there (``--weights`` other than imagenet or none)."""
    if weights in ("imagenet", "none") or storage.exists(weights):
        return
    raise FileNotFoundError(f"--weights {weights}: no such state dict (weights are imagenet, none, or a state "
                            "dict's path or s3:// URI)")


def _worker_resources(
    ray: ModuleType, workers: int, gpus_per_worker: float | None, cpus_per_worker: float | None,
) -> tuple[float, float]:
    """(GPUs, CPUs) per worker, ``workers`` in all: by default one GPU each when the cluster has
    GPUs, else the cluster's CPUs shared among them (at most one node's each)."""
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0.0)
    gpus_per_worker = (1.0 if gpus else 0.0) if gpus_per_worker is None else gpus_per_worker
    if cpus_per_worker is None:
        shared = resources.get("CPU", 1.0) // workers
        cpus_per_worker = 1.0 if gpus_per_worker else max(1.0, min(shared, largest_node_cpus(ray)))
    return gpus_per_worker, cpus_per_worker


def _planned(
    classes: Sequence[str], data: str | None, negatives: Sequence[Sequence[str] | None] | None,
    per_expert_data: Sequence[str | None] | None, seed: int, views: Sequence[str], init_from: Sequence[str],
    log: Callable[[str], None],
) -> list[ExpertPlan]:
    """``plan_experts`` with ``train_experts``' arguments checked, warm starts resolved and the
    data read reported (sources, what was left out, the paper's Table I)."""
    n = len(classes)
    negatives = list(negatives or [None] * n)
    per_expert_data = list(per_expert_data or [None] * n)
    if not (len(negatives) == len(per_expert_data) == n):
        raise ValueError("negatives and per_expert_data need one entry per class")
    if len(set(classes)) != n:
        raise ValueError(f"the experts' classes must differ, got {', '.join(classes)}")
    plans, labelled = plan_experts(data, classes, negatives, per_expert_data, seed, views)
    for source, lab in labelled.items():
        _report_source(source, lab, log)
    for label, uri in resolve_init_from(init_from, list(classes)).items():
        next(p for p in plans if p.label == label).init_from = uri
    log("images per split (the paper's Table I):\n" + counts_table(plans))
    return plans


def _report_source(source: str, lab: Labelled, log: Callable[[str], None]) -> None:
    log(f"{source}: {lab.table.num_rows} images")
    for reason, count in sorted(lab.excluded.items()):
        log(f"  left out {count}: {reason}")
    if lab.missing:
        log(f"  {len(lab.missing)} listed images are missing and left out, e.g. " + ", ".join(lab.missing[:3]))


def _default_storage(output: str) -> str:
    path = storage.join(output, "_ray_train")
    return path if storage.is_s3(path) else os.path.abspath(path)


def _epochs_root(output: str, plan: ExpertPlan, recipe: Recipe) -> str:
    """Where ``export_epochs`` writes one run's epochs: beside the versions, never listed as one."""
    return storage.join(output, plan.label, "_epochs", plan.run_name(recipe))


def _finished_version(output: str, plan: ExpertPlan, recipe: Recipe) -> TrainedExpert | None:
    """A version under ``<output>/<class>/`` trained on the same data with the same recipe, if any.

    Every version counts, so a warm-started retraining (which starts from an earlier version)
    is found on a rerun too, instead of starting again from the version it produced.
    """
    key = plan.training_key(recipe)
    for uri in reversed(list_versions(storage.join(output, plan.label))):
        meta = load_meta(uri)
        if meta.recipe.get("training_key") == key:
            return TrainedExpert(plan.label, uri, meta, int(meta.metrics.get("best_epoch", -1)), already_trained=True)
    return None


def _fit(ray: ModuleType, plan: ExpertPlan, recipe: Recipe, workers: int, gpus_per_worker: float,
         cpus_per_worker: float, max_failures: int, storage_path: str, export_root: str | None) -> Result:
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Ray Train sends a worker's print() both to stdout and, through its logger, to stderr: the
    # epoch lines then showed twice in a terminal. Off, print() is print (the driver's environment
    # reaches the workers); the lines still go to the workers' log files.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    meta = _expert_meta(plan, recipe)
    datasets = {
        split: ray.data.from_arrow(plan.rows.filter(pc.equal(plan.rows.column("split"), split))
                                   .select(["uri", "target"]))
        for split in SPLITS
    }
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "meta": meta.to_dict(), "recipe": asdict(recipe), "init_from": plan.init_from,
            "threads": max(1, int(cpus_per_worker)),
            "export": export_root and {"root": export_root, "meta": _described(plan, recipe).to_dict()},
        },
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker={"CPU": cpus_per_worker, "GPU": gpus_per_worker}),
        run_config=RunConfig(
            name=plan.run_name(recipe), storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="val_accuracy",
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
        datasets=datasets,
        # train is sharded among the workers; val and test are read whole by rank 0, which evaluates
        # (an equal split would drop up to workers - 1 images from the metrics)
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    return trainer.fit()


def _expert_meta(plan: ExpertPlan, recipe: Recipe) -> ExpertMeta:
    if plan.init_from:
        base = load_meta(plan.init_from)
        return ExpertMeta(arch=base.arch, class_name=plan.label, input_size=base.input_size, color_mode=base.color_mode,
                          output_stride=base.output_stride, mean=base.mean, std=base.std, resize=base.resize,
                          resize_size=base.resize_size)
    return ExpertMeta(arch=recipe.arch, class_name=plan.label, input_size=recipe.image_size,
                      color_mode=recipe.color_mode, output_stride=recipe.output_stride)


def _described(plan: ExpertPlan, recipe: Recipe) -> ExpertMeta:
    """The expert's metadata with its provenance (recipe, data, fingerprint); metrics still empty."""
    meta = _expert_meta(plan, recipe)
    meta.data_fingerprint = plan.data_fingerprint
    # weights: what training started from; a warm start's checkpoint, not the unused --weights
    meta.recipe = {**asdict(recipe), "arch": meta.arch, "image_size": meta.input_size,
                   "weights": plan.init_from or recipe.weights, "data": plan.data, "negatives": plan.negatives,
                   "init_from": plan.init_from, "training_key": plan.training_key(recipe)}
    return meta


def _publish(output: str, plan: ExpertPlan, recipe: Recipe, result: Result, export_root: str | None) -> TrainedExpert:
    """Write the best checkpoint (by validation accuracy) as a new expert version."""
    if result.best_checkpoints is None or result.checkpoint is None:  # never: every epoch reports a checkpoint
        raise ValueError(f"{plan.label}: training left no checkpoint")
    checkpoint, metrics = max(result.best_checkpoints, key=lambda cm: (cm[1]["val_accuracy"], -cm[1]["epoch"]))
    meta = _described(plan, recipe)
    meta.recipe["exported_epochs"] = export_root
    model = build_expert(meta.arch, output_stride=meta.output_stride)
    model.load_state_dict(read_state(checkpoint)["model"])
    history = read_state(result.checkpoint)["history"]  # the latest checkpoint: its history covers every epoch
    meta.metrics = {
        "best_epoch": metrics["epoch"],
        **{split: {k.split("_", 1)[1]: metrics[k] for k in metrics if k.startswith(f"{split}_")}
           for split in ("val", "test")},
        "train_loss": metrics["train_loss"],
        "counts": {s: {"positives": p, "negatives": n} for s, (p, n) in plan.counts.items()},
        "history": history,
    }
    uri, meta = save_expert_version(model, storage.join(output, plan.label), meta)
    return TrainedExpert(plan.label, uri, meta, metrics["epoch"])


def results_table(experts: Sequence[TrainedExpert]) -> str:
    """The short table printed at the end: test metrics of each expert's best epoch (counted from 1), and a line
    per expert whose validation or test images did not all load at that epoch (``train_loop.unloaded_note``)."""
    lines = [f"{'expert':20s} {'epoch':>5s} {'val acc':>8s} {'test acc':>8s} {'sens':>6s} {'spec':>6s} {'AUC':>6s}  "
             "checkpoint"]
    for e in experts:
        val, test = e.meta.metrics.get("val", {}), e.meta.metrics.get("test", {})
        lines.append(f"{e.label:20s} {e.best_epoch:5d} {val.get('accuracy', float('nan')):8.3f} "
                     f"{test.get('accuracy', float('nan')):8.3f} {test.get('sensitivity', float('nan')):6.3f} "
                     f"{test.get('specificity', float('nan')):6.3f} {test.get('auc', float('nan')):6.3f}  {e.uri}")
    for e in experts:
        flat = {f"{split}_{k}": v for split in ("val", "test") for k, v in e.meta.metrics.get(split, {}).items()}
        note = unloaded_note(flat)
        if note:
            lines.append(f"{e.label}: at epoch {e.best_epoch}{note}")
    return "\n".join(lines)
