"""What runs on each Ray Train worker: one expert's training loop, top to bottom, and its ``Recipe``.

``training.train_experts`` (the driver) starts one ``TorchTrainer`` per expert with ``train_loop``
and a config: the expert's metadata, the recipe, the checkpoint it starts from, its CPU threads
and where each epoch's weights go (``--export-epochs``). Every epoch trains on this worker's shard
of the train split (DDP when the expert has several workers); then rank 0 evaluates the whole
validation and test splits, saves the state (``STATE_FILE``: model, optimizer, epoch, history) as
a Ray Train checkpoint and reports the metrics. Validation and test images that fail to load are
counted in the metrics (``val_unloaded``, ``val_first_unloaded``: the first such file and why) and said
on the epoch's line; over ``MAX_UNLOADED_FRACTION`` of a split, training stops rather than report
metrics over the rest. A restarted run goes on from its latest checkpoint;
each epoch's ``resumed_from_epoch`` says from which (None: the run had not been interrupted).

Epochs are counted from 1 everywhere a person or a file sees them: the line printed per epoch
(``epoch 3/8``), ``epoch`` in the history and in the checkpoint's state (the epochs done),
``best_epoch`` in ``expert.json``, the table ``dualcam train`` ends with and the exported
``epoch-003``.
Ray is imported inside ``train_loop`` only, so importing this module never imports Ray.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from dualcam.io import storage
from dualcam.io.checkpoints import META_FILE, POSITIVE_INDEX, ExpertMeta, build_expert, load_expert, save_expert
from dualcam.io.labelled import SPLITS
from dualcam.io.results import to_numpy
from dualcam.maps.metrics import binary_metrics
from dualcam.scoring.archive_options import MAX_ERROR_FRACTION, check_value
from dualcam.scoring.scorers import load_images

if TYPE_CHECKING:
    from ray.train import Checkpoint

STATE_FILE = "train_state.pt"
"""What a checkpoint of this loop holds (model, optimizer, epoch, history), in its directory."""
AUGMENTATIONS = ("none", "light")
MAX_UNLOADED_FRACTION = MAX_ERROR_FRACTION
"""The largest share of the validation or the test split whose images may fail to load (0.05, as scoring's
``--max-error-fraction``): over it, accuracy over the images left would not be the split's, so training
stops (``UnloadedImages``); under it, the metrics say how many were left out and the first of them."""


class UnloadedImages(RuntimeError):
    """Too many of a validation or test split's images failed to load for its metrics to stand for it."""


@dataclass(frozen=True)
class Recipe:
    """How an expert is trained: the paper's recipe by default."""

    arch: str = "resnet152"
    weights: str = "imagenet"
    epochs: int = 30
    lr: float = 0.001
    momentum: float = 0.9
    batch_size: int = 16
    image_size: int = 224
    output_stride: int = 32
    color_mode: str = "L"
    augment: str = "none"
    seed: int = 0

    def __post_init__(self) -> None:
        """ValueError naming the field for a value no training can use, before any work."""
        check_value(self.epochs, "epochs", "an integer >= 1", int, lambda v: v >= 1)
        check_value(self.lr, "lr", "a number > 0", float, lambda v: v > 0)
        check_value(self.momentum, "momentum", "a number in [0, 1)", float, lambda v: 0 <= v < 1)
        check_value(self.batch_size, "batch_size", "an integer >= 1", int, lambda v: v >= 1)
        check_value(self.image_size, "image_size", "an integer >= 32 (pixels)", int, lambda v: v >= 32)
        check_value(self.seed, "seed", "an integer >= 0", int, lambda v: v >= 0)
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if not isinstance(self.weights, str) or not self.weights:
            raise ValueError(f"weights must be imagenet, none or a state dict's path or s3:// URI, "
                             f"got {self.weights!r}")
        # arch, colour mode and output stride as an expert's metadata takes them (densenet has no stride 16)
        ExpertMeta(arch=self.arch, class_name="recipe", input_size=self.image_size, color_mode=self.color_mode,
                   output_stride=self.output_stride)


