"""Experts: one class of a torchvision classifier, and its checkpoint on disk or S3.

An expert checkpoint is a directory (local path or s3:// prefix) holding

* ``weights.pt``: the state dict, written by ``torch.save`` and read back only with
  ``torch.load(..., weights_only=True)``, so a checkpoint can never run code;
* ``expert.json``: everything needed to use the weights without guessing (``ExpertMeta``):
  architecture, class name, which output is the class and how its probability is read, input size,
  colour mode and channel normalization, plus provenance
  (created_at, version id, the weights' sha256, metrics, training-data fingerprint, recipe).

``expert.json`` is written last, so a directory without it is a save that did not finish, and a
directory with it is never written again: a version id always names the same weights.
An expert is (model, class): ``num_outputs`` outputs, of which ``class_index`` is the class, its
probability read by ``activation`` (and, for TorchXRayVision's models, its ``op_threshold``). Experts
``dualcam train`` makes, and checkpoints written before these fields existed, have 2 outputs, softmax,
class at ``POSITIVE_INDEX``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.error import URLError

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model_weights

from dualcam.io import storage
from dualcam.maps import architectures, xrv
from dualcam.maps.architectures import ARCHITECTURES, check_output_stride

SUPPORTED_ARCHS = tuple(ARCHITECTURES)
POSITIVE_INDEX = 1
"""The class's output in a binary expert (``dualcam train``'s, and the default)."""
ACTIVATIONS = ("softmax", "sigmoid")
RESIZES = ("whole", "center-crop")
CROP_FRACTION = 0.875
"""torchvision's ImageNet presets: the centre crop is 87.5% of the resized short side (224 of 256)."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CLASSES = 1000
META_FILE = "expert.json"
WEIGHTS_FILE = "weights.pt"
FORMAT_VERSION = 3
"""2: num_outputs, class_index, activation, class_names, resize and resize_size (absent from a format 1 file: 2, 1,
softmax, none, whole). 3: op_threshold (absent: none)."""


class CheckpointError(ValueError):
    """An expert checkpoint or weights file that cannot be used; names the URI and the cause."""

    def __init__(self, uri: str, reason: str):
        super().__init__(f"{uri}: {reason}")
        self.uri, self.reason = uri, reason


