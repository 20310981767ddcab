"""The dual-expert scorer, pinned to a direct computation with forward_with_cams and addk."""

import numpy as np
import pytest
import torch

from dualcam import DualScorer, addk, build_expert, forward_with_cams, load_expert, save_expert
from dualcam.synthetic import synthetic_xray


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    torch.manual_seed(0)
    uris = []
    for arch, name in (("resnet18", "COVID-19"), ("densenet121", "pneumonia")):
        uri = str(root / name)
        save_expert(build_expert(arch), uri, {"arch": arch, "class_name": name, "input_size": 64})
        uris.append(uri)
    return uris


def test_scores_match_a_direct_computation(experts):
    scorer = DualScorer(*experts, alpha=15.0, device="cpu")
    rng = np.random.default_rng(0)
    images = [synthetic_xray(100, rng), np.repeat(synthetic_xray(80, rng)[..., None], 3, axis=2)]
    batch = torch.stack([scorer.preprocess(im) for im in images])
    out = scorer.score(batch)
    assert {k: v.shape for k, v in out.items()} == {
        "p1": (2,), "p2": (2,), "cam1": (2, 2, 2), "cam2": (2, 2, 2), "heatmap": (2, 2, 2)
    }
    assert all(v.dtype == np.float32 for v in out.values())
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
