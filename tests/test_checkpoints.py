"""Experts and their checkpoints: building, round trips on disk and S3, and every refusal."""

import hashlib
import io
import json
import time
from pathlib import Path

import pytest
import torch
from torchvision.models import DenseNet121_Weights, ResNet18_Weights, ResNet152_Weights, get_model

from dualcam.io import storage
from dualcam.io.checkpoints import (
    CheckpointError,
    ExpertMeta,
    build_expert,
    imagenet_weights,
    load_expert,
    load_meta,
    save_expert,
)

META = {"arch": "resnet18", "class_name": "COVID-19", "input_size": 64}


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def write_state(uri: str, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    storage.write_bytes(uri, buf.getvalue())


@pytest.mark.parametrize("arch,head", [("resnet18", "fc"), ("densenet121", "classifier"),
                                       ("efficientnet_b0", "classifier.1"), ("regnet_y_400mf", "fc")])
def test_build_expert_has_binary_head(arch, head):
    model = build_expert(arch)
    assert model.get_submodule(head).out_features == 2
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2)


def test_imagenet_resolves_to_torchvision_defaults():
    assert imagenet_weights("resnet18") is ResNet18_Weights.IMAGENET1K_V1
    assert imagenet_weights("resnet152") is ResNet152_Weights.IMAGENET1K_V2
    assert imagenet_weights("densenet121") is DenseNet121_Weights.IMAGENET1K_V1


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="vgg16"):
        build_expert("vgg16")


def test_weights_from_an_imagenet_shaped_state_dict(tmp_path):
    torch.manual_seed(0)
    backbone = get_model("resnet18", weights=None)  # 1000 classes, as torchvision publishes it
    path = str(tmp_path / "resnet18-imagenet.pth")
    write_state(path, backbone.state_dict())
    model = build_expert("resnet18", path)
    assert model.fc.out_features == 2
    torch.testing.assert_close(model.conv1.weight, backbone.conv1.weight)
    torch.testing.assert_close(model.layer4[1].bn2.running_var, backbone.layer4[1].bn2.running_var)
    assert all(p.requires_grad for p in model.parameters())


def test_weights_from_a_binary_state_dict_on_s3(s3_bucket):
    source = build_expert("resnet18")
    uri = f"{s3_bucket}/weights/expert.pt"
    write_state(uri, source.state_dict())
    assert same_state(build_expert("resnet18", uri), source)


def test_densenet_legacy_key_names_are_accepted(tmp_path):
    source = get_model("densenet121", weights=None)
    # torchvision's published file predates BatchNorm's num_batches_tracked and used "norm.1" names
    legacy = {
        k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v
        for k, v in source.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert any("norm.1." in k for k in legacy)
    path = str(tmp_path / "densenet121-legacy.pth")
    write_state(path, legacy)
    model = build_expert("densenet121", path)
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
    torch.testing.assert_close(model.features.denseblock1.denselayer1.norm1.weight,
                               source.features.denseblock1.denselayer1.norm1.weight)


def test_missing_or_unreadable_weights_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.pt: weights file not found"):
        build_expert("resnet18", str(tmp_path / "nothing.pt"))
    (tmp_path / "notes.pt").write_text("these are not weights\n" * 20)
    with pytest.raises(CheckpointError, match="notes.pt: not a readable torch weights file"):
        build_expert("resnet18", str(tmp_path / "notes.pt"))


def test_wrapper_prefixes_and_half_precision_are_normalized(tmp_path):
    source = build_expert("resnet18")
    path = str(tmp_path / "ddp-half.pt")
    write_state(path, {f"module.{k}": v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()})
    model = build_expert("resnet18", path)
    assert model.fc.weight.dtype == torch.float32
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight.half().float())
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_expert("resnet18")
    uri = str(tmp_path / "expert")
    meta = save_expert(model, uri, dict(META, metrics={"val_accuracy": 0.9}))
    return model, uri, meta


def test_round_trip_local(saved):
    model, uri, meta = saved
    assert meta.version and meta.created_at and len(meta.sha256) == 64 and meta.version.endswith(meta.sha256[:8])
    assert sorted(p.name for p in Path(uri).iterdir()) == ["expert.json", "weights.pt"]
    assert hashlib.sha256((Path(uri) / "weights.pt").read_bytes()).hexdigest() == meta.sha256
    expert = load_expert(uri)
    assert expert.meta == meta and expert.meta.metrics == {"val_accuracy": 0.9}
    assert expert.meta.mean == (0.485, 0.456, 0.406) and expert.meta.color_mode == "L"
    assert not expert.model.training and same_state(expert.model, model)
    assert all(p.requires_grad for p in expert.model.parameters())  # can be fine-tuned further
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(expert.model(x), model.eval()(x))


def test_round_trip_s3(s3_bucket):
    model = build_expert("densenet121")
    uri = f"{s3_bucket}/experts/pneumonia/v1"
    meta = save_expert(model, uri, ExpertMeta(arch="densenet121", class_name="pneumonia", input_size=96))
    assert load_meta(uri) == meta
    expert = load_expert(uri)
    assert expert.uri == uri and same_state(expert.model, model)


def test_meta_needs_only_three_fields_and_rejects_unknown_ones():
    with pytest.raises(ValueError, match="lacks input_size"):
        ExpertMeta.from_dict({"arch": "resnet18", "class_name": "x"})
    with pytest.raises(ValueError, match="unknown expert metadata keys: colour"):
        ExpertMeta.from_dict(dict(META, colour="L"))
    with pytest.raises(ValueError, match="input_size"):
        ExpertMeta.from_dict(dict(META, input_size=8))