@dataclass
class ExpertMeta:
    """What ``expert.json`` holds. Only arch, class_name and input_size must be given.

    ``color_mode`` "L" turns every image to grayscale and repeats it over the 3 input channels (so
    an X-ray stored as RGB and as L give the same input); "RGB" keeps colour.
    ``output_stride`` 16 keeps a ResNet's last stage at the previous stage's resolution, doubling
    the CAM grid on each side (224 px: 14x14 instead of 7x7); see ``build_expert``.
    The model has ``num_outputs`` outputs; the expert's class is output ``class_index`` (named
    ``class_names[class_index]`` where the names are recorded), its probability the ``activation``
    (``softmax`` over all outputs, or ``sigmoid`` of its own) of the logits, its CAM the raw one of
    that output (``dualcam.maps.cam``).
    ``resize`` is how an image becomes the S x S input (S = ``input_size``): ``whole`` resizes all of it
    to S x S (every pixel reaches a CAM cell); ``center-crop`` resizes its short side to ``resize_size``
    (default round(S / 0.875): 256 for 224) and takes the centre S x S, as torchvision's
    ``Resize(resize_size) + CenterCrop(S)`` (``imaging.input_window``).
    ``op_threshold``: TorchXRayVision's operating point for the class (its weights' ``op_threshs``), which its
    probability is calibrated to after the sigmoid (``dualcam.maps.xrv``); None: the activation alone.
    """

    arch: str
    class_name: str
    input_size: int
    color_mode: str = "L"
    output_stride: int = 32
    num_outputs: int = 2
    class_index: int = POSITIVE_INDEX
    activation: str = "softmax"
    class_names: tuple[str, ...] = ()
    resize: str = "whole"
    resize_size: int | None = None
    op_threshold: float | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    created_at: str = ""
    version: str = ""
    sha256: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        architectures.family(self.arch)
        if not isinstance(self.input_size, int) or self.input_size < 32:
            raise ValueError(f"input_size must be an integer >= 32 pixels, got {self.input_size!r}")
        if self.color_mode not in ("L", "RGB"):
            raise ValueError(f"color_mode must be 'L' or 'RGB', got {self.color_mode!r}")
        if xrv.is_xrv(self.arch) and self.color_mode != "L":
            raise ValueError(f"{self.arch} takes one grey channel: color_mode must be 'L'")
        if not self.class_name:
            raise ValueError("class_name must not be empty")
        check_output_stride(self.arch, self.output_stride)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got {self.mean} and {self.std}")
        self._check_outputs()
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {', '.join(RESIZES)}, got {self.resize!r}")
        if self.resize_size is not None and (self.resize != "center-crop" or not isinstance(self.resize_size, int)
                                             or self.resize_size < self.input_size):
            raise ValueError(f"resize_size is for resize center-crop only, an integer >= input_size "
                             f"{self.input_size}; got {self.resize_size!r} with resize {self.resize}")

    @property
    def resized_side(self) -> int:
        """The side an image is resized to before any crop: S for ``whole``; the short side's for ``center-crop``."""
        if self.resize == "whole":
            return self.input_size
        return self.resize_size or round(self.input_size / CROP_FRACTION)

    def _check_outputs(self) -> None:
        """ValueError unless num_outputs, class_index, activation and class_names describe one output."""
        n, k = self.num_outputs, self.class_index
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"num_outputs must be an integer >= 1, got {n!r}")
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < n:
            raise ValueError(f"class_index must be an integer from 0 to num_outputs - 1 = {n - 1}, got {k!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.activation == "softmax" and n < 2:
            raise ValueError("softmax needs num_outputs >= 2; a single-logit model's probability is its sigmoid")
        t = self.op_threshold
        if t is not None and (self.activation != "sigmoid" or not isinstance(t, float) or not 0 < t < 1):
            raise ValueError(f"op_threshold is an operating point after a sigmoid, in (0, 1); got {t!r} with "
                             f"activation {self.activation}")
        self.class_names = tuple(self.class_names)
        if self.class_names and len(self.class_names) != n:
            raise ValueError(f"class_names has {len(self.class_names)} names for num_outputs {n}")
        if self.class_names and self.class_names[k] != self.class_name:
            raise ValueError(f"class_names[{k}] is {self.class_names[k]!r}, not class_name {self.class_name!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExpertMeta:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown expert metadata keys: {', '.join(unknown)}")
        missing = sorted({"arch", "class_name", "input_size"} - set(data))
        if missing:
            raise ValueError(f"expert metadata lacks {', '.join(missing)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Expert:
    """A loaded expert: the model (eval mode), its metadata and where it came from."""

    model: nn.Module
    meta: ExpertMeta
    uri: str


def imagenet_weights(arch: str) -> WeightsEnum:
    """torchvision's default ImageNet weights for ``arch`` (what ``weights="imagenet"`` loads)."""
    architectures.family(arch)
    return get_model_weights(arch).DEFAULT


def build_expert(arch: str, weights: str | None = None, output_stride: int = 32, num_outputs: int = 2) -> nn.Module:
    """A torchvision ``arch`` whose final layer has ``num_outputs`` outputs (2: a binary expert, index 1 = in-class).

    ``weights``: None (random init); ``"imagenet"`` (torchvision's pretrained weights, downloaded
    into torch's hub cache on first use; a fresh head); or a path or s3:// URI to a state dict for the
    same arch: either ImageNet's 1000-class one (for clusters without internet; a fresh head) or one
    whose head has ``num_outputs`` outputs, loaded whole. Any other head size is refused, naming both
    shapes: a trained head is never silently replaced. TorchXRayVision's archs take xrv's state dicts (their
    ``op_threshs`` kept on the model as a buffer that ``state_dict`` leaves out) or the name of its published
    weights (``xrv.PUBLISHED``, downloaded by xrv), not ``imagenet``.

    ``output_stride`` 16 (ResNets only) gives a finer CAM grid with the same parameters, so any
    ResNet weights still load (how: ``dualcam.maps.architectures``).
    """
    check_output_stride(arch, output_stride)
    if weights in (None, "none"):
        return architectures.with_head(architectures.build(arch, output_stride, weights=None), num_outputs)
    if weights == "imagenet" and xrv.is_xrv(arch):
        raise ValueError(f"{arch} has no ImageNet weights: give a state dict or one of "
                         f"{', '.join(xrv.PUBLISHED[arch])}")
    if weights == "imagenet":
        return architectures.with_head(_imagenet_model(arch, output_stride), num_outputs)
    if not xrv.is_xrv(arch):
        return _loaded(arch, _read_state_dict(weights), weights, output_stride, num_outputs)
    published = weights in xrv.PUBLISHED[arch]
    state, points = xrv.torchvision_state(
        xrv.published_state(arch, weights) if published else _read_state_dict(weights))
    model = _loaded(arch, state, weights, output_stride, num_outputs)
    if points is not None:
        model.register_buffer(xrv.OP_THRESHS, points, persistent=False)
    return model


def _loaded(arch: str, state: dict[str, torch.Tensor], weights: str, output_stride: int, num_outputs: int) -> nn.Module:
    """``arch`` with ``state`` loaded: whole, or ImageNet's 1000-class one under a fresh head of ``num_outputs``."""
    head = architectures.family(arch).head
    n_out = state[f"{head}.weight"].shape[0] if f"{head}.weight" in state else None
    imagenet = n_out == IMAGENET_CLASSES and num_outputs != IMAGENET_CLASSES
    model = _skeleton(arch, num_classes=IMAGENET_CLASSES if imagenet else num_outputs, output_stride=output_stride)
    _load_into(model, state, weights, arch)
    return architectures.with_head(model, num_outputs) if imagenet else model


def save_expert(model: nn.Module, uri: str, meta: ExpertMeta | Mapping[str, Any]) -> ExpertMeta:
    """Write ``model`` as an expert checkpoint at ``uri``, which must not hold one yet.

    created_at, version and sha256 are filled in here; the version id is
    ``<UTC time>-<first 8 hex of sha256>``, unique per saved content and sortable by time.
    """
    data, meta = _versioned(model, meta, uri)
    _write_checkpoint(uri, data, meta)
    return meta


def save_expert_version(model: nn.Module, root: str, meta: ExpertMeta | Mapping[str, Any]) -> tuple[str, ExpertMeta]:
    """Write ``model`` as a new version under ``root``: ``<root>/<version>/``. Returns (uri, meta)."""
    data, meta = _versioned(model, meta, root)
    uri = storage.join(root, meta.version)
    _write_checkpoint(uri, data, meta)
    return uri, meta


def _versioned(model: nn.Module, meta: ExpertMeta | Mapping[str, Any], uri: str) -> tuple[bytes, ExpertMeta]:
    meta = meta if isinstance(meta, ExpertMeta) else ExpertMeta.from_dict(meta)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _check_fits(state, meta, uri)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    digest = hashlib.sha256(data).hexdigest()
    meta = dataclasses.replace(meta, created_at=now.isoformat(), version=f"{now:%Y%m%dT%H%M%SZ}-{digest[:8]}",
                               sha256=digest)
    return data, meta


def _write_checkpoint(uri: str, data: bytes, meta: ExpertMeta) -> None:
    if storage.exists(storage.join(uri, META_FILE)):
        raise CheckpointError(uri, "already holds an expert checkpoint; checkpoints are immutable, save to a new "
                              "directory")
    storage.write_bytes(storage.join(uri, WEIGHTS_FILE), data)
    storage.write_bytes(storage.join(uri, META_FILE), json.dumps(meta.to_dict(), indent=2).encode())


def list_versions(root: str) -> list[str]:
    """The checkpoints directly under ``root``, oldest first (version ids sort by time)."""
    try:
        files = storage.list_files(root)
    except FileNotFoundError:
        return []
    prefix = root.rstrip("/") + "/"
    names = {f[len(prefix):] for f in files if f.startswith(prefix)}
    versions = {n.split("/")[0] for n in names if n.count("/") == 1 and n.endswith("/" + META_FILE)}
    return [storage.join(root, v) for v in sorted(versions)]


def latest_version(root: str) -> str | None:
    """The newest checkpoint directly under ``root``, or None."""
    versions = list_versions(root)
    return versions[-1] if versions else None


def resolve_expert(uri: str) -> str:
    """``uri`` if it is a checkpoint; if it is a folder of versions (``<output>/<class>/`` as
    ``train`` writes them), its latest version. Anything else is returned as is, so loading it
    fails with the usual clear error."""
    if storage.exists(storage.join(uri, META_FILE)):
        return uri
    return latest_version(uri) or uri


def load_meta(uri: str) -> ExpertMeta:
    """Read and validate ``expert.json`` alone (cheap: no weights)."""
    try:
        raw = storage.read_bytes(storage.join(uri, META_FILE))
    except FileNotFoundError:
        raise CheckpointError(uri, f"no {META_FILE}: not an expert checkpoint, or a save that did not finish") from None
    except OSError as err:
        raise CheckpointError(uri, f"cannot read {META_FILE}: {err}") from None
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise CheckpointError(uri, f"{META_FILE} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(uri, f"{META_FILE} must hold a JSON object")
    version = data.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int):
        raise CheckpointError(uri, f"{META_FILE}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(uri, f"written by a newer dualcam (format {version}); upgrade dualcam")
    try:
        return ExpertMeta.from_dict(data)
    except (TypeError, ValueError) as err:
        raise CheckpointError(uri, f"{META_FILE}: {err}") from None


def load_expert(uri: str, device: str | torch.device = "cpu") -> Expert:
    """Load an expert checkpoint, checking its content hash and architecture; model in eval mode."""
    meta = load_meta(uri)
    weights_uri = storage.join(uri, WEIGHTS_FILE)
    try:
        data = storage.read_bytes(weights_uri)
    except FileNotFoundError:
        raise CheckpointError(uri, f"{WEIGHTS_FILE} is missing") from None
    except OSError as err:
        raise CheckpointError(uri, f"cannot read {WEIGHTS_FILE}: {err}") from None
    if not meta.sha256:
        raise CheckpointError(uri, f"{META_FILE} has no sha256, so {WEIGHTS_FILE} cannot be verified")
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta.sha256:
        raise CheckpointError(
            uri,
            f"{WEIGHTS_FILE} is truncated or altered ({len(data)} bytes, sha256 {digest[:12]}..., "
            f"{META_FILE} says {meta.sha256[:12]}...)",
        )
    model = _skeleton(meta.arch, meta.num_outputs, meta.output_stride)
    _load_into(model, _parse_state_dict(data, weights_uri), uri, meta.arch)
    return Expert(model=model.to(device).eval(), meta=meta, uri=uri)


def _imagenet_model(arch: str, output_stride: int) -> nn.Module:
    """``architectures.build`` with torchvision's ImageNet weights (from torch's hub cache, else downloaded); an
    OSError that says what to do where there is no internet."""
    weights = imagenet_weights(arch)
    try:
        return architectures.build(arch, output_stride, weights=weights)
    except URLError as err:  # no internet, no DNS, a proxy: torch.hub could not download them
        raise OSError(
            f"could not download torchvision's ImageNet weights for {arch} ({weights.url}: "
            f"{getattr(err, 'reason', err)}). --weights also takes a state dict's path or s3:// URI: download that "
            f"file where there is internet (or copy it from {torch.hub.get_dir()}/checkpoints/ of a machine "
            "that has it) and give its path"
        ) from None


def _skeleton(arch: str, num_classes: int = 2, output_stride: int = 32) -> nn.Module:
    """The network's structure with no storage allocated; weights are assigned on load (fast)."""
    with torch.device("meta"):
        return architectures.build(arch, output_stride, weights=None, num_classes=num_classes)


def _check_fits(state: Mapping[str, torch.Tensor], meta: ExpertMeta, uri: str) -> None:
    _load_into(_skeleton(meta.arch, meta.num_outputs, meta.output_stride), state, uri, meta.arch)


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], uri: str, arch: str) -> None:
    """Assign ``state`` to ``model``'s skeleton; a head of another size, or any other misfit, is a CheckpointError."""
    head = architectures.family(arch).head
    want, got = architectures.head(model).weight.shape, state.get(f"{head}.weight")
    if got is not None and got.shape[1:] == want[1:] and got.shape != want:
        raise CheckpointError(
            uri, f"its head {head}.weight has shape {tuple(got.shape)} ({got.shape[0]} outputs), but the expert's "
            f"{arch} head has shape {tuple(want)} ({want[0]} outputs): give num_outputs {got.shape[0]} "
            "(expert init --num-outputs) if that is the model")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise CheckpointError(uri, f"weights do not fit arch {arch!r}: {detail[:400]}") from None


# torchvision's published DenseNet files use old key names ("norm.1"); its loader renames them.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _parse_state_dict(data: bytes, uri: str) -> dict[str, torch.Tensor]:
    """A plain float32 state dict with torchvision's key names, from untrusted bytes."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = " ".join(str(err).split())[:300]
        if "weights only load failed" in reason.lower():
            raise CheckpointError(uri, "holds pickled objects other than tensors; refused by weights_only loading "
                                  f"({reason})") from None
        raise CheckpointError(uri, f"not a readable torch weights file ({reason})") from None
    except Exception as err:  # torch.load raises many types on arbitrary bytes
        raise CheckpointError(uri, f"not a readable torch weights file ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(uri, "does not hold a state dict (a mapping of names to tensors)")
    for wrapper in ("module.", "_orig_mod."):  # DistributedDataParallel, torch.compile
        if state and all(k.startswith(wrapper) for k in state):
            state = {k[len(wrapper):]: v for k, v in state.items()}
    return {
        _OLD_DENSENET_KEY.sub(r"\1\2", k): v.float() if v.is_floating_point() else v
        for k, v in state.items()
    }


def _read_state_dict(uri: str) -> dict[str, torch.Tensor]:
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise CheckpointError(uri, "weights file not found") from None
    except OSError as err:
        raise CheckpointError(uri, f"cannot read weights: {err}") from None
    return _parse_state_dict(data, uri)