def train_loop(config: dict[str, Any]) -> None:
    """Train one expert on this worker, as ``training._fit`` configures it; every epoch reported to Ray Train."""
    import ray.train
    import ray.train.torch

    torch.set_num_threads(config["threads"])  # Ray's workers default to one thread
    recipe = Recipe(**config["recipe"])
    meta = ExpertMeta.from_dict(config["meta"])
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(recipe.seed + rank)
    if config["init_from"]:
        model = load_expert(config["init_from"]).model
    else:
        model = build_expert(meta.arch, recipe.weights, meta.output_stride)
    done, optimizer_state, history, resumed_from = 0, None, [], None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a restarted run (driver rerun, or workers replaced after a failure) goes on after its latest epoch
        state = read_state(checkpoint)
        model.load_state_dict(state["model"])
        done, optimizer_state, history = state["epoch"], state["optimizer"], state["history"]
        resumed_from = done
        if rank == 0:
            print(f"[{meta.class_name}] resumed from the checkpoint of epoch {done}/{recipe.epochs}", flush=True)
        if config["export"] and rank == 0:
            # the epoch training goes on from: exported already, unless the last run stopped in between
            _export_epoch(model, config["export"], history[-1])
    # channels_last before DDP wraps it, so gradient buckets match the parameters' layout
    model = ray.train.torch.prepare_model(model.to(memory_format=torch.channels_last))
    bare = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    device = ray.train.torch.get_device()
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    shards = {split: ray.train.get_dataset_shard(split) for split in SPLITS}  # val, test: whole

    for epoch in range(done + 1, recipe.epochs + 1):
        started, epoch_start_time = time.perf_counter(), time.time()
        total_loss, seen = _train_epoch(model, optimizer, shards["train"], recipe, epoch, meta, device)
        train_seconds = time.perf_counter() - started
        loss_sum, images = _all_sum([total_loss, seen], device)
        metrics = {"epoch": epoch, "train_loss": loss_sum / max(images, 1), "train_images": int(images),
                   "train_images_per_second": seen / max(train_seconds, 1e-9), "resumed_from_epoch": resumed_from}
        if rank == 0:
            metrics.update(_evaluate(bare, shards, meta, recipe.batch_size, device))
        metrics["epoch_start_time"], metrics["epoch_end_time"] = epoch_start_time, time.time()
        history.append(metrics)
        with tempfile.TemporaryDirectory() as directory:
            saved = None
            if rank == 0:
                print(f"[{meta.class_name}] epoch {epoch}/{recipe.epochs}: train loss {metrics['train_loss']:.4f}, "
                      f"val accuracy {metrics['val_accuracy']:.3f}, AUC {metrics['val_auc']:.3f}; "
                      f"{metrics['train_images_per_second']:.1f} images/s per worker{unloaded_note(metrics)}",
                      flush=True)
                torch.save({"model": bare.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                            "history": history}, Path(directory) / STATE_FILE)
                saved = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=saved)
        if config["export"] and rank == 0:
            _export_epoch(bare, config["export"], metrics)


def _train_epoch(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, shard: Any, recipe: Recipe, epoch: int,
    meta: ExpertMeta, device: torch.device,
) -> tuple[float, int]:
    """One pass over this worker's shard of the train split (``epoch`` counted from 1); (summed loss,
    images) on this worker."""
    model.train()
    total_loss, seen = 0.0, 0
    batches = shard.iter_batches(batch_size=recipe.batch_size, batch_format="pyarrow",
                                 local_shuffle_buffer_size=max(64, 4 * recipe.batch_size),
                                 local_shuffle_seed=recipe.seed * 1000 + epoch - 1)
    for x, y, _ in _loaded(batches, meta, device):
        if _all_sum([float(len(y) == 0)], device)[0]:
            continue  # a worker's images all failed to load: every worker skips the step, so DDP stays in step
        x = _light_augment(x) if recipe.augment == "light" else x
        loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(y)
        seen += len(y)
    return total_loss, seen


def _evaluate(
    model: torch.nn.Module, shards: dict[str, Any], meta: ExpertMeta, batch_size: int, device: torch.device,
) -> dict[str, Any]:
    """``val_<metric>`` and ``test_<metric>`` of the unwrapped ``model`` on the whole splits (rank 0 only),
    with ``<split>_unloaded`` (how many images failed to load) and, if any, ``<split>_first_unloaded``.

    ``UnloadedImages`` when more than ``MAX_UNLOADED_FRACTION`` of a split failed to load.
    """
    metrics: dict[str, Any] = {}
    for split in ("val", "test"):
        labels, probs, unloaded = _predict(model, shards[split], meta, batch_size, device)
        check_unloaded(split, unloaded, len(labels) + len(unloaded))
        metrics.update({f"{split}_{k}": float(v) for k, v in binary_metrics(labels, probs).items()})
        metrics[f"{split}_unloaded"] = len(unloaded)
        if unloaded:
            metrics[f"{split}_first_unloaded"] = unloaded[0]
    return metrics


