"""``dualcam expert init`` and ``dualcam expert show``: write and inspect expert checkpoints."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dualcam.commands import renamed
from dualcam.commands.common import add_arch, add_output_stride, check_output_folder, exit_epilog, floats, labels
from dualcam.distributed.train_loop import Recipe
from dualcam.io.checkpoints import (
    ACTIVATIONS,
    CROP_FRACTION,
    IMAGENET_MEAN,
    IMAGENET_STD,
    POSITIVE_INDEX,
    RESIZES,
    ExpertMeta,
    build_expert,
    list_versions,
    load_meta,
    resolve_expert,
    save_expert,
)
from dualcam.maps import xrv

HELP = "turn your model's weights into an expert checkpoint, and inspect checkpoints"
DESCRIPTION = None
RENAMED: dict[str, str] = {}
EXITS = {0: "", 2: ""}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="expert_command", required=True, metavar="SUBCOMMAND")
    init = sub.add_parser("init", help="write an expert checkpoint from your model's weights (a state dict), "
                          "ImageNet's or none", epilog=exit_epilog(EXITS), renamed=renamed.OUT)
    add_arch(init, Recipe.arch)
    init.add_argument("--class-name", required=True, help="the expert's class, e.g. COVID-19")
    init.add_argument("--num-outputs", type=int, default=None,
                      help="outputs of the model's last layer (default: as many as --class-names, else 2)")
    init.add_argument("--class-index", type=int, default=None,
                      help="which output is the class, from 0 (default: --class-name's place in --class-names; "
                      "else 1 of 2 outputs, 0 of 1; needed for other sizes)")
    init.add_argument("--class-names", default=None,
                      help="the model's outputs' names in order, comma-separated (e.g. normal,COVID-19,pneumonia): "
                      "recorded, and --class-name looked up in them")
    init.add_argument("--activation", choices=ACTIVATIONS, default=None,
                      help="how the class's probability is read: softmax over the outputs, or sigmoid of the "
                      "class's own (multi-label, single-logit); default softmax, sigmoid for 1 output")
    init.add_argument("--input-size", type=int, default=None,
                      help=f"square input size in pixels (default {Recipe.image_size}; TorchXRayVision's: its own)")
    init.add_argument("--color-mode", choices=("L", "RGB"), default=None,
                      help="L: grayscale on 3 channels (default)")
    init.add_argument("--resize", choices=RESIZES, default=None,
                      help="how an image becomes the input, as the model was trained: whole (resized to the input "
                      "size, no crop; default) or center-crop (short side to --resize-size, then the centre input "
                      "size square, as torchvision's ImageNet presets; TorchXRayVision's: center-crop, short side to "
                      "the input size)")
    init.add_argument("--resize-size", type=int, default=None,
                      help=f"center-crop: the short side before the crop (default input size / {CROP_FRACTION}, "
                      "rounded: 256 for 224)")
    init.add_argument("--mean", default=None, help="channel means the model was trained with, comma-separated "
                      f"(default ImageNet's, {','.join(map(str, IMAGENET_MEAN))})")
    init.add_argument("--std", default=None, help="channel standard deviations, comma-separated "
                      f"(default ImageNet's, {','.join(map(str, IMAGENET_STD))})")
    add_output_stride(init, ExpertMeta.output_stride)
    init.add_argument("--weights", default=None,
                      help=f"required from dualcam {renamed.REMOVED_IN} (until then none when not given, with a "
                      "notice): none, imagenet (torchvision's, downloaded on first use: needs internet) or a state "
                      "dict's path or s3:// URI: your model's (its last layer must have --num-outputs outputs), or "
                      "torchvision's ImageNet file copied from where there is internet; for "
                      "xrv-densenet121 and xrv-resnet50 also TorchXRayVision's published weights by name, e.g. "
                      "densenet121-res224-all (downloaded by torchxrayvision: pip install 'dualcam[xrv]')")
    init.add_argument("--output", required=True, help="checkpoint directory: a path or s3:// prefix")
    show = sub.add_parser("show", help="print a checkpoint's expert.json", epilog=exit_epilog(EXITS))
    show.add_argument("uri", help="checkpoint directory, or a folder of versions (latest shown): a path or s3:// "
                      "prefix")


def run(*, expert_command: str, **options: Any) -> int:
    commands: dict[str, Callable[..., int]] = {"init": init, "show": show}
    return commands[expert_command](**options)


def init(*, arch: str, class_name: str, num_outputs: int | None, class_index: int | None, class_names: str | None,
         activation: str | None, input_size: int | None, color_mode: str | None, resize: str | None,
         resize_size: int | None, mean: str | None, std: str | None, output_stride: int, weights: str | None,
         output: str) -> int:
    """``dualcam expert init``: write an expert checkpoint to ``output``, initialized from ``weights``. Flags not given
    take TorchXRayVision's preprocessing and outputs for its archs (``xrv.preprocessing``), else the defaults;
    xrv's weights' operating point for the class is recorded (``ExpertMeta.op_threshold``)."""
    check_output_folder(output, "--output")
    if weights is None:
        renamed.notice("expert init without --weights", "--weights none", "dualcam expert init")
        weights = "none"
    preset = xrv.preprocessing(arch) if xrv.is_xrv(arch) else {}
    outputs = class_outputs(class_name, num_outputs, class_index, class_names or preset.get("class_names"),
                            activation or preset.get("activation"))
    meta = ExpertMeta(arch=arch, class_name=class_name, input_size=input_size or preset.get("input_size",
                      Recipe.image_size), color_mode=color_mode or preset.get("color_mode", ExpertMeta.color_mode),
                      resize=resize or preset.get("resize", ExpertMeta.resize),
                      resize_size=resize_size or preset.get("resize_size"),
                      mean=tuple(floats(mean)) if mean else preset.get("mean", IMAGENET_MEAN),
                      std=tuple(floats(std)) if std else preset.get("std", IMAGENET_STD), output_stride=output_stride,
                      recipe={"init_weights": weights}, **outputs)
    model = build_expert(arch, weights, output_stride, meta.num_outputs)
    if xrv.is_xrv(arch):
        meta = dataclasses.replace(meta, op_threshold=xrv.operating_point(getattr(model, xrv.OP_THRESHS, None),
                                                                          meta.class_index))
    meta = save_expert(model, output, meta)
    point = f", operating point {meta.op_threshold:g}" if meta.op_threshold is not None else ""
    print(f"wrote expert {meta.class_name!r} (output {meta.class_index} of {meta.num_outputs}, {meta.activation}"
          f"{point}; {meta.arch}, {meta.input_size} px, weights {weights}) version {meta.version} to {output}")
    return 0


def class_outputs(class_name: str, num_outputs: int | None, class_index: int | None,
                  class_names: str | Sequence[str] | None, activation: str | None) -> dict[str, Any]:
    """``ExpertMeta``'s num_outputs, class_index, activation and class_names from ``expert init``'s flags, the
    defaults filled in (a binary softmax expert with the class at 1, as ``dualcam train`` makes); ValueError
    saying which flag is missing or wrong."""
    names = tuple(labels(class_names) or ())
    if names and class_name not in names:
        raise ValueError(f"--class-name {class_name!r} is not one of --class-names {', '.join(names)}")
    n = num_outputs if num_outputs is not None else len(names) or 2
    if class_index is None:
        if names:
            class_index = names.index(class_name)
        elif n in (1, 2):
            class_index = 0 if n == 1 else POSITIVE_INDEX
        else:
            raise ValueError(f"a model with {n} outputs needs --class-index or --class-names to say which is "
                             f"{class_name!r}")
    return {"num_outputs": n, "class_index": class_index, "class_names": names,
            "activation": activation or ("sigmoid" if n == 1 else "softmax")}


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
