"""The dual-expert scorer: both experts, one forward each, CAMs and the ADDK heatmap (no Ray).

The Ray pipeline wraps this class; tests, benchmarks and ``dualcam explain`` use it directly.
"""

from __future__ import annotations

import numpy as np
import torch

from dualcam.cam import forward_with_cams
from dualcam.experts import POSITIVE_INDEX, Expert, ExpertMeta, load_expert
from dualcam.imaging import preprocess
from dualcam.kernel import addk


def _input_spec(meta: ExpertMeta) -> tuple:
    return meta.input_size, meta.color_mode, meta.mean, meta.std


class DualScorer:
    """Holds expert 1 (class of interest) and expert 2 (the overlapping class) on one device.

    Both experts must take the same input (size, colour mode, normalization), so one
    preprocessed batch feeds both and their CAMs share a grid.
    """

    def __init__(self, c1: Expert | str, c2: Expert | str, alpha: float = 5.0, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.c1 = load_expert(c1, self.device) if isinstance(c1, str) else c1
        self.c2 = load_expert(c2, self.device) if isinstance(c2, str) else c2
        spec1, spec2 = _input_spec(self.c1.meta), _input_spec(self.c2.meta)
        if spec1 != spec2:
            raise ValueError(
                f"experts take different inputs: {self.c1.uri} {spec1} vs {self.c2.uri} {spec2} "
                "(input_size, color_mode, mean, std must match)"
            )
        self.alpha = float(alpha)
        self.meta = self.c1.meta
        for expert in (self.c1, self.c2):
            expert.model.to(self.device, memory_format=torch.channels_last).eval()

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(3, S, S) model input for one decoded image."""
        return preprocess(image, self.meta)

    @torch.inference_mode()
    def score(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """Score a (B, 3, S, S) batch: p1, p2 (B,) and cam1, cam2, heatmap (B, h, w), float32.

        cam1/cam2 are the raw in-class CAMs; heatmap = addk(cam1, cam2, alpha). Everything stays
        on the device until the single copy back at the end.
        """
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        with autocast:
            logits1, cams1 = forward_with_cams(self.c1.model, x)
            logits2, cams2 = forward_with_cams(self.c2.model, x)
        p1 = logits1.float().softmax(-1)[:, POSITIVE_INDEX]
        p2 = logits2.float().softmax(-1)[:, POSITIVE_INDEX]
        cam1, cam2 = cams1[:, POSITIVE_INDEX].float(), cams2[:, POSITIVE_INDEX].float()
        out = {"p1": p1, "p2": p2, "cam1": cam1, "cam2": cam2, "heatmap": addk(cam1, cam2, self.alpha)}
        return {k: v.cpu().numpy() for k, v in out.items()}
