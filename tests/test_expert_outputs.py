"""Experts are (model, class): a model of any number of outputs, one of them the class, its probability
read by softmax or sigmoid; checkpoints written before these fields existed read as binary softmax experts."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import get_model

from dualcam import DualScorer, addk, forward_with_cams
from dualcam.commands.expert import class_outputs, init
from dualcam.distributed.training import resolve_init_from
from dualcam.io.checkpoints import CheckpointError, ExpertMeta, build_expert, load_expert, load_meta, save_expert

SIZE = 64
NAMES = "normal,COVID-19,pneumonia"


def write_state(path: Path, model: torch.nn.Module) -> str:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    path.write_bytes(buf.getvalue())
    return str(path)


def init_expert(tmp_path: Path, name: str, weights: str, **outputs) -> str:
    """``dualcam expert init`` of a resnet18 at 64 px; ``outputs``: its --num-outputs etc. flags."""
    flags = {"num_outputs": None, "class_index": None, "class_names": None, "activation": None, **outputs}
    out = str(tmp_path / name)
    assert init(arch="resnet18", class_name=name, input_size=SIZE, color_mode="L", resize="whole", resize_size=None,
                mean=None, std=None, output_stride=32, weights=weights, output=out, **flags) == 0
    return out


def test_a_checkpoint_without_the_output_fields_reads_as_a_binary_softmax_expert(tmp_path):
    uri = str(tmp_path / "old")
    save_expert(build_expert("resnet18"), uri, {"arch": "resnet18", "class_name": "COVID-19", "input_size": SIZE})
    meta_file = Path(uri) / "expert.json"
    data = json.loads(meta_file.read_text())
    for key in ("num_outputs", "class_index", "activation", "class_names"):
        del data[key]
    meta_file.write_text(json.dumps({**data, "format_version": 1}))
    meta = load_meta(uri)
    assert (meta.num_outputs, meta.class_index, meta.activation, meta.class_names) == (2, 1, "softmax", ())
    assert load_expert(uri).model.fc.out_features == 2


@pytest.mark.parametrize("outputs,message", [
    ({"num_outputs": 3, "class_index": 3}, "class_index must be an integer from 0 to num_outputs - 1 = 2, got 3"),
    ({"num_outputs": 2, "class_index": -1}, "class_index must be an integer from 0"),
    ({"num_outputs": 0, "class_index": 0}, "num_outputs must be an integer >= 1, got 0"),
    ({"num_outputs": 1, "class_index": 0}, "softmax needs num_outputs >= 2"),
    ({"activation": "relu"}, "activation must be one of softmax, sigmoid, got 'relu'"),
    ({"class_names": ("a", "b", "c")}, "class_names has 3 names for num_outputs 2"),
    ({"class_names": ("COVID-19", "other")}, "class_names\\[1\\] is 'other', not class_name 'COVID-19'"),
])
def test_outputs_that_do_not_describe_one_class_are_refused(outputs, message):
    with pytest.raises(ValueError, match=message):
        ExpertMeta(arch="resnet18", class_name="COVID-19", input_size=SIZE, **outputs)


def test_a_single_logit_sigmoid_head_is_allowed():
    meta = ExpertMeta(arch="resnet18", class_name="x", input_size=SIZE, num_outputs=1, class_index=0,
                      activation="sigmoid")
    assert meta.num_outputs == 1


def test_expert_init_flags_fill_in_the_outputs():
    assert class_outputs("pneumonia", None, None, NAMES, None) == {
        "num_outputs": 3, "class_index": 2, "activation": "softmax", "class_names": ("normal", "COVID-19", "pneumonia")}
    assert class_outputs("x", None, None, None, None) == {
        "num_outputs": 2, "class_index": 1, "activation": "softmax", "class_names": ()}
    assert class_outputs("x", 1, None, None, None)["activation"] == "sigmoid"
    assert class_outputs("x", 14, 5, None, "sigmoid")["class_index"] == 5
    with pytest.raises(ValueError, match="a model with 14 outputs needs --class-index or --class-names"):
        class_outputs("x", 14, None, None, None)
    with pytest.raises(ValueError, match="--class-name 'x' is not one of --class-names normal, COVID-19, pneumonia"):
        class_outputs("x", None, None, NAMES, None)


def test_a_three_output_softmax_and_a_single_logit_sigmoid_expert_score_their_own_class(tmp_path):
    torch.manual_seed(0)
    three, single = get_model("resnet18", num_classes=3).eval(), get_model("resnet18", num_classes=1).eval()
    c1 = init_expert(tmp_path, "pneumonia", write_state(tmp_path / "three.pt", three), class_names=NAMES)
    c2 = init_expert(tmp_path, "nodule", write_state(tmp_path / "single.pt", single), num_outputs=1)
    assert (load_meta(c1).class_index, load_meta(c2).activation) == (2, "sigmoid")
    scorer = DualScorer(c1, c2, device="cpu")
    x = torch.randn(3, 3, SIZE, SIZE)
    out = scorer.score(x)
    with torch.inference_mode():
        logits3, cams3 = forward_with_cams(three, x)
        logits1 = single(x)
    np.testing.assert_allclose(out["p1"], logits3.softmax(-1)[:, 2].numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["p2"], logits1[:, 0].sigmoid().numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["cam1"], cams3[:, 2].numpy(), rtol=1e-4, atol=1e-5)
    # each stored CAM is its class's raw CAM: its mean plus the class's bias is the class's logit
    np.testing.assert_allclose(out["cam1"].mean((-2, -1)) + three.fc.bias[2].item(), logits3[:, 2].numpy(),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["cam2"].mean((-2, -1)) + single.fc.bias[0].item(), logits1[:, 0].numpy(),
                               rtol=1e-4, atol=1e-5)


def test_a_head_of_another_size_is_refused_naming_the_file_and_both_shapes(tmp_path):
    path = write_state(tmp_path / "three.pt", get_model("resnet18", num_classes=3))
    with pytest.raises(CheckpointError, match=rf"^{path}: its head fc.weight has shape \(3, 512\) \(3 outputs\), but "
                       r"the expert's resnet18 head has shape \(4, 512\) \(4 outputs\)"):
        build_expert("resnet18", path, num_outputs=4)
    uri = init_expert(tmp_path, "COVID-19", path, num_outputs=3, class_index=1)
    meta_file = Path(uri) / "expert.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "num_outputs": 2}))
    with pytest.raises(CheckpointError, match=rf"^{uri}: its head fc.weight has shape \(3, 512\)"):
        load_expert(uri)


def test_an_efficientnet_head_behind_dropout_is_checked_and_saved_by_its_module_path(tmp_path):
    path = write_state(tmp_path / "b0.pt", get_model("efficientnet_b0", num_classes=3))
    with pytest.raises(CheckpointError, match=r"its head classifier.1.weight has shape \(3, 1280\)"):
        build_expert("efficientnet_b0", path)
    uri = str(tmp_path / "b0")
    save_expert(build_expert("efficientnet_b0", path, num_outputs=3), uri,
                {"arch": "efficientnet_b0", "class_name": "x", "input_size": SIZE, "num_outputs": 3, "class_index": 0})
    assert load_expert(uri).model.classifier[1].out_features == 3


def test_an_imagenet_state_dict_gets_a_fresh_head_of_num_outputs(tmp_path):
    path = write_state(tmp_path / "imagenet.pt", get_model("resnet18"))
    assert build_expert("resnet18", path, num_outputs=5).fc.out_features == 5
    assert build_expert("resnet18", path, num_outputs=1000).fc.out_features == 1000


def test_training_refuses_to_warm_start_from_a_non_binary_expert(tmp_path):
    uri = init_expert(tmp_path, "COVID-19", "none", num_outputs=3, class_index=1)
    with pytest.raises(ValueError, match="training warm-starts binary experts only .* this one has 3 outputs"):
        resolve_init_from([uri], ["COVID-19"])


def test_two_classes_of_one_model_share_one_forward_pass_with_the_two_pass_heatmaps(tmp_path):
    torch.manual_seed(0)
    three = get_model("resnet18", num_classes=3).eval()
    weights = write_state(tmp_path / "three.pt", three)
    covid, pneumonia = (init_expert(tmp_path, name, weights, class_names=NAMES) for name in ("COVID-19", "pneumonia"))
    assert load_meta(covid).sha256 == load_meta(pneumonia).sha256  # the same file: the same recorded weights
    scorer = DualScorer(covid, pneumonia, alpha=15.0, device="cpu")
    assert scorer.one_model and scorer.c1.model is scorer.c2.model
    passes = []
    scorer.c1.model.conv1.register_forward_hook(lambda *_: passes.append(1))
    x = torch.randn(3, 3, SIZE, SIZE)
    out = scorer.score(x)
    assert len(passes) == 1
    with torch.inference_mode():  # the two-pass path: each expert's own forward, its class's CAM
        (l1, c1), (l2, c2) = (forward_with_cams(three, x, [k]) for k in (1, 2))
    np.testing.assert_allclose(out["p1"], l1.softmax(-1)[:, 1].numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["p2"], l2.softmax(-1)[:, 2].numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["cam1"], c1[:, 0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["cam2"], c2[:, 0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.log(out["heatmap"]), np.log(addk(c1[:, 0], c2[:, 0], 15.0).numpy()), atol=1e-3)
    other = init_expert(tmp_path, "normal", write_state(tmp_path / "other.pt", get_model("resnet18", num_classes=3)),
                        class_names=NAMES)
    assert not DualScorer(covid, other, device="cpu").one_model  # other weights: a forward pass each
