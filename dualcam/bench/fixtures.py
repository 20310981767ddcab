"""Sample experts and X-rays for the benches (and the tests): randomly initialized expert pairs, and
chest-like images at the size of a real radiograph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dualcam.io.checkpoints import ExpertMeta, build_expert, save_expert
from dualcam.synthetic.scenarios import synthetic_xray

REAL_SIZE = (2500, 2048)
"""(rows, columns) of the generated real-size inputs: a 43 x 35 cm cassette at 0.17 mm, a common CR/DX size."""


def random_experts(root: str | Path, arch: str = "resnet18", size: int = 224, seed: int = 0) -> tuple[str, str]:
    """Two randomly initialized experts (seeds ``seed`` and ``seed + 1``) saved under ``root``; their URIs."""
    uris = []
    for i, name in enumerate(("c1", "c2")):
        torch.manual_seed(seed + i)
        uri = str(Path(root) / name)
        save_expert(build_expert(arch), uri, ExpertMeta(arch=arch, class_name=name, input_size=size))
        uris.append(uri)
    return uris[0], uris[1]


def real_size_xray(rng: np.random.Generator, size: tuple[int, int] = REAL_SIZE) -> np.ndarray:
    """A chest-like float64 image in [0, 1] of ``size`` (rows, columns): the anatomy drawn at a
    quarter of the size and upsampled, fine noise added at full size, so that files of it
    compress about as radiographs do (a 2500 x 2048 JPEG at quality 90 is about 1 MB)."""
    anatomy = torch.from_numpy(synthetic_xray(max(size) // 4, rng))[None, None]
    image = F.interpolate(anatomy, size=size, mode="bicubic", align_corners=False)[0, 0].numpy()
    return np.clip(image + 0.01 * rng.standard_normal(size), 0.0, 1.0)
