"""The dual-expert scorer: both experts, one forward each, CAMs, the ADDK heatmap and its summary.

No Ray here. The pipeline's two per-batch steps are plain Python on Arrow tables, so tests,
benchmarks and ``dualcam explain`` run them directly and the Ray layer only wires them up:

* ``load_images``: read each row's ``uri``, decode and preprocess it (CPU; one bad file becomes
  an error on its row, never an exception);
* ``DualScorer``: a callable class that scores the loaded rows and returns result rows
  (``dualcam.results`` has the schema).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from dualcam import regions, storage
from dualcam.cam import forward_with_cams
from dualcam.experts import Expert, ExpertMeta, POSITIVE_INDEX, load_expert, resolve_expert
from dualcam.imaging import MAX_PIXELS, decode_image, preprocess
from dualcam.kernel import addk
from dualcam.results import ExpertId, RunSpec, result_table, tensor_array, to_numpy

IO_THREADS = 8
"""Files fetched at once per loading task: reads from object storage wait on the network, not the CPU."""


def check_same_input(meta1: ExpertMeta, meta2: ExpertMeta, uri1: str, uri2: str) -> None:
    """Refuse two experts that take different inputs: one batch must feed both, CAMs must share a grid."""
    spec1 = meta1.input_size, meta1.color_mode, meta1.mean, meta1.std
    spec2 = meta2.input_size, meta2.color_mode, meta2.mean, meta2.std
    if spec1 != spec2:
        raise ValueError(
            f"experts take different inputs: {uri1} {spec1} vs {uri2} {spec2} "
            "(input_size, color_mode, mean, std must match)"
        )


def load_images(batch: pa.Table, meta: ExpertMeta, max_pixels: int = MAX_PIXELS) -> pa.Table:
    """Add ``pixels`` ((3, S, S) model input, null on error), ``width``, ``height`` and ``error``.

    Every row comes back: a file that is missing, unreadable, not an image, too large or
    undecodable gets its reason in ``error``, so no input is ever dropped.
    """
    uris = batch.column("uri").to_pylist()
    with ThreadPoolExecutor(min(IO_THREADS, max(1, len(uris)))) as pool:
        loaded = list(pool.map(lambda uri: _load_one(uri, meta, max_pixels), uris))
    size = meta.input_size
    pixels = np.zeros((len(uris), 3, size, size), np.float32)
    ok = np.array([error is None for _, _, error in loaded], dtype=bool)
    for i, (x, _, _) in enumerate(loaded):
        if x is not None:
            pixels[i] = x
    sizes = [shape for _, shape, _ in loaded]
    return (
        batch.append_column("pixels", tensor_array(pixels, ok))
        .append_column("width", pa.array([s[1] if s else None for s in sizes], pa.int32()))
        .append_column("height", pa.array([s[0] if s else None for s in sizes], pa.int32()))
        .append_column("error", pa.array([error for _, _, error in loaded], pa.string()))
    )


def _load_one(uri: str, meta: ExpertMeta, max_pixels: int) -> tuple[np.ndarray | None, tuple | None, str | None]:
    try:
        image = decode_image(storage.read_bytes(uri), uri, max_pixels)
        return preprocess(image, meta).numpy(), image.shape[:2], None
    except Exception as err:  # noqa: BLE001 -- any failure is this row's error, never the batch's
        message = str(err) or type(err).__name__
        return None, None, message if uri in message else f"{uri}: {message}"


class DualScorer:
    """Holds expert 1 (class of interest) and expert 2 (the overlapping class) on one device.

    Both experts must take the same input (size, colour mode, normalization), so one
    preprocessed batch feeds both and their CAMs share a grid. Called on a batch from
    ``load_images``, it returns that batch's result rows: this is the Ray pipeline's actor.
    """

    def __init__(
        self, c1: Expert | str, c2: Expert | str, alpha: float = 5.0,
        device: str | None = None, threads: int | None = None,
    ):
        if threads:
            # Ray sets OMP_NUM_THREADS=1 in its workers; give torch the CPUs this actor was given.
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.c1 = load_expert(resolve_expert(c1), self.device) if isinstance(c1, str) else c1
        self.c2 = load_expert(resolve_expert(c2), self.device) if isinstance(c2, str) else c2
        check_same_input(self.c1.meta, self.c2.meta, self.c1.uri, self.c2.uri)
        self.alpha = float(alpha)
        self.meta = self.c1.meta
        self.spec = RunSpec(ExpertId.of(self.c1.meta), ExpertId.of(self.c2.meta), self.alpha)
        for expert in (self.c1, self.c2):
            expert.model.to(self.device, memory_format=torch.channels_last).eval()
        size = self.meta.input_size
        # (h, w) of the CAMs, from the network itself (the stride arithmetic differs by arch).
        self.grid: tuple[int, int] = tuple(self.score(torch.zeros(1, 3, size, size))["cam1"].shape[1:])

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(3, S, S) model input for one decoded image."""
        return preprocess(image, self.meta)

    @torch.inference_mode()
    def score(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """Score a (B, 3, S, S) batch; every output is numpy, first axis B.

        ``p1``, ``p2``: in-class probabilities. ``cam1``, ``cam2``: raw in-class CAMs (B, h, w)
        float32. ``heatmap`` = addk(cam1, cam2, alpha), and ``heatmap_max`` its max. ``peak``
        (B, 2) float (x, y) and ``box`` (B, 4) int (x0, y0, x1, y1, inclusive): the peak and
        top-region box of the heatmap upsampled to S x S, in input pixels. Everything stays on
        the device until the single copy back at the end.
        """
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        with autocast:
            logits1, cams1 = forward_with_cams(self.c1.model, x)
            logits2, cams2 = forward_with_cams(self.c2.model, x)
        cam1, cam2 = cams1[:, POSITIVE_INDEX].float(), cams2[:, POSITIVE_INDEX].float()
        heatmap = addk(cam1, cam2, self.alpha)
        fine = F.interpolate(heatmap[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        out = {
            "p1": logits1.float().softmax(-1)[:, POSITIVE_INDEX],
            "p2": logits2.float().softmax(-1)[:, POSITIVE_INDEX],
            "cam1": cam1, "cam2": cam2, "heatmap": heatmap,
            "heatmap_max": heatmap.flatten(1).max(dim=1).values,
            "peak": regions.peak(fine),
            "box": regions.bounding_box(regions.top_region(fine)),
        }
        return {k: v.cpu().numpy() for k, v in out.items()}

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Result rows (``dualcam.results`` schema) for a batch from ``load_images``.

        A batch that fails as a whole (e.g. out of device memory) becomes error rows naming the
        cause; the run goes on.
        """
        errors: list[str | None] = batch.column("error").to_pylist()
        ok = np.array([e is None for e in errors], dtype=bool)
        scores = self._empty_scores()
        if ok.any():
            pixels = torch.tensor(to_numpy(batch.column("pixels").filter(pa.array(ok))))  # own copy: Arrow's is read-only
            try:
                sizes = np.stack([batch.column(c).to_numpy(zero_copy_only=False)[ok] for c in ("width", "height")], 1)
                scores = _to_image_pixels(self.score(pixels), sizes, self.meta.input_size)
            except Exception as err:  # noqa: BLE001 -- the batch's rows carry the error instead
                errors = [e if e is not None else f"scoring failed: {type(err).__name__}: {err}" for e in errors]
                ok[:] = False
        return result_table(batch, ok, errors, scores, self.spec, np.datetime64(time.time_ns() // 1000, "us"), self.grid)

    def _empty_scores(self) -> dict[str, np.ndarray]:
        grid = np.zeros((0, *self.grid), np.float32)
        empty = np.zeros(0, np.float32)
        ints = np.zeros(0, np.int32)
        return {
            "p1": empty, "p2": empty, "heatmap_max": empty, "cam1": grid, "cam2": grid, "heatmap": grid,
            **{k: ints for k in ("peak_x", "peak_y", "box_x", "box_y", "box_w", "box_h")},
        }


def _to_image_pixels(scores: dict[str, np.ndarray], sizes: np.ndarray, input_size: int) -> dict[str, np.ndarray]:
    """Map peak and box from the S x S input grid to each image's own (width, height) pixels."""
    scale = sizes.astype(np.float64) / input_size  # (B, 2): image pixels per input pixel, x and y
    peak = (scores.pop("peak") + 0.5) * scale - 0.5
    x0y0, x1y1 = np.split(scores.pop("box").astype(np.float64), 2, axis=1)
    lo = np.floor(x0y0 * scale)
    hi = np.minimum(np.ceil((x1y1 + 1) * scale), sizes)
    scores["peak_x"], scores["peak_y"] = np.clip(np.rint(peak), 0, sizes - 1).astype(np.int32).T
    scores["box_x"], scores["box_y"] = lo.astype(np.int32).T
    scores["box_w"], scores["box_h"] = (hi - lo).astype(np.int32).T
    return scores


def score_images(scorer: DualScorer, uris: Sequence[str], batch_size: int = 16) -> pa.Table:
    """Load and score files without Ray, in batches: the same rows the pipeline writes."""
    tables = []
    for start in range(0, len(uris), batch_size):
        batch = pa.table({"uri": pa.array(list(uris[start:start + batch_size]), pa.string())})
        tables.append(scorer(load_images(batch, scorer.meta)))
    return pa.concat_tables(tables)