def check_unloaded(split: str, unloaded: list[str], total: int, max_fraction: float = MAX_UNLOADED_FRACTION) -> None:
    """``UnloadedImages`` naming the count and the first file when more than ``max_fraction`` of the ``total``
    images of ``split`` failed to load (``unloaded``: their errors, each naming its file)."""
    if unloaded and len(unloaded) > max_fraction * total:
        raise UnloadedImages(
            f"{len(unloaded)} of the {total} {split} images could not be loaded, over {max_fraction:g} of them "
            f"(train_loop.MAX_UNLOADED_FRACTION): metrics over the rest would not be the {split} split's, so training "
            f"stopped; fix or remove them. First: {unloaded[0]}")


def unloaded_note(metrics: dict[str, Any]) -> str:
    """What an epoch's line (or the training summary) adds when validation or test images failed to load; "" if none."""
    parts = [f"{metrics[f'{split}_unloaded']} of the {split}" for split in ("val", "test")
             if metrics.get(f"{split}_unloaded")]
    if not parts:
        return ""
    first = metrics.get("val_first_unloaded") or metrics.get("test_first_unloaded")
    return f"; {' and '.join(parts)} images could not be loaded, left out of the metrics (first: {first})"


def read_state(checkpoint: Checkpoint) -> dict[str, Any]:
    """What a Ray Train checkpoint of this loop holds: ``model``, ``optimizer``, ``epoch``, ``history``."""
    with checkpoint.as_directory() as directory:
        return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)


def _export_epoch(model: torch.nn.Module, export: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Write one epoch's weights as the expert checkpoint ``<root>/epoch-<NNN>/``, unless it is there."""
    uri = storage.join(export["root"], f"epoch-{metrics['epoch']:03d}")
    if not storage.exists(storage.join(uri, META_FILE)):
        save_expert(model, uri, ExpertMeta.from_dict({**export["meta"], "metrics": metrics}))


def _loaded(
    batches: Iterator[pa.Table], meta: ExpertMeta, device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """(pixels, targets) on ``device`` per batch, and the errors of its rows that failed to load (each naming
    its file); loading runs one batch ahead in a thread.

    Rows that fail to load are left out of the pixels, so one bad file never stops training; evaluation
    counts them (``_evaluate``).
    """
    def load(batch: pa.Table) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        loaded = load_images(batch, meta)
        ok = pc.is_null(loaded.column("error"))
        x = torch.tensor(to_numpy(loaded.column("pixels").filter(ok)))
        y = torch.tensor(loaded.column("target").filter(ok).to_numpy(zero_copy_only=False), dtype=torch.long)
        return x, y, loaded.column("error").drop_null().to_pylist()

    with ThreadPoolExecutor(1) as pool:
        pending = None
        for batch in batches:
            future = pool.submit(load, batch)
            if pending is not None:
                yield _to(pending.result(), device)
            pending = future
        if pending is not None:
            yield _to(pending.result(), device)


def _to(
    xy: tuple[torch.Tensor, torch.Tensor, list[str]], device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    return xy[0].to(device, non_blocking=True), xy[1].to(device, non_blocking=True), xy[2]


def _light_augment(x: torch.Tensor) -> torch.Tensor:
    """Small per-image affine jitter (+-5 degrees, +-5% shift and scale) and brightness (one factor in [0.9, 1.1]).

    No flips: a mirrored chest X-ray puts the heart on the wrong side.
    """
    from torchvision.transforms.v2 import functional as TF

    out = torch.empty_like(x)
    for i, image in enumerate(x):
        g = torch.rand(5).tolist()
        shift = [int((g[1] - 0.5) * 0.1 * image.shape[-1]), int((g[2] - 0.5) * 0.1 * image.shape[-2])]
        image = TF.affine(image, angle=(g[0] - 0.5) * 10, translate=shift, scale=0.95 + 0.1 * g[3], shear=[0.0])
        out[i] = image * (0.9 + 0.2 * g[4])
    return out


@torch.inference_mode()
def _predict(
    model: torch.nn.Module, dataset: Any, meta: ExpertMeta, batch_size: int, device: torch.device,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels, in-class probabilities) of a whole split's images that loaded, and the errors of those that
    did not; ``model`` unwrapped, so no collectives."""
    model.eval()
    labels, probs, unloaded = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)], []
    for x, y, errors in _loaded(dataset.iter_batches(batch_size=batch_size, batch_format="pyarrow"), meta, device):
        unloaded += errors
        if len(y):
            logits = model(x.contiguous(memory_format=torch.channels_last)).float()
            probs.append(logits.softmax(-1)[:, POSITIVE_INDEX].cpu().numpy())
            labels.append(y.cpu().numpy())
    return np.concatenate(labels), np.concatenate(probs), unloaded


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over every worker."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t.tolist()