def test_meta_validates_normalization():
    with pytest.raises(ValueError, match="mean and std need 3 values"):
        ExpertMeta.from_dict(dict(META, mean=[0.5, 0.5]))
    with pytest.raises(ValueError, match="std > 0"):
        ExpertMeta.from_dict(dict(META, std=[0.2, 0.0, 0.2]))


def test_checkpoints_are_immutable(saved):
    model, uri, meta = saved
    with pytest.raises(CheckpointError, match=f"{uri}: already holds an expert checkpoint"):
        save_expert(model, uri, META)
    assert load_expert(uri).meta == meta


def test_saving_a_model_under_the_wrong_arch_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="do not fit arch 'resnet34'"):
        save_expert(build_expert("resnet18"), str(tmp_path / "e"), dict(META, arch="resnet34"))
    assert not (tmp_path / "e").exists()


def rewrite_meta(uri: str, **changes) -> None:
    path = Path(uri) / "expert.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_refuses_a_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere: no expert.json"):
        load_expert(str(tmp_path / "nowhere"))


def test_refuses_a_missing_weights_file(saved):
    _, uri, _ = saved
    (Path(uri) / "weights.pt").unlink()
    with pytest.raises(CheckpointError, match=f"{uri}: weights.pt is missing"):
        load_expert(uri)


def test_refuses_a_truncated_weights_file(saved):
    _, uri, _ = saved
    path = Path(uri) / "weights.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"{uri}: weights.pt is truncated or altered"):
        load_expert(uri)


class PlantsAFile:
    """An object whose unpickling would run code: it must never be unpickled."""

    marker = None

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_refuses_pickled_code_even_with_a_matching_hash(saved, tmp_path):
    model, uri, _ = saved
    PlantsAFile.marker = str(tmp_path / "code-ran")
    state = dict(model.state_dict(), evil=PlantsAFile())
    buf = io.BytesIO()
    torch.save(state, buf)
    (Path(uri) / "weights.pt").write_bytes(buf.getvalue())
    rewrite_meta(uri, sha256=hashlib.sha256(buf.getvalue()).hexdigest())
    with pytest.raises(CheckpointError, match="pickled objects other than tensors"):
        load_expert(uri)
    assert not (tmp_path / "code-ran").exists()


def test_refuses_weights_of_another_arch(saved):
    _, uri, _ = saved
    rewrite_meta(uri, arch="resnet34")
    with pytest.raises(CheckpointError, match=f"{uri}: weights do not fit arch 'resnet34'"):
        load_expert(uri)


def test_refuses_unverifiable_weights(saved):
    _, uri, _ = saved
    rewrite_meta(uri, sha256="")
    with pytest.raises(CheckpointError, match="has no sha256"):
        load_expert(uri)


def test_refuses_broken_or_newer_metadata(saved):
    _, uri, _ = saved
    rewrite_meta(uri, format_version="2")
    with pytest.raises(CheckpointError, match="format_version must be an integer"):
        load_expert(uri)
    rewrite_meta(uri, format_version=99)
    with pytest.raises(CheckpointError, match="newer dualcam"):
        load_expert(uri)
    (Path(uri) / "expert.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_expert(uri)


def test_refuses_a_missing_s3_checkpoint(s3_bucket):
    with pytest.raises(CheckpointError, match=f"{s3_bucket}/absent: no expert.json"):
        load_expert(f"{s3_bucket}/absent")


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_output_stride_16_doubles_the_cam_grid_with_the_same_weights(arch, tmp_path):
    from dualcam.maps.cam import forward_with_cams

    torch.manual_seed(0)
    coarse = build_expert(arch).eval()
    fine = build_expert(arch, output_stride=16).eval()
    fine.load_state_dict(coarse.state_dict())  # same parameters, only the stride differs
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert forward_with_cams(coarse, x)[1].shape[-2:] == (3, 3)
        logits, cams = forward_with_cams(fine, x)
    assert cams.shape[-2:] == (6, 6)
    torch.testing.assert_close(cams.mean((-2, -1)) + fine.fc.bias, logits, rtol=1e-4, atol=1e-4)
    meta = ExpertMeta(arch=arch, class_name="C1", input_size=96, output_stride=16)
    save_expert(fine, str(tmp_path / "e"), meta)
    loaded = load_expert(str(tmp_path / "e"))
    assert loaded.meta.output_stride == 16
    with torch.no_grad():
        torch.testing.assert_close(forward_with_cams(loaded.model, x)[1], cams)


def test_output_stride_is_checked():
    with pytest.raises(ValueError, match="ResNets only"):
        ExpertMeta(arch="densenet121", class_name="C1", input_size=96, output_stride=16)
    with pytest.raises(ValueError, match="one of 32, 16"):
        build_expert("resnet18", output_stride=8)


def test_resolve_expert_takes_a_folder_of_versions_to_its_latest(tmp_path):
    from dualcam.io.checkpoints import resolve_expert, save_expert_version

    meta = ExpertMeta(arch="resnet18", class_name="C1", input_size=64)
    first, _ = save_expert_version(build_expert("resnet18"), str(tmp_path / "C1"), meta)
    time.sleep(1.1)  # version ids start with the time to the second
    second, _ = save_expert_version(build_expert("resnet18"), str(tmp_path / "C1"), meta)
    assert resolve_expert(str(tmp_path / "C1")) == second
    assert resolve_expert(first) == first
    assert resolve_expert(str(tmp_path / "none")) == str(tmp_path / "none")
