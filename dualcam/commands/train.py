"""``dualcam train``: fine-tune the binary experts on Ray Train, both at once (``training.train_experts``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from dualcam.commands.common import RAY_FAILED, add_arch, add_output_stride, check_output_folder, labels
from dualcam.distributed.train_loop import AUGMENTATIONS, Recipe
from dualcam.distributed.training import results_table, train_experts

HELP = "fine-tune the binary experts on Ray Train, both at once (the paper's recipe by default)"
DESCRIPTION = (
    "Fine-tune one binary expert per class (--class1, and --class2 when given) concurrently on Ray (the cluster "
    "at RAY_ADDRESS, else a local one) and write each as <output>/<class>/<version>/. Defaults are the paper's "
    "recipe: ImageNet-pretrained ResNet-152, 2 outputs, SGD lr 0.001 momentum 0.9, 30 epochs, the epoch with the "
    "best validation accuracy kept, 60/20/20 splits. Rerunning the same command resumes an interrupted run. "
    "Epochs are counted from 1 in the lines printed per epoch, best_epoch in expert.json, the final table and "
    "exported epoch-NNN names."
)
RENAMED = {"--c1": "--class1", "--c2": "--class2", "--c1-data": "--class1-data", "--c2-data": "--class2-data",
           "--c1-negatives": "--class1-negatives", "--c2-negatives": "--class2-negatives",
           "--image-size": "--input-size"}
EXITS = {0: "", 1: f"an expert's training failed, {RAY_FAILED}", 2: "or unusable data, checked before Ray starts"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The data and classes, then ``Recipe``'s fields (its defaults), then where and how it runs on Ray."""
    parser.add_argument("--data", help="labelled images for both experts: a manifest (.csv/.parquet: uri, label, "
                        "optional patient_id, split), the COVID-19 collection's metadata.csv, Kermany's chest_xray "
                        "folder, or a root/<label>/... folder; local or s3://")
    parser.add_argument("--class1", required=True, help="class of expert 1, the class of interest (e.g. COVID-19)")
    parser.add_argument("--class2", help="class of expert 2, the overlapping class (e.g. PNEUMONIA); omit to train one "
                        "expert")
    parser.add_argument("--output", required=True, help="where experts are written: <output>/<class>/<version>/")
    parser.add_argument("--class1-data", help="expert 1's own data (same forms as --data)")
    parser.add_argument("--class2-data", help="expert 2's own data (same forms as --data)")
    parser.add_argument("--class1-negatives", help="comma-separated labels that are expert 1's negatives (default: all "
                        "others)")
    parser.add_argument("--class2-negatives", help="comma-separated labels that are expert 2's negatives (default: all "
                        "others)")
    parser.add_argument("--views", default="PA", help="views kept from the COVID-19 collection, comma-separated "
                        "(default PA)")
    add_arch(parser, Recipe.arch)
    parser.add_argument("--weights", default=Recipe.weights, help="starting weights: imagenet (torchvision's, "
                        "downloaded: needs internet), none, or a state dict's path or s3:// URI; not used with "
                        f"--init-from (default {Recipe.weights})")
    parser.add_argument("--init-from", action="append", default=[], metavar="URI",
                        help="warm start from an earlier version: an expert checkpoint (for the expert of its class) "
                        "or an earlier --output (each expert's latest version); repeatable")
    parser.add_argument("--epochs", type=int, default=Recipe.epochs, help=f"default {Recipe.epochs}")
    parser.add_argument("--lr", type=float, default=Recipe.lr, help=f"SGD learning rate (default {Recipe.lr})")
    parser.add_argument("--momentum", type=float, default=Recipe.momentum,
                        help=f"SGD momentum (default {Recipe.momentum})")
    parser.add_argument("--batch-size", type=int, default=Recipe.batch_size,
                        help=f"per worker (default {Recipe.batch_size})")
    parser.add_argument("--input-size", type=int, default=Recipe.image_size,
                        help=f"square input size in pixels (default {Recipe.image_size})")
    parser.add_argument("--color-mode", choices=("L", "RGB"), default=Recipe.color_mode,
                        help="L: grayscale on 3 channels (default)")
    add_output_stride(parser, Recipe.output_stride)
    parser.add_argument("--augment", choices=AUGMENTATIONS, default=Recipe.augment,
                        help=f"light: small affine and brightness jitter, no flips (default {Recipe.augment})")
    parser.add_argument("--seed", type=int, default=Recipe.seed,
                        help=f"for splits, shuffling and initialization (default {Recipe.seed})")
    parser.add_argument("--workers-per-expert", type=int, default=1, help="Ray Train workers per expert; DDP when > 1")
    parser.add_argument("--gpus-per-worker", type=float, default=None, help="default 1 when the cluster has GPUs, "
                        "else 0")
    parser.add_argument("--cpus-per-worker", type=float, default=None,
                        help="default 1 with GPUs, else the cluster's CPUs shared among all workers")
    parser.add_argument("--max-failures", type=int, default=2, help="worker failures retried per expert (default 2)")
    parser.add_argument("--storage-path", help="Ray Train run storage (default <output>/_ray_train); shared storage "
                        "on clusters")
    parser.add_argument("--export-epochs", action="store_true",
                        help="also write every epoch's weights as an expert checkpoint, <output>/<class>/_epochs/<run>/"
                        "epoch-NNN/ (epoch-001 is the first), to compare epochs of one run with dualcam drift")


def run(
    *, class1: str, output: str, data: str | None = None, class2: str | None = None, class1_data: str | None = None,
    class2_data: str | None = None, class1_negatives: str | Sequence[str] | None = None,
    class2_negatives: str | Sequence[str] | None = None, views: str | Sequence[str] = "PA",
    input_size: int = Recipe.image_size, init_from: str | Sequence[str] = (), workers_per_expert: int = 1,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float | None = None, max_failures: int = 2, storage_path: str | None = None,
    export_epochs: bool = False, **recipe: Any,
) -> int:
    """Train the expert of ``class1`` (and of ``class2``), print the table of where each checkpoint went; the exit
    status.

    ``recipe``: ``Recipe``'s fields (``epochs=8``, ``arch="resnet18"``...). Raises when training
    fails (a non-zero exit); labels are comma-separated strings or lists.
    """
    classes = [class1] + ([class2] if class2 else [])
    how = Recipe(image_size=input_size, **recipe)  # checked before anything is read
    check_output_folder(output, "--output")
    experts = train_experts(
        output, classes, data=data, negatives=[labels(class1_negatives), labels(class2_negatives)][: len(classes)],
        per_expert_data=[class1_data, class2_data][: len(classes)], recipe=how,
        init_from=[init_from] if isinstance(init_from, str) else list(init_from),
        workers_per_expert=workers_per_expert, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
        max_failures=max_failures, views=labels(views) or ["PA"], storage_path=storage_path,
        export_epochs=export_epochs,
    )
    print(results_table(experts), flush=True)
    return 0
