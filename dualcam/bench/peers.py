"""``make peers``: dualcam's CAMs beside the CAM libraries people already trust, same expert, same X-rays.

For an expert that ends in global average pooling and one linear layer (weights w, bias b), each peer's map at the
feature grid is dualcam's raw CAM after one known transform, so the check is an identity, not a resemblance:

* MONAI's ``CAM`` applies the head's linear layer at every cell, bias included: CAM + b[c];
* pytorch-grad-cam's ``GradCAM`` and Captum's ``LayerGradCam`` on the last convolutional block weight each channel
  by its gradient averaged over the grid, and that gradient is w[c, k] / (h*w) at every cell, so before their ReLU
  they give CAM / (h*w) (and, after it, ReLU(CAM) / (h*w), since h*w > 0).

Each peer's map is read at the grid: MONAI's with its upsampler and postprocessing replaced by identities;
pytorch-grad-cam's channel-weighted sum as its own ``get_cam_image`` returns it, before the ReLU, min-max scaling
and resize its ``__call__`` applies next (no option returns it: its issue #267); Captum's as ``attribute`` returns it
(``relu_attributions=False``, no interpolation). A difference larger than ``TOLERANCE`` is a failure (exit 1).

Then images/s of each library computing both experts' in-class maps, every library called as its users call it,
with its defaults (MONAI's upsampled and min-max scaled maps, under ``torch.no_grad``; pytorch-grad-cam's upsampled,
scaled numpy maps; Captum's grid maps), each on its own copy of each expert, so no library's hooks touch another's
run. Rounds are interleaved after a warm-up of each; the best round of each counts, for wall time (images/s) and
for this process's CPU time (ms per image, less sensitive to other jobs on a shared machine) apart.

The peers are the optional extra ``peers`` (``make peers`` installs them into ``.venv``); one that does not import
is named and its rows left out. Run ``python -m dualcam.bench.peers --help``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models import ResNet

from dualcam.io.checkpoints import POSITIVE_INDEX, ExpertMeta, build_expert, load_expert, resolve_expert
from dualcam.io.imaging import IMAGE_SUFFIXES, model_input
from dualcam.maps.architectures import family_of, head
from dualcam.maps.cam import forward_with_cams

TOLERANCE = 1e-5
"""Largest |peer - expected| allowed, as a fraction of the expected map's largest |value|: about 80 float32
rounding steps (2**-23 each), room for summing 512 to 2048 channels in another order; a transform left out (the bias,
the 1/(h*w)) is off by orders of magnitude more."""

LAST_BLOCK = "layer4"
"""The ResNet module whose output is the features the head pools: what the peers hook."""

Map = Callable[[nn.Module, torch.Tensor], torch.Tensor]
"""(expert, (B, 3, S, S) input) -> (B, h, w) in-class map at the feature grid."""


def monai_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MONAI's ``CAM`` before its upsampling and postprocessing (both replaced by identities)."""
    from monai.visualize import CAM

    def identity(t: torch.Tensor) -> torch.Tensor:
        return t

    cam = CAM(nn_module=copy.deepcopy(model), target_layers=LAST_BLOCK, fc_layers=family_of(model).head,
              upsampler=lambda _size: identity, postprocessing=identity)
    with torch.no_grad():
        return cam(x, class_idx=[POSITIVE_INDEX] * len(x))[:, 0]


def grad_cam_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ``GradCAM``: the channel-weighted sum its ``get_cam_image`` returns, before its ReLU."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class KeepsRawMap(GradCAM):
        raw: np.ndarray

        def get_cam_image(self, *args: object, **kwargs: object) -> np.ndarray:
            self.raw = super().get_cam_image(*args, **kwargs)
            return self.raw

    model = copy.deepcopy(model)
    with KeepsRawMap(model=model, target_layers=[getattr(model, LAST_BLOCK)]) as cam:
        cam(input_tensor=x, targets=[ClassifierOutputTarget(POSITIVE_INDEX)] * len(x))
        return torch.from_numpy(cam.raw)


