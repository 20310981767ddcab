"""The dual-expert scorer, pinned to a direct computation with forward_with_cams and addk."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from dualcam import DualScorer, addk, build_expert, forward_with_cams, load_expert, load_meta, model_input, save_expert
from dualcam.distributed.crash_ledger import Ledger
from dualcam.io.results import OUTPUT_COLUMNS, to_numpy
from dualcam.maps.kernel import overlap
from dualcam.scoring.scorers import DEADLINE_EXIT, load_images, score_images
from dualcam.synthetic.scenarios import synthetic_xray, write_synthetic_xrays

from samples import bad_inputs

INPUT_SIZE = 64
EXPERT_ARCHS = ("resnet18", "densenet121")
"""The experts of conftest's ``experts`` fixture: two architectures, one input size."""


def test_scores_match_a_direct_computation(experts):
    scorer = DualScorer(*experts, alpha=15.0, device="cpu")
    rng = np.random.default_rng(0)
    images = [synthetic_xray(100, rng), np.repeat(synthetic_xray(80, rng)[..., None], 3, axis=2)]
    batch = torch.stack([scorer.preprocess(im) for im in images])
    out = scorer.score(batch)
    assert {k: v.shape for k, v in out.items()} == {
        "p1": (2,), "p2": (2,), "cam1": (2, 2, 2), "cam2": (2, 2, 2), "heatmap": (2, 2, 2),
        "heatmap_max": (2,), "overlap": (2,), "peak": (2, 2), "box": (2, 4),
    }
    assert all(out[k].dtype == np.float32 for k in ("p1", "p2", "cam1", "cam2", "heatmap", "heatmap_max", "overlap"))
    np.testing.assert_array_equal(out["overlap"], overlap(out["cam1"], out["cam2"]))
    e1, e2 = load_expert(experts[0]), load_expert(experts[1])
    with torch.inference_mode():
        l1, c1 = forward_with_cams(e1.model, batch)
        l2, c2 = forward_with_cams(e2.model, batch)
    np.testing.assert_allclose(out["p1"], l1.softmax(-1)[:, 1].numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["p2"], l2.softmax(-1)[:, 1].numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["cam1"], c1[:, 1].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["cam2"], c2[:, 1].numpy(), rtol=1e-4, atol=1e-5)
    # compared in log space: exp turns 1e-6 differences of channels_last sums into large relative ones
    np.testing.assert_allclose(np.log(out["heatmap"]), np.log(addk(c1[:, 1], c2[:, 1], 15.0).numpy()), atol=1e-3)


def test_experts_with_different_inputs_are_refused(experts, tmp_path):
    other = str(tmp_path / "other")
    save_expert(build_expert("resnet18"), other, {"arch": "resnet18", "class_name": "pneumonia", "input_size": 96})
    with pytest.raises(ValueError, match="experts take different inputs"):
        DualScorer(experts[0], other)
    finer = str(tmp_path / "finer")  # same input, but a 2x finer CAM grid: the kernel needs one grid
    meta = load_meta(experts[0])
    save_expert(build_expert("resnet18", output_stride=16), finer,
                {"arch": "resnet18", "class_name": "pneumonia", "input_size": meta.input_size, "output_stride": 16})
    with pytest.raises(ValueError, match="output_stride must match"):
        DualScorer(experts[0], finer)


def test_the_batch_interface_keeps_every_row_and_its_error(experts, tmp_path):
    scorer = DualScorer(*experts, device="cpu")
    assert scorer.grid == (2, 2)
    good = [str(p) for p in write_synthetic_xrays(tmp_path, 3, size=70)]
    bad = tmp_path / "truncated.png"
    bad.write_bytes(bad_inputs()["truncated.png"])
    uris = [good[0], str(bad), good[1], str(tmp_path / "missing.png"), good[2]]
    table = score_images(scorer, uris, batch_size=2)

    assert table.column_names == list(OUTPUT_COLUMNS)
    assert table.column("uri").to_pylist() == uris
    assert table.column("status").to_pylist() == ["ok", "error", "ok", "error", "ok"]
    assert "truncated.png: corrupt or truncated PNG" in table.column("error")[1].as_py()
    assert "missing.png" in table.column("error")[3].as_py()
    heat = to_numpy(table.column("heatmap"))
    assert np.isnan(heat[[1, 3]]).all() and np.isfinite(heat[[0, 2, 4]]).all()
    direct = scorer.score(model_input(Path(good[0]).read_bytes(), good[0], scorer.meta)[0][None])
    np.testing.assert_allclose(heat[0], direct["heatmap"][0], rtol=1e-5)
    assert table.column("width").to_pylist() == [70, None, 70, None, 70]


def test_a_batch_that_fails_whole_becomes_error_rows(experts, tmp_path, monkeypatch):
    scorer = DualScorer(*experts, device="cpu")
    uris = [str(p) for p in write_synthetic_xrays(tmp_path, 2, size=64)]
    loaded = load_images(pa.table({"uri": uris}), scorer.meta)

    def out_of_memory(batch):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(scorer, "score", out_of_memory)
    table = scorer(loaded)
    assert table.column("status").to_pylist() == ["error", "error"]
    assert table.column("error").to_pylist() == ["scoring failed: RuntimeError: CUDA out of memory"] * 2
    assert table.column("error_kind").to_pylist() == ["transient"] * 2  # the device's, not the images': retried
    assert table.column("width").to_pylist() == [64, 64]


