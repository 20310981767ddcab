"""``dualcam expert init`` and ``dualcam expert show``: write and inspect expert checkpoints."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from dualcam.commands.common import add_output_stride, check_output_folder
from dualcam.distributed.train_loop import Recipe
from dualcam.io.checkpoints import (
    SUPPORTED_ARCHS,
    ExpertMeta,
    build_expert,
    list_versions,
    load_meta,
    resolve_expert,
    save_expert,
)

HELP = "create and inspect expert checkpoints"
DESCRIPTION = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="expert_command", required=True, metavar="SUBCOMMAND")
    init = sub.add_parser("init", help="write an untrained or ImageNet-initialized expert checkpoint")
    init.add_argument("--arch", choices=SUPPORTED_ARCHS, default=Recipe.arch,
                      help=f"architecture (default {Recipe.arch})")
    init.add_argument("--class-name", required=True, help="the expert's positive class, e.g. COVID-19")
    init.add_argument("--input-size", type=int, default=Recipe.image_size,
                      help=f"square input size in pixels (default {Recipe.image_size})")
    init.add_argument("--color-mode", choices=("L", "RGB"), default=ExpertMeta.color_mode,
                      help="L: grayscale on 3 channels (default)")
    add_output_stride(init, ExpertMeta.output_stride)
    init.add_argument("--weights", default="none",
                      help="none, imagenet (torchvision's, downloaded on first use: needs internet) or a state dict's "
                      "path or s3:// URI, e.g. torchvision's ImageNet file copied from where there is internet "
                      "(default none)")
    init.add_argument("--out", required=True, help="checkpoint directory: a path or s3:// prefix")
    show = sub.add_parser("show", help="print a checkpoint's expert.json")
    show.add_argument("uri", help="checkpoint directory, or a folder of versions (latest shown): a path or s3:// "
                      "prefix")


def run(*, expert_command: str, **options: Any) -> int:
    commands: dict[str, Callable[..., int]] = {"init": init, "show": show}
    return commands[expert_command](**options)


def init(*, arch: str, class_name: str, input_size: int, color_mode: str, output_stride: int, weights: str,
         out: str) -> int:
    """``dualcam expert init``: write an expert checkpoint to ``out``, initialized from ``weights``."""
    check_output_folder(out, "--out")
    model = build_expert(arch, weights, output_stride)
    meta = ExpertMeta(arch=arch, class_name=class_name, input_size=input_size, color_mode=color_mode,
                      output_stride=output_stride, recipe={"init_weights": weights})
    meta = save_expert(model, out, meta)
    print(f"wrote expert {meta.class_name!r} ({meta.arch}, {meta.input_size} px, weights {weights}) "
          f"version {meta.version} to {out}")
    return 0


def show(*, uri: str) -> int:
    """``dualcam expert show``: print a checkpoint's ``expert.json``; of a folder of versions (``train``'s
    ``<output>/<class>/``), its latest version's, saying which on stderr (stdout stays JSON)."""
    checkpoint = resolve_expert(uri)
    meta = load_meta(checkpoint)
    if checkpoint != uri:
        print(f"dualcam: {uri} is a folder of {len(list_versions(uri))} versions; its latest: {checkpoint}",
              file=sys.stderr)
    print(json.dumps(meta.to_dict(), indent=2))
    return 0
