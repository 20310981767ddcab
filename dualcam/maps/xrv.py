"""TorchXRayVision's chest X-ray classifiers as experts: its DenseNet-121 (``xrv-densenet121``, 224 px) and
ResNet-50 (``xrv-resnet50``, 512 px), 18 pathologies, one input channel.

Each is a torchvision network with a one-channel stem that ends in ReLU (DenseNet), global average pooling and
one linear layer, so dualcam builds it from torchvision (``architectures``) and its CAM is exact for the
classifier's logits: a pathology's mean CAM plus its bias is the logit of xrv's ``classifier`` (DenseNet) or
``model.fc`` (ResNet). xrv reads a probability as the sigmoid of that logit, then, where the weights carry
``op_threshs``, ``op_norm``: piecewise linear in the sigmoid, taking the pathology's operating point to 0.5.
Both steps are increasing in the logit, so the CAM explains what ranks the probability, and the operating point
is recorded per expert (``ExpertMeta.op_threshold``; ``probability``).

xrv's inference preprocessing is ``normalize(img, 255)`` (8 bits to [-1024, 1024]: (2 v / 255 - 1) * 1024), one
channel, ``XRayCenterCrop`` (the centre square of the short side) and ``XRayResizer(S)``. dualcam's [0, 1]
values v / 255 normalized with mean 0.5 and std 1/2048 are that scaling bit for bit, and ``center-crop`` with
the short side resized to S is that square (``PREPROCESSING``). Two differences remain where an image must be
resized or its crop offset is odd: xrv resamples with scikit-image (Gaussian prefilter, then bilinear) where
dualcam uses torch's antialiased bilinear, and xrv floors the crop offset where dualcam rounds half to even, as
torchvision's ``CenterCrop`` (at most one pixel at S). tests/test_xrv.py measures both.

The ``torchxrayvision`` package is needed only to download the published weights (``published_state``;
``pip install 'dualcam[xrv]'``); scoring needs torchvision alone.
"""

from __future__ import annotations

from typing import Any

import torch

from dualcam.maps.architectures import XRV_BASES

PATHOLOGIES = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis", "Effusion",
    "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia", "Lung Lesion", "Fracture",
    "Lung Opacity", "Enlarged Cardiomediastinum",
)
"""The outputs of every published xrv head, in order (``xrv.datasets.default_pathologies``); weights trained on
one dataset leave some untrained, and carry no operating point (NaN) for them."""
INPUT_SIZES = {"xrv-densenet121": 224, "xrv-resnet50": 512}
PUBLISHED = {
    "xrv-densenet121": tuple(f"densenet121-res224-{data}" for data in
                             ("all", "rsna", "nih", "pc", "chex", "mimic_nb", "mimic_ch")),
    "xrv-resnet50": ("resnet50-res512-all",),
}
"""xrv's names of its published weights (``xrv.models.model_urls``), which ``expert init --weights`` takes."""
OP_THRESHS = "op_threshs"
"""xrv's buffer of per-output operating points, in its state dicts beside the network's weights."""


def is_xrv(arch: str) -> bool:
    return arch in XRV_BASES


def preprocessing(arch: str) -> dict[str, Any]:
    """``ExpertMeta``'s input fields for xrv's ``arch``: its input size, one grey channel, its centre square
    resized to that size, and its 8-bit scaling as mean and std; with its outputs (18, sigmoid, their names)."""
    size = INPUT_SIZES[arch]
    return {"input_size": size, "color_mode": "L", "resize": "center-crop", "resize_size": size,
            "mean": (0.5,) * 3, "std": (1 / 2048,) * 3, "num_outputs": len(PATHOLOGIES), "activation": "sigmoid",
            "class_names": PATHOLOGIES}


def torchvision_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """An xrv state dict as the torchvision network's (its ResNet's ``model.`` prefix dropped), and its
    ``op_threshs`` (None if it has none)."""
    state = dict(state)
    points = state.pop(OP_THRESHS, None)
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    return state, points


def operating_point(points: torch.Tensor | None, class_index: int) -> float | None:
    """The class's operating point among ``op_threshs``, or None without them; ValueError where the weights have
    none for it (NaN: an output those weights were not trained for)."""
    if points is None:
        return None
    point = float(points[class_index])
    if point != point:
        raise ValueError(f"these weights have no operating point for output {class_index} "
                         f"({PATHOLOGIES[class_index]}): they were not trained for it")
    return point


def probability(p: torch.Tensor, op_threshold: float) -> torch.Tensor:
    """xrv's ``op_norm`` of sigmoid probabilities ``p`` for one operating point t: p / 2t below t, else
    1 - (1 - p) / 2(1 - t)."""
    return torch.where(p < op_threshold, p / (2 * op_threshold), 1 - (1 - p) / (2 * (1 - op_threshold)))


def published_state(arch: str, weights: str, cache_dir: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict of xrv's published ``weights`` for ``arch``, downloaded by xrv into ``cache_dir`` (default
    ``~/.torchxrayvision``) on first use; needs the extra."""
    try:
        import torchxrayvision as xrv
    except ImportError:
        raise ImportError(f"--weights {weights} needs TorchXRayVision: pip install 'dualcam[xrv]'") from None
    build = xrv.models.DenseNet if arch == "xrv-densenet121" else xrv.models.ResNet
    return {k: v.detach() for k, v in build(weights=weights, cache_dir=cache_dir).state_dict().items()}