def test_out_of_device_memory_halves_the_forward_passes(experts, tmp_path, monkeypatch):
    # A simulated device that fits at most 2 images per forward pass: the batch of 5 is scored in
    # halves (same rows as without the failure), and later batches start at the size that fitted.
    scorer = DualScorer(*experts, device="cpu")
    uris = [str(p) for p in write_synthetic_xrays(tmp_path, 5, size=64)]
    loaded = load_images(pa.table({"uri": uris}), scorer.meta)
    expected = scorer(loaded)
    score, passes = scorer.score, []

    def small_device(batch):
        passes.append(len(batch))
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return score(batch)

    monkeypatch.setattr(scorer, "score", small_device)
    first = scorer(loaded)
    assert passes == [5, 2, 2, 1] and scorer.max_rows == 2
    assert first.column("status").to_pylist() == ["ok"] * 5
    for column in ("p1", "p2", "peak_x", "peak_y", "box_w"):
        np.testing.assert_allclose(first.column(column).to_numpy(), expected.column(column).to_numpy(), rtol=1e-5)
    passes.clear()
    scorer(loaded)
    assert passes == [2, 2, 1]

    monkeypatch.setattr(scorer, "score", lambda batch: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("no memory")))
    failed = scorer(loaded)  # not even one image fits: that batch's rows carry the error, the actor lives on
    assert failed.column("status").to_pylist() == ["error"] * 5 and scorer.max_rows == 1
    assert failed.column("error")[0].as_py() == "scoring failed: OutOfMemoryError: no memory"


class RecordingLedger(Ledger):
    """The pipeline's ledger, keeping what was started at each call (what else was in flight with it)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[list[str], bool]] = []

    def start(self, uris: list[str], alone: bool = False) -> list[int]:
        self.calls.append((list(uris), alone))
        return super().start(uris, alone)


def test_inputs_in_flight_when_workers_died_load_alone_then_become_error_rows_unread(experts, tmp_path):
    scorer = DualScorer(*experts, device="cpu")
    uris = [str(p) for p in write_synthetic_xrays(tmp_path, 3, size=64)]
    ledger = RecordingLedger()
    ledger.start(uris)  # a worker started this batch and died
    first = load_images(pa.table({"uri": uris}), scorer.meta, ledger=ledger)
    assert first.column("error").to_pylist() == [None] * 3
    assert ledger.calls[1:] == [(uris, False)] + [([uri], True) for uri in uris]  # then each alone
    assert ledger.deaths == dict.fromkeys(uris, 1) and not ledger.started  # each death counted once

    poison = uris[1]
    ledger.start([poison], alone=True)
    ledger.start([poison], alone=True)  # its worker died twice more while it loaded alone
    assert ledger.deaths[poison] == 2
    Path(poison).unlink()  # were it read, its error would be "no such file"
    second = load_images(pa.table({"uri": uris}), scorer.meta, ledger=ledger)
    assert second.column("error").to_pylist() == [
        None, f"{poison}: 3 workers died while it was being read or decoded (killed for memory, a crash in a "
              "decoder, or decoding past 300 s); not tried again unless --retry-errors", None]
    assert second.column("error_kind").to_pylist() == [None, "permanent", None]
    assert ledger.calls[-3:] == [(uris, False), ([uris[0]], True), ([uris[2]], True)] and not ledger.started


def test_a_batch_no_worker_died_on_loads_together_and_leaves_nothing_started(experts, tmp_path):
    scorer = DualScorer(*experts, device="cpu")
    uris = [str(p) for p in write_synthetic_xrays(tmp_path, 3, size=64)]
    ledger = RecordingLedger()
    plain = load_images(pa.table({"uri": uris}), scorer.meta)
    tracked = load_images(pa.table({"uri": uris}), scorer.meta, ledger=ledger)
    assert tracked.equals(plain)
    assert ledger.calls == [(uris, False)] and not ledger.started and not +ledger.deaths


def test_a_decode_past_its_deadline_ends_the_loader_saying_which(experts, tmp_path):
    # In its own process, as a run's loader: a decoder cannot be interrupted, so the loader ends itself and the
    # run's ledger counts the death (above). Without a ledger (explain, the Python API) there is no deadline.
    uri = str(write_synthetic_xrays(tmp_path, 1, size=2000)[0])
    code = ("import sys, pyarrow as pa\nfrom dualcam import load_meta\n"
            "from dualcam.distributed.crash_ledger import Ledger\nfrom dualcam.scoring.scorers import load_images\n"
            f"meta = load_meta({experts[0]!r})\n"
            f"load_images(pa.table({{'uri': [{uri!r}]}}), meta, ledger=Ledger() if sys.argv[1] == 'run' else None, "
            "decode_deadline=1e-3)\nprint('loaded')\n")
    ended = subprocess.run([sys.executable, "-c", code, "run"], capture_output=True, text=True, timeout=300)
    assert ended.returncode == DEADLINE_EXIT and ended.stdout == ""
    assert ended.stderr == f"dualcam: decoding {uri} ran past its deadline of 0.001 s: ending this worker\n"
    alone = subprocess.run([sys.executable, "-c", code, "alone"], capture_output=True, text=True, timeout=300)
    assert (alone.returncode, alone.stdout) == (0, "loaded\n"), alone.stderr
