"""``make bench``'s arithmetic: the steady part of a pipeline run, and the bounds (f) is held against."""

import json

import numpy as np
import pytest

from dualcam.bench.speed import main, pipeline_bounds, steady_window


def test_the_steady_part_leaves_out_start_up_and_the_drain():
    # two actors, a batch of 16 every half second from t = 10 s (start-up before that), then the
    # last batch alone 5.5 s later: one actor idle while the other drains
    times = [10 + 0.5 * i for i in range(18)] + [24.0]
    start, end, rows = steady_window(np.repeat(times, 16))
    assert (start, end, rows) == (10.5, 18.5, 16 * 16)
    assert rows / (end - start) == 32.0  # first to last batch would say (304 - 16) / 14 = 20.6
    with pytest.raises(ValueError, match="^16 rows in too few batches for a steady part"):
        steady_window(np.repeat([5.0], 16))


def test_a_pipeline_on_cpus_is_bound_by_loading_and_the_forward_taking_turns_on_the_same_cores():
    a, load_ms, cpus = 20.0, 25.0, 2.0
    bound, separate = pipeline_bounds(a, load_ms, cpus, gpu=False)
    assert separate == min(a, cpus * 1000 / load_ms) == 20.0
    assert bound == pytest.approx(16.0)
    assert bound * (cpus / a + load_ms / 1000) == pytest.approx(cpus)  # at the bound, every core is busy
    assert pipeline_bounds(a, 1e-9, cpus, gpu=False)[0] == pytest.approx(a)  # free loading: the forward's rate


def test_with_a_gpu_the_loaders_have_the_cores_the_actor_leaves():
    assert pipeline_bounds(1000.0, 10.0, 8.0, gpu=True) == (700.0, 800.0)  # 7 loader cores at 100 images/s
    assert pipeline_bounds(500.0, 10.0, 8.0, gpu=True) == (500.0, 500.0)  # the GPU sets the pace


def test_too_few_images_for_a_steady_part_are_refused_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--n", "16", "--batch-size", "16"])
    assert exit.value.code == 2
    assert "--n must be at least two batches (32)" in capsys.readouterr().err


def test_make_scale_runs_end_to_end_on_small_archives(tmp_path):
    from dualcam.bench import scale

    figures = tmp_path / "scale.json"
    assert scale.main(["--sizes", "200,400", "--repeat", "1", "--no-listing", "--json", str(figures)]) == 0
    sizes = json.loads(figures.read_text())["sizes"]
    assert sorted((s["kind"], s["inputs"]) for s in sizes) == [("inventory", 200), ("inventory", 400),
                                                                ("manifest", 200), ("manifest", 400)]


def test_draft_decoding_is_measured_on_the_jpegs_of_a_folder(tmp_path, capsys):
    from PIL import Image

    from dualcam.bench import draft_decoding
    from dualcam.bench.fixtures import random_experts
    from dualcam.synthetic.scenarios import synthetic_xray

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        pixels = (synthetic_xray(700, np.random.default_rng(i)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.jpg")
    (images / "skipped.png").write_bytes(b"not a JPEG: left out")
    c1, c2 = random_experts(tmp_path / "experts", size=64)
    assert draft_decoding.main(["--expert1", c1, "--expert2", c2, "--images", str(images)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"2 JPEGs of {images}") and "| draft | " in out
    meta, data = draft_decoding.DualScorer(c1, c2, device="cpu").meta, (images / "0.jpg").read_bytes()
    full, draft = draft_decoding.model_input(data, "0.jpg", meta)[0], draft_decoding.draft_input(data, meta)
    assert draft.shape == full.shape == (3, 64, 64) and 0 < (draft - full).abs().mean() < 0.1  # another decoding