def captum_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Captum's ``LayerGradCam`` as ``attribute`` returns it: at the grid, without ReLU."""
    from captum.attr import LayerGradCam

    model = copy.deepcopy(model)
    return LayerGradCam(model, getattr(model, LAST_BLOCK)).attribute(x, target=POSITIVE_INDEX).detach()[:, 0]


def monai_call(model: nn.Module) -> Callable[[torch.Tensor], object]:
    """MONAI's ``CAM`` with its defaults, on its own copy of ``model``: what the timing runs."""
    from monai.visualize import CAM

    cam = CAM(nn_module=copy.deepcopy(model), target_layers=LAST_BLOCK, fc_layers=family_of(model).head)

    def call(x: torch.Tensor) -> object:
        with torch.no_grad():  # no backward needed: MONAI's best case
            return cam(x, class_idx=[POSITIVE_INDEX] * len(x))

    return call


def grad_cam_call(model: nn.Module) -> Callable[[torch.Tensor], object]:
    """pytorch-grad-cam's ``GradCAM`` with its defaults, on its own copy of ``model``."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = copy.deepcopy(model)
    cam = GradCAM(model=model, target_layers=[getattr(model, LAST_BLOCK)])
    return lambda x: cam(input_tensor=x, targets=[ClassifierOutputTarget(POSITIVE_INDEX)] * len(x))


def captum_call(model: nn.Module) -> Callable[[torch.Tensor], object]:
    """Captum's ``LayerGradCam`` with its defaults, on its own copy of ``model``."""
    from captum.attr import LayerGradCam

    model = copy.deepcopy(model)
    cam = LayerGradCam(model, getattr(model, LAST_BLOCK))
    return lambda x: cam.attribute(x, target=POSITIVE_INDEX)


def dualcam_call(model: nn.Module) -> Callable[[torch.Tensor], object]:
    """dualcam's closed form, on its own copy of ``model`` as the others: one forward, no hooks, no backward."""
    model = copy.deepcopy(model)

    def call(x: torch.Tensor) -> object:
        with torch.inference_mode():
            return forward_with_cams(model, x)[1][:, POSITIVE_INDEX]

    return call


def _plus_bias(cam: torch.Tensor, model: nn.Module) -> torch.Tensor:
    return cam + head(model).bias.detach()[POSITIVE_INDEX]


def _over_cells(cam: torch.Tensor, model: nn.Module) -> torch.Tensor:
    return cam / (cam.shape[-2] * cam.shape[-1])


@dataclass(frozen=True)
class Peer:
    """A CAM library: how to read its map at the grid, what dualcam's CAM must become to equal it, how it is timed."""

    name: str
    module: str
    """The package it imports as; its ``peers`` extra installs it."""
    transform: str
    expected: Callable[[torch.Tensor, nn.Module], torch.Tensor]
    """(dualcam's (B, h, w) CAM, expert) -> the map the peer must return."""
    at_grid: Map
    call: Callable[[nn.Module], Callable[[torch.Tensor], object]]


PEERS = (
    Peer("MONAI CAM", "monai", "CAM + b[1]", _plus_bias, monai_map, monai_call),
    Peer("pytorch-grad-cam GradCAM", "pytorch_grad_cam", "CAM / (h*w), before ReLU", _over_cells, grad_cam_map,
         grad_cam_call),
    Peer("Captum LayerGradCam", "captum", "CAM / (h*w), before ReLU", _over_cells, captum_map, captum_call),
)


def available(peers: tuple[Peer, ...] = PEERS) -> tuple[list[Peer], dict[str, str]]:
    """The peers that import here, and why each other one does not (its row is left out)."""
    ok, missing = [], {}
    for peer in peers:
        try:
            importlib.import_module(peer.module)
            ok.append(peer)
        except Exception as err:  # not installed, or broken against this torch: either way it cannot run here
            missing[peer.name] = f"{type(err).__name__}: {err}"
    return ok, missing


