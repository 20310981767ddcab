"""The scorers: two experts, one forward each, their CAMs, and what a run computes from them.

No Ray here. The pipeline's two per-batch steps are plain Python on Arrow tables, so tests,
benchmarks and ``dualcam explain`` run them directly and the Ray layer only wires them up:

* ``load_images``: read each row's ``uri`` and turn its bytes into a model input with
  ``imaging.model_input``, which decodes only what the model needs (CPU; one bad file becomes an
  error on its row, never an exception). For a scorer on a GPU (``device_jpeg``), the JPEGs its
  device decodes are only read: their bytes travel in ``data``;
* a ``PairScorer``: a callable class that scores the loaded rows and returns result rows
  (``dualcam.io.results`` has the schemas), after decoding the JPEGs left as bytes in one batch on its
  device (``device_decode``). ``DualScorer`` holds experts 1 and 2 and computes the ADDK heatmap
  (``dualcam score``); ``DriftScorer`` holds an old and a new version of one expert and computes
  the drift measures (``dualcam drift``). They differ only in ``score`` and ``columns``; loading,
  batching, precision, per-row errors and the retry in smaller batches when the device runs out of
  memory are shared.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import ClassVar, NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from dualcam.io import device_decode, storage
from dualcam.io.checkpoints import Expert, ExpertMeta, load_expert, resolve_expert
from dualcam.io.imaging import MAX_PIXELS, input_window, model_input, preprocess
from dualcam.io.inputs import MAX_INPUT_BYTES, Slots, read_input
from dualcam.io.results import (
    DRIFT,
    PERMANENT,
    SCORE,
    TRANSIENT,
    VERSION,
    Layout,
    RunSpec,
    error_kind_of,
    result_table,
    tensor_array,
    to_numpy,
)
from dualcam.maps import drift_measures, regions
from dualcam.maps.cam import class_probability, forward_with_cams, upsample
from dualcam.maps.kernel import DEFAULT_ALPHA, addk, overlap
from dualcam.maps.numerics import DEFAULT_PRECISION, check_precision, computing_in
from dualcam.scoring.archive_options import check_value

IO_THREADS = 8
"""Files fetched at once per loading task: reads from object storage wait on the network, not the CPU."""


SAME_INPUT = ("input_size", "color_mode", "mean", "std", "resize", "resized_side", "output_stride")
"""What two experts scored together must agree on (``ExpertMeta``'s fields): one batch feeds both, and
their CAMs share a grid."""
SAME_EXPERT = ("arch", "class_name", "num_outputs", "class_index", "activation", *SAME_INPUT)
"""What two checkpoints compared by drift must agree on to be versions of one expert."""


def check_same_input(meta1: ExpertMeta, meta2: ExpertMeta, uri1: str, uri2: str) -> None:
    """Refuse two experts that take different inputs: one batch must feed both, CAMs must share a grid."""
    spec1, spec2 = (tuple(getattr(meta, f) for f in SAME_INPUT) for meta in (meta1, meta2))
    if spec1 != spec2:
        raise ValueError(
            f"experts take different inputs: {uri1} {spec1} vs {uri2} {spec2} "
            f"({', '.join(SAME_INPUT)} must match)"
        )


def same_network(meta1: ExpertMeta, meta2: ExpertMeta) -> bool:
    """Whether two experts run one network: the same weights (``sha256`` of ``weights.pt``), architecture and
    output stride, so that one forward pass gives both their CAMs (two classes of one model)."""
    return bool(meta1.sha256) and (meta1.sha256, meta1.arch, meta1.output_stride, meta1.num_outputs) == (
        meta2.sha256, meta2.arch, meta2.output_stride, meta2.num_outputs)


class _Loaded(NamedTuple):
    """One row as a loader leaves it: its model input ((3, S, S) float32) and image (height, width);
    or the reason it failed and its kind (``results.TRANSIENT``/``PERMANENT``); or, for the scorer's
    device decoder, the file's bytes alone."""

    x: np.ndarray | None = None
    size: tuple[int, int] | None = None
    error: str | None = None
    kind: str | None = None
    data: bytes | None = None
    version: str | None = None
    """Which version of the input was read (``storage.Read.version``)."""

    @classmethod
    def failed(cls, uri: str, err: Exception) -> _Loaded:
        """The row of an input that failed with ``err``: its reason, naming the file, and its kind."""
        message = str(err) or type(err).__name__
        return cls(error=message if uri in message else f"{uri}: {message}", kind=error_kind_of(err))


class Ledger(Protocol):
    """Run-wide record of the inputs being loaded (``dualcam.distributed.crash_ledger``): ``start`` gives each
    input's worker deaths so far and marks it as started (at once where it has none; else only ``alone``),
    ``finish`` unmarks it."""

    def start(self, uris: list[str], alone: bool = False) -> list[int]: ...

    def finish(self, uris: list[str]) -> None: ...


POISON_DEATHS = 3
"""Workers that may die with an input in flight (its batch's, then its own, alone) before it becomes a
permanent error row unread: the first death cannot be told from a batch-mate's, and one may be a
neighbour's doing (a node out of memory, an actor killed)."""

DECODE_DEADLINE = 300.0
"""Seconds one input's decoding may take in a run's loader before the loader ends its own process: a decoder
cannot be interrupted, but a worker can be ended, and the run's ledger then counts a death for the input in
flight (``POISON_DEATHS`` make it an error row). The largest images let through take a few seconds."""

DEADLINE_EXIT = 75
"""The exit status of a loader that ended itself at ``DECODE_DEADLINE``."""

_LOADING = threading.Lock()
"""One batch loads at a time in a process (an actor runs two calls: one loads while the other scores), so
that a worker that dies while a suspect input loads alone died of that input."""


def load_images(
    batch: pa.Table, meta: ExpertMeta, max_pixels: int = MAX_PIXELS, read_timeout: float = storage.READ_TIMEOUT,
    device_jpeg: bool = False, slots: Slots | None = None, max_input_bytes: int = MAX_INPUT_BYTES,
    ledger: Ledger | None = None, decode_deadline: float = DECODE_DEADLINE,
) -> pa.Table:
    """Add ``pixels`` ((3, S, S) model input, null on error), ``width``, ``height``, ``error``,
    ``error_kind`` and ``data``.

    Every row comes back: a file that is missing, unreadable, not a regular file, not read within
    ``read_timeout`` seconds, not an image, too large or undecodable gets its reason in ``error``,
    so no input is ever dropped and no input can hold up the others for longer than the timeout.
    Reads go through ``inputs.read_input`` (files, S3, DICOMweb), each within one of ``slots`` if given;
    a file over ``max_input_bytes`` is not read at all.
    With ``device_jpeg`` (loaders of a scorer on a GPU), a JPEG its device decoder takes
    (``device_decode.takes``) is only read: its bytes are in ``data`` and its other columns null
    until the scorer decodes it.
    With a ``ledger`` (the pipeline's), inputs in flight when an earlier worker died load one at a
    time, one that was in flight at ``POISON_DEATHS`` deaths is a permanent error row, unread, and a
    decode still running after ``decode_deadline`` seconds ends this process (``DEADLINE_EXIT``).
    """
    uris = batch.column("uri").to_pylist()
    deadline = decode_deadline if ledger else None

    def load(uri: str) -> _Loaded:
        return _load_one(uri, meta, max_pixels, read_timeout, device_jpeg, slots, max_input_bytes, deadline)

    with _LOADING:
        deaths = ledger.start(uris) if ledger else [0] * len(uris)
        fresh = [uri for uri, n in zip(uris, deaths) if not n]
        with ThreadPoolExecutor(min(IO_THREADS, max(1, len(fresh)))) as pool:
            loaded = dict(zip(fresh, pool.map(load, fresh)))
        if ledger:
            ledger.finish(fresh)
            loaded.update((uri, _load_suspect(uri, n, load, ledger)) for uri, n in zip(uris, deaths) if n)
    return _with_inputs(batch, [loaded[uri] for uri in uris], meta.input_size)


def _load_suspect(uri: str, deaths: int, load: Callable[[str], _Loaded], ledger: Ledger) -> _Loaded:
    """An input that was in flight when a worker died, loaded alone; at ``POISON_DEATHS`` its error row."""
    if deaths >= POISON_DEATHS:
        return _Loaded(error=f"{uri}: {deaths} workers died while it was being read or decoded (killed for "
                             f"memory, a crash in a decoder, or decoding past {DECODE_DEADLINE:g} s); not tried "
                             "again unless --retry-errors", kind=PERMANENT)
    ledger.start([uri], alone=True)
    try:
        return load(uri)
    finally:
        ledger.finish([uri])


def _load_one(
    uri: str, meta: ExpertMeta, max_pixels: int, read_timeout: float, device_jpeg: bool, slots: Slots | None,
    max_input_bytes: int, decode_deadline: float | None,
) -> _Loaded:
    try:
        read = read_input(uri, read_timeout, slots, max_input_bytes)
        if device_jpeg and device_decode.takes(read.data, max_pixels):
            return _Loaded(data=read.data, version=read.version)
        with _ended_after(decode_deadline, f"decoding {uri}"):
            return _decoded(uri, read.data, meta, max_pixels)._replace(version=read.version)
    except Exception as err:  # any failure is this row's error, never the batch's
        return _Loaded.failed(uri, err)


@contextmanager
def _ended_after(seconds: float | None, what: str) -> Iterator[None]:
    """Ends this process, saying why on stderr (Ray's worker log), if the block is still running after
    ``seconds`` (None: no deadline)."""
    if seconds is None:
        yield
        return

    def end() -> None:
        print(f"dualcam: {what} ran past its deadline of {seconds:g} s: ending this worker", file=sys.stderr,
              flush=True)
        os._exit(DEADLINE_EXIT)

    timer = threading.Timer(seconds, end)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _decoded(uri: str, data: bytes, meta: ExpertMeta, max_pixels: int = MAX_PIXELS) -> _Loaded:
    """The CPU path from bytes to a model input; a failure is the row's error."""
    try:
        x, size = model_input(data, uri, meta, max_pixels)
        return _Loaded(x.numpy(), size)
    except Exception as err:
        return _Loaded.failed(uri, err)


def _with_inputs(batch: pa.Table, loaded: Sequence[_Loaded], input_size: int) -> pa.Table:
    """``batch`` with the columns a scorer reads (``pixels``, ``width``, ``height``, ``error``, ``data``),
    one ``_Loaded`` per row, however the rows were loaded."""
    pixels = np.zeros((len(loaded), 3, input_size, input_size), np.float32)
    ok = np.array([row.x is not None for row in loaded], dtype=bool)
    for i, row in enumerate(loaded):
        if row.x is not None:
            pixels[i] = row.x
    sizes = [row.size for row in loaded]
    # the version read; where the read failed, the version listed: an input fixed since is rescored
    read = pa.array([row.version for row in loaded], pa.string())
    if VERSION in batch.column_names:
        listed = batch.column(VERSION)
        batch = batch.drop_columns([VERSION])
        read = pc.coalesce(read, listed)
    return (
        batch.append_column(VERSION, read)
        .append_column("pixels", tensor_array(pixels, ok))
        .append_column("width", pa.array([s[1] if s else None for s in sizes], pa.int32()))
        .append_column("height", pa.array([s[0] if s else None for s in sizes], pa.int32()))
        .append_column("error", pa.array([row.error for row in loaded], pa.string()))
        .append_column("error_kind", pa.array([row.kind for row in loaded], pa.string()))
        .append_column("data", pa.array([row.data for row in loaded], pa.large_binary()))
    )


def check_same_expert(old: ExpertMeta, new: ExpertMeta, old_uri: str, new_uri: str) -> None:
    """Refuse two checkpoints that are not versions of one expert: drift compares like with like."""
    differ = [f"{f} {getattr(old, f)!r} vs {getattr(new, f)!r}" for f in SAME_EXPERT if getattr(old,
                                                                                                f) != getattr(new, f)]
    if differ:
        raise ValueError(f"{old_uri} and {new_uri} are not two versions of the same expert: " + "; ".join(differ))


class PairScorer:
    """Two experts on one device, one forward pass each per batch (one in all where both are classes of one
    model, ``same_network``), and result rows: the Ray pipeline's actor.

    The shared path of ``dualcam score`` and ``dualcam drift``. Both experts must take the same
    input (size, colour mode, normalization), so one preprocessed batch feeds both and their CAMs
    share a grid. A subclass says what its run is: ``layout`` (the columns it writes),
    ``check_experts`` (which pairs it accepts), ``score`` (what it computes per batch) and
    ``columns`` (those results as the layout's columns, in image pixels).

    ``precision`` (``dualcam.maps.numerics``) is how the forward passes compute: float32 by default on
    every device. When the device runs out of memory, a batch is scored again in halves (down to
    one image per forward pass), and later batches start at the size that fitted.
    """

    layout: ClassVar[Layout]

    def __init__(
        self, first: Expert | str, second: Expert | str, alpha: float = DEFAULT_ALPHA,
        device: str | None = None, threads: int | None = None, precision: str = DEFAULT_PRECISION,
    ):
        check_value(alpha, "alpha", "a finite number >= 0", float, lambda v: v >= 0)  # before the experts load
        if threads:
            # Ray sets OMP_NUM_THREADS=1 in its workers; give torch the CPUs this actor was given.
            torch.set_num_threads(threads)
        self.precision = check_precision(precision)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.experts = tuple(load_expert(resolve_expert(e), self.device) if isinstance(e, str) else e
                             for e in (first, second))
        self.check_experts(self.experts[0].meta, self.experts[1].meta, self.experts[0].uri, self.experts[1].uri)
        self.one_model = same_network(self.experts[0].meta, self.experts[1].meta)
        """Both experts are classes of one network (the same weights): one forward pass gives both CAMs."""
        if self.one_model:  # one copy on the device; the caller's Expert objects are left as they are
            self.experts = (self.experts[0], dataclasses.replace(self.experts[1], model=self.experts[0].model))
        self.alpha = float(alpha)
        self.meta = self.experts[0].meta
        self.spec = RunSpec.of(self.layout, self.experts[0].meta, self.experts[1].meta, self.alpha, self.precision)
        for expert in self.experts:
            # Module.to's stubs take memory_format only alone: the same as one call with both
            expert.model.to(self.device).to(memory_format=torch.channels_last).eval()
        self.decoder = device_decode.DeviceDecoder(self.meta, self.device)
        self.max_rows: int | None = None
        """Most images per forward pass: None until the device runs out of memory, then what fitted."""
        size = self.meta.input_size
        # (h, w) of the CAMs, from the network itself (the stride arithmetic differs by arch).
        grid_h, grid_w = self.forward(torch.zeros(1, 3, size, size))[1].shape[-2:]
        self.grid: tuple[int, int] = (grid_h, grid_w)
        # The pipeline runs two calls per actor at once so that one batch loads while another is
        # scored; two forward passes at once would only share (and oversubscribe) the same threads.
        self._scoring = threading.Lock()

    @staticmethod
    def check_experts(meta1: ExpertMeta, meta2: ExpertMeta, uri1: str, uri2: str) -> None:
        """Raise ValueError for a pair this kind of run cannot use; called before any work."""
        check_same_input(meta1, meta2, uri1, uri2)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(3, S, S) model input for one decoded image."""
        return preprocess(image, self.meta)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both experts on a (B, 3, S, S) batch, in this scorer's precision: in-class probabilities
        (2, B) and raw in-class CAMs (2, B, h, w), float32, left on the device; each expert's class is
        its meta's ``class_index``, its probability read by its ``activation``."""
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        metas = [expert.meta for expert in self.experts]
        with computing_in(self.precision, self.device):
            if self.one_model:
                logits, both = forward_with_cams(self.experts[0].model, x, [meta.class_index for meta in metas])
                outputs = [(logits, both[:, :1]), (logits, both[:, 1:])]
            else:
                outputs = [forward_with_cams(expert.model, x, [expert.meta.class_index]) for expert in self.experts]
        probs = torch.stack([class_probability(logits.float(), meta.class_index, meta.activation, meta.op_threshold)
                             for (logits, _), meta in zip(outputs, metas)])
        cams = torch.stack([cams[:, 0].float() for _, cams in outputs])
        return probs, cams

    def score(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """What this run computes for a (B, 3, S, S) batch; numpy, first axis B, positions in input pixels."""
        raise NotImplementedError

    def columns(self, scores: dict[str, np.ndarray], sizes: np.ndarray) -> dict[str, np.ndarray]:
        """``score``'s output as the layout's computed columns, given (B, 2) image (width, height)."""
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Result rows (``dualcam.io.results``, this scorer's layout) for a batch from ``load_images``.

        Rows left as bytes are decoded first (``device_decode``; on the CPU where the device's
        decoder refuses a file). A batch that fails as a whole becomes error rows naming the
        cause; the run goes on.
        """
        scores = self.layout.empty(self.grid)
        try:
            batch, ok, pixels = self._inputs(batch)
            if ok.any():
                sizes = np.stack([batch.column(c).to_numpy(zero_copy_only=False)[ok] for c in ("width", "height")], 1)
                with self._scoring:
                    scores = self.columns(self._score_rows(pixels), sizes)
        except Exception as err:  # the batch's rows carry the error instead; a device's failure is transient
            ok = np.zeros(batch.num_rows, dtype=bool)
            own = pc.is_null(batch.column("error"))
            for name, value in (("error", f"scoring failed: {type(err).__name__}: {err}"), ("error_kind", TRANSIENT)):
                batch = batch.set_column(batch.schema.get_field_index(name), name,
                                         pc.if_else(own, pa.scalar(value, pa.string()), batch.column(name)))
            scores = self.layout.empty(self.grid)
        scored_at = np.datetime64(time.time_ns() // 1000, "us")
        return result_table(batch, ok, batch.column("error").to_pylist(), scores, self.spec, scored_at, self.grid)

    def _inputs(self, batch: pa.Table) -> tuple[pa.Table, np.ndarray, torch.Tensor]:
        """The batch with every row's size and error filled in, which rows can be scored, and their
        (n, 3, S, S) model inputs on the device: loaded ones as they came, bytes decoded here."""
        ok = np.array(pc.is_valid(batch.column("pixels")).to_numpy(zero_copy_only=False), dtype=bool)
        inputs: list[torch.Tensor | None] = [None] * batch.num_rows
        if ok.any():  # own copy: Arrow's buffers are read-only
            loaded = torch.tensor(to_numpy(batch.column("pixels").filter(pa.array(ok)))).to(self.device)
            for at, x in zip(np.flatnonzero(ok), loaded):
                inputs[at] = x
        data = batch.column("data").to_pylist() if "data" in batch.column_names else []
        pending = [i for i, d in enumerate(data) if d is not None]
        if pending:
            uris, errors, kinds = (batch.column(c).to_pylist() for c in ("uri", "error", "error_kind"))
            widths, heights = (batch.column(c).to_pylist() for c in ("width", "height"))
            for i, decoded in zip(pending, self.decoder([data[i] for i in pending])):
                if decoded is None:  # refused by the device: the CPU path, which names the problem if it has one
                    row = _decoded(uris[i], data[i], self.meta)
                    if row.error or row.x is None or row.size is None:
                        errors[i] = row.error or f"{uris[i]}: decoded to no image"
                        kinds[i] = row.kind or PERMANENT
                    else:
                        decoded, errors[i] = (torch.from_numpy(row.x), row.size), None
                if decoded is not None:
                    inputs[i], (heights[i], widths[i]) = decoded[0].to(self.device), decoded[1]
                    ok[i] = True
            for name, values, kind in (("width", widths, pa.int32()), ("height", heights, pa.int32()),
                                       ("error", errors, pa.string()), ("error_kind", kinds, pa.string())):
                batch = batch.set_column(batch.schema.get_field_index(name), name, pa.array(values, kind))
        size = self.meta.input_size
        x = torch.stack([x for x in inputs if x is not None]) if ok.any() else torch.empty(0, 3, size, size)
        return batch, ok, x

    def _score_rows(self, pixels: torch.Tensor) -> dict[str, np.ndarray]:
        """``score`` over (n, 3, S, S) inputs, at most ``max_rows`` per forward pass. Out of device
        memory, the part that failed is tried again in halves, and ``max_rows`` keeps what fitted;
        at one image per pass the error is raised."""
        parts, start = [], 0
        while start < len(pixels):
            rows = pixels[start:start + (self.max_rows or len(pixels))]
            try:
                parts.append(self.score(rows))
            except torch.cuda.OutOfMemoryError:
                if len(rows) == 1:
                    raise
                self.max_rows = len(rows) // 2
                print(f"dualcam: out of {self.device} memory at {len(rows)} images per forward pass; "
                      f"now {self.max_rows}", file=sys.stderr, flush=True)
                torch.cuda.empty_cache()
                continue
            start += len(rows)
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


class DualScorer(PairScorer):
    """Expert 1 (class of interest) and expert 2 (the overlapping class): CAMs and the ADDK heatmap."""

    layout = SCORE

    def __init__(
        self, c1: Expert | str, c2: Expert | str, alpha: float = DEFAULT_ALPHA,
        device: str | None = None, threads: int | None = None, precision: str = DEFAULT_PRECISION,
    ):
        super().__init__(c1, c2, alpha, device, threads, precision)

    @property
    def c1(self) -> Expert:
        return self.experts[0]

    @property
    def c2(self) -> Expert:
        return self.experts[1]

    @torch.inference_mode()
    def score(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """Score a (B, 3, S, S) batch; every output is numpy, first axis B.

        ``p1``, ``p2``: in-class probabilities. ``cam1``, ``cam2``: raw in-class CAMs (B, h, w)
        float32. ``heatmap`` = addk(cam1, cam2, alpha), and ``heatmap_max`` its max. ``overlap``
        (B,): the share of expert 1's positive evidence expert 2 also claims (``kernel.overlap``).
        ``peak`` (B, 2) float (x, y) and ``box`` (B, 4) int (x0, y0, x1, y1, inclusive): the peak and
        top-region box of the heatmap upsampled to S x S, in input pixels. Everything stays on
        the device until the single copy back at the end.
        """
        (p1, p2), (cam1, cam2) = self.forward(batch)
        heatmap = addk(cam1, cam2, self.alpha)
        size = self.meta.input_size
        fine = upsample(heatmap, (size, size))
        out = {
            "p1": p1, "p2": p2, "cam1": cam1, "cam2": cam2, "heatmap": heatmap,
            "heatmap_max": heatmap.flatten(1).max(dim=1).values,
            "overlap": overlap(cam1, cam2),
            "peak": regions.peak(fine),
            "box": regions.bounding_box(regions.top_region(fine)),
        }
        return {k: v.cpu().numpy() for k, v in out.items()}

    def columns(self, scores: dict[str, np.ndarray], sizes: np.ndarray) -> dict[str, np.ndarray]:
        """Peak and box mapped from the S x S input grid to each image's own (width, height) pixels (with a
        centre crop, inside the part of the image the model saw)."""
        scale, origin = _to_image(sizes, self.meta)
        x0y0, x1y1 = np.split(scores.pop("box").astype(np.float64), 2, axis=1)
        lo = np.floor(x0y0 * scale + origin)
        hi = np.minimum(np.ceil((x1y1 + 1) * scale + origin), sizes)
        scores["peak_x"], scores["peak_y"] = _image_point(scores.pop("peak"), scale, origin, sizes)
        scores["box_x"], scores["box_y"] = lo.astype(np.int32).T
        scores["box_w"], scores["box_h"] = (hi - lo).astype(np.int32).T
        return scores


class DriftScorer(PairScorer):
    """An old and a new version of one expert: their CAMs, ADDK both ways and the drift measures.

    The pair must be the same kind of expert (arch, class, input size and normalization); see
    ``dualcam.maps.drift_measures`` for what each measure means.
    """

    layout = DRIFT

    def __init__(
        self, old: Expert | str, new: Expert | str, alpha: float = DEFAULT_ALPHA,
        device: str | None = None, threads: int | None = None, precision: str = DEFAULT_PRECISION,
    ):
        super().__init__(old, new, alpha, device, threads, precision)

    @property
    def old(self) -> Expert:
        return self.experts[0]

    @property
    def new(self) -> Expert:
        return self.experts[1]

    @staticmethod
    def check_experts(meta1: ExpertMeta, meta2: ExpertMeta, uri1: str, uri2: str) -> None:
        check_same_expert(meta1, meta2, uri1, uri2)

    @torch.inference_mode()
    def score(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """``p_old``, ``p_new``, ``cam_old``, ``cam_new`` and ``drift_measures.measures`` of a (B, 3, S, S) batch,
        as numpy."""
        (p_old, p_new), (cam_old, cam_new) = self.forward(batch)
        out = {"p_old": p_old, "p_new": p_new, "cam_old": cam_old, "cam_new": cam_new,
               **drift_measures.measures(p_old, p_new, cam_old, cam_new, self.meta.input_size, self.alpha)}
        return {k: v.cpu().numpy() for k, v in out.items()}

    def columns(self, scores: dict[str, np.ndarray], sizes: np.ndarray) -> dict[str, np.ndarray]:
        """Peaks mapped to image pixels: their distance is ``peak_shift_px``; the gained map's peak is kept."""
        scale, origin = _to_image(sizes, self.meta)
        scores["peak_shift_px"] = drift_measures.peak_shift_px(scores.pop("old_peak"), scores.pop("new_peak"), scale)
        scores["gained_peak_x"], scores["gained_peak_y"] = _image_point(scores.pop("gained_peak"), scale, origin,
                                                                        sizes)
        return scores


def _to_image(sizes: np.ndarray, meta: ExpertMeta) -> tuple[np.ndarray, np.ndarray]:
    """For (B, 2) image (width, height): (B, 2) image pixels per input pixel, x and y, and (B, 2) where the
    input's corner lies in the image, so that image = input * scale + origin in edge coordinates (origin 0
    unless ``meta.resize`` crops; ``imaging.input_window``)."""
    width, height = sizes[:, 0].astype(np.float64), sizes[:, 1].astype(np.float64)
    resized_h, resized_w, top, left = input_window(meta, height, width)
    scale = np.stack([width / resized_w, height / resized_h], 1)
    return scale, np.stack([left, top], 1) * scale


def _image_point(
    point: np.ndarray, scale: np.ndarray, origin: np.ndarray, sizes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(B, 2) (x, y) in input pixels -> x, y in image pixels (int32, inside the image)."""
    image = (point + 0.5) * scale + origin - 0.5
    return tuple(np.clip(np.rint(image), 0, sizes - 1).astype(np.int32).T)


def score_images(
    scorer: PairScorer, uris: Sequence[str], batch_size: int = 16, device_jpeg: bool | None = None,
) -> pa.Table:
    """Load and score files without Ray, in batches: the same rows the pipeline writes. The next
    batch loads (in a thread) while one is scored; ``device_jpeg`` (default: when the scorer is on a
    GPU, as in the pipeline) leaves the JPEGs to the scorer's device decoder."""
    device_jpeg = scorer.device.type == "cuda" if device_jpeg is None else device_jpeg
    batches = [pa.table({"uri": pa.array(list(uris[start:start + batch_size]), pa.string())})
               for start in range(0, len(uris), batch_size)]
    if not batches:
        raise ValueError("score_images: no URIs to score")
    tables = []
    with ThreadPoolExecutor(1) as loader:
        next_batch = loader.submit(load_images, batches[0], scorer.meta, device_jpeg=device_jpeg)
        for following in [*batches[1:], None]:
            loaded = next_batch.result()
            if following is not None:
                next_batch = loader.submit(load_images, following, scorer.meta, device_jpeg=device_jpeg)
            tables.append(scorer(loaded))
    return pa.concat_tables(tables)