@dataclass(frozen=True)
class Agreement:
    """How far a peer's map is from dualcam's CAM after the peer's transform, over every image of both experts."""

    peer: str
    transform: str
    max_abs: float
    max_rel: float
    """``max_abs`` over the expected map's largest |value| (per expert; the larger of the two)."""

    @property
    def holds(self) -> bool:
        return self.max_rel <= TOLERANCE


def agreement(peer: Peer, models: list[nn.Module], x: torch.Tensor) -> Agreement:
    """``peer``'s map against dualcam's transformed CAM on the same ``x`` (B, 3, S, S), for each model."""
    max_abs = max_rel = 0.0
    for model in models:
        with torch.inference_mode():
            cam = forward_with_cams(model, x)[1][:, POSITIVE_INDEX]
        expected = peer.expected(cam, model)
        got = peer.at_grid(model, x)
        if got.shape != expected.shape:
            raise ValueError(f"{peer.name} returned maps of shape {tuple(got.shape)}, dualcam {tuple(cam.shape)}")
        diff = float((got.double() - expected.double()).abs().max())
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / float(expected.abs().max()))
    return Agreement(peer.name, peer.transform, max_abs, max_rel)


@dataclass(frozen=True)
class Rate:
    """One library's speed: wall-clock images/s, and this process's CPU milliseconds per image (all its threads),
    which other jobs on a shared machine inflate far less than wall time."""

    images_per_second: float
    cpu_ms_per_image: float


def rates(calls: dict[str, list[Callable[[torch.Tensor], object]]], batches: list[torch.Tensor], repeat: int,
          ) -> dict[str, Rate]:
    """Each library's calls (one per expert) over ``batches``: a warm-up each, then ``repeat`` interleaved rounds;
    the best round of each counts, for wall and CPU time apart (this machine's noise is one-sided: other jobs)."""
    images = sum(len(b) for b in batches)
    wall, cpu = dict.fromkeys(calls, float("inf")), dict.fromkeys(calls, float("inf"))
    for pair in calls.values():
        for call in pair:
            call(batches[0])
    for _ in range(repeat):
        for name, pair in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            for batch in batches:
                for call in pair:
                    call(batch)
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
    return {name: Rate(images / wall[name], 1000 * cpu[name] / images) for name in calls}


def experts(c1: str, c2: str) -> tuple[list[nn.Module], ExpertMeta, str]:
    """The two experts (checkpoints: ``make demo``'s trained ones by default), or, where neither path exists, two
    randomly initialized resnet18 experts at 224 px, said on stderr; their models (eval mode), input metadata and
    a description."""
    try:
        loaded = [load_expert(resolve_expert(uri)) for uri in (c1, c2)]
    except ValueError as err:
        if Path(c1).exists() or Path(c2).exists():
            raise
        print(f"dualcam peers: no experts at {c1} and {c2} ({err}); using an untrained resnet18 pair: "
              "run make demo first for trained ones", file=sys.stderr)
        models = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            models.append(build_expert("resnet18").eval())
        return models, ExpertMeta(arch="resnet18", class_name="random", input_size=224), "untrained resnet18 pair"
    meta = loaded[0].meta
    return [e.model for e in loaded], meta, f"{loaded[0].uri} and {loaded[1].uri} ({meta.arch})"


def xrays(samples: Path, n: int, meta: ExpertMeta) -> torch.Tensor:
    """(n, 3, S, S): ``n`` of the sample X-rays, evenly spaced in name order, through ``model_input``."""
    folder = samples / "images"
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if len(paths) < n:
        raise FileNotFoundError(f"{folder} holds {len(paths)} X-rays, {n} asked for (--samples, --n)")
    chosen = [paths[i * len(paths) // n] for i in range(n)]
    return torch.stack([model_input(p.read_bytes(), str(p), meta)[0] for p in chosen])


def run(args: argparse.Namespace) -> int:
    """The identities, then the timings; 1 where an identity fails or no peer imports."""
    peers, missing = available()
    for name, why in missing.items():
        print(f"dualcam peers: {name} left out, it does not import here ({why}); make peers installs the peers")
    if not peers:
        print("dualcam peers: no peer to compare with", file=sys.stderr)
        return 1
    models, meta, described = experts(args.expert1, args.expert2)
    if not all(isinstance(m, ResNet) for m in models):
        raise ValueError(f"the peers hook a ResNet's {LAST_BLOCK}; {meta.arch} is not one")
    x = xrays(args.samples, args.n, meta)
    with torch.inference_mode():
        grid = tuple(forward_with_cams(models[0], x[:1])[1].shape[-2:])
    print(f"dualcam peers: {described}, {meta.input_size} px, {grid[0]}x{grid[1]} grid; {len(x)} X-rays from "
          f"{args.samples}; torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    agreements = [agreement(peer, models, x) for peer in peers]
    print_agreements(agreements, len(x))
    batches = list(torch.split(x, args.batch_size))
    calls = {"dualcam forward_with_cams": [dualcam_call(m) for m in models]}
    calls.update({peer.name: [peer.call(m) for m in models] for peer in peers})
    print_rates(rates(calls, batches, args.repeat), args.batch_size, args.repeat)
    failed = [a for a in agreements if not a.holds]
    for a in failed:
        print(f"dualcam peers: FAILED: {a.peer} differs from {a.transform} by {a.max_abs:.3g} "
              f"({a.max_rel:.3g} of the map's largest value; tolerance {TOLERANCE:g})", file=sys.stderr)
    return 1 if failed else 0


def print_agreements(agreements: list[Agreement], images: int) -> None:
    print(f"identities at the feature grid, {images} images x 2 experts, float32; tolerance: max |diff| <= "
          f"{TOLERANCE:g} x the expected map's largest |value|")
    print(f"  {'peer':26s} {'equals dualcam CAM as':26s} {'max |diff|':>11s} {'relative':>10s}")
    for a in agreements:
        print(f"  {a.peer:26s} {a.transform:26s} {a.max_abs:11.2e} {a.max_rel:10.2e}  "
              + ("holds" if a.holds else "FAILS"))


def print_rates(measured: dict[str, Rate], batch_size: int, repeat: int) -> None:
    base = measured["dualcam forward_with_cams"]
    print(f"both experts' in-class maps, batch {batch_size}, best of {repeat} interleaved rounds")
    print(f"  {'library':26s} {'images/s':>9s} {'ratio to dualcam':>17s} {'CPU ms/image':>13s} {'ratio':>7s}")
    for name, rate in measured.items():
        print(f"  {name:26s} {rate.images_per_second:9.1f} {rate.images_per_second / base.images_per_second:17.3f} "
              f"{rate.cpu_ms_per_image:13.1f} {rate.cpu_ms_per_image / base.cpu_ms_per_image:7.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualcam.bench.peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--expert1", default=".demo/experts/C1",
                        help="expert 1 (default: make demo's, .demo/experts/C1)")
    parser.add_argument("--expert2", default=".demo/experts/C2",
                        help="expert 2 (default: make demo's, .demo/experts/C2)")
    parser.add_argument("--samples", type=Path,
                        default=Path(os.environ.get("DUALCAM_XRAY_SAMPLES", "../shared/data/xray")),
                        help="the sample X-rays (default ../shared/data/xray)")
    parser.add_argument("--n", type=int, default=16, help="X-rays compared and timed (default 16)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per call (default 16)")
    parser.add_argument("--repeat", type=int, default=10, help="timed rounds per library, interleaved (default 10)")
    args = parser.parse_args(argv)
    if min(args.n, args.batch_size, args.repeat) < 1:
        parser.error("--n, --batch-size and --repeat must be at least 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
