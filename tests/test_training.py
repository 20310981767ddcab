"""Training tiny experts on the shared local Ray: concurrency, checkpoints, warm start, resume."""

import contextlib
import dataclasses
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from dualcam import DriftScorer, DualScorer, load_expert, load_meta
from dualcam.cli import main
from dualcam.distributed.training import Recipe, train_experts
from dualcam.io import storage
from dualcam.io.checkpoints import latest_version, list_versions

from conftest import kill_driver_when
from samples import png_bytes, write_labelled_folder

TINY = Recipe(arch="resnet18", weights="none", epochs=3, batch_size=8, image_size=64, lr=0.01, seed=3)
TINY_ARGS = ["--arch", "resnet18", "--weights", "none", "--epochs", "3", "--batch-size", "8",
             "--input-size", "64", "--lr", "0.01", "--seed", "3"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    write_labelled_folder(root, 24)
    return root


@pytest.fixture(scope="module")
def trained(ray_cluster, labelled, tmp_path_factory) -> tuple[Path, str]:
    """Two experts trained at once through the command: A against everything else, B against normal only."""
    out = tmp_path_factory.mktemp("trained")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["train", "--data", str(labelled), "--class1", "A", "--class2", "B", "--class2-negatives", "normal",
                     "--output", str(out), "--export-epochs", *TINY_ARGS])
    assert code == 0
    return out, printed.getvalue()


def test_both_experts_train_concurrently_and_score(trained, labelled):
    out, printed = trained
    assert "images per split (the paper's Table I)" in printed
    assert " 14 / 28 " in printed and " 14 / 14 " in printed  # A: 24 positives, 48 negatives; B: normal only
    a, b = latest_version(str(out / "A")), latest_version(str(out / "B"))
    assert a in printed and b in printed
    meta_a, meta_b = load_meta(a), load_meta(b)
    assert meta_a.recipe["negatives"] is None and meta_b.recipe["negatives"] == ["normal"]
    assert meta_a.metrics["counts"]["test"] == {"positives": 5, "negatives": 10}
    # the two trainers ran at the same time: each started training before the other had finished
    history_a, history_b = meta_a.metrics["history"], meta_b.metrics["history"]
    assert len(history_a) == len(history_b) == 3
    assert history_a[0]["epoch_start_time"] < history_b[-1]["epoch_end_time"]
    assert history_b[0]["epoch_start_time"] < history_a[-1]["epoch_end_time"]
    assert all(h["train_images_per_second"] > 0 and h["train_images"] == 42 for h in meta_a.metrics["history"])
    # epochs counted from 1 everywhere: the history, best_epoch, and the table the command ends with
    assert [h["epoch"] for h in history_a] == [1, 2, 3]
    best = meta_a.metrics["best_epoch"]
    assert meta_a.metrics["val"]["accuracy"] == max(h["val_accuracy"] for h in meta_a.metrics["history"])
    assert meta_a.metrics["test"]["auc"] == meta_a.metrics["history"][best - 1]["test_auc"]
    (row,) = [line.split() for line in printed.splitlines() if line.startswith("A ") and a in line]
    assert int(row[1]) == best
    scorer = DualScorer(a, b, device="cpu")
    image = torch.zeros(1, 3, 64, 64)
    assert scorer.score(image)["heatmap"].shape == (1, 2, 2)
    assert load_expert(a).meta.data_fingerprint == meta_a.data_fingerprint


def test_each_epoch_line_is_printed_once(trained):
    """Ray Train's print patch sent a worker's print() to stdout and, through its logger, to stderr too:
    each epoch's line showed twice in a terminal. With it off, the line is in the workers' stdout only."""
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    lines = {suffix: [line for path in logs.glob(f"worker-*{suffix}") for line in path.read_text().splitlines()
                      if line.startswith(("[A] epoch ", "[B] epoch "))] for suffix in (".out", ".err")}
    assert sum(line.startswith("[A] epoch 3/3: ") for line in lines[".out"]) >= 1
    assert lines[".err"] == []


def test_every_epoch_is_exported_as_an_expert_for_drift(trained):
    out, printed = trained
    published = load_expert(latest_version(str(out / "A")))
    root = Path(published.meta.recipe["exported_epochs"])
    assert f"A: every epoch's weights go to {root}/epoch-NNN" in printed
    assert sorted(p.name for p in root.iterdir()) == ["epoch-001", "epoch-002", "epoch-003"]
    assert list_versions(str(out / "A")) == [published.uri]  # exported epochs are not versions
    best_epoch = published.meta.metrics["best_epoch"]
    best = load_expert(str(root / f"epoch-{best_epoch:03d}"))
    weights = best.model.state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in published.model.state_dict().items())
    assert best.meta.metrics["epoch"] == best_epoch
    assert best.meta.metrics["val_accuracy"] == published.meta.metrics["val"]["accuracy"]
    assert best.meta.data_fingerprint == published.meta.data_fingerprint
    # two epochs of one run are two versions of one expert: drift compares them
    scorer = DriftScorer(str(root / "epoch-001"), str(root / "epoch-003"), device="cpu")
    assert scorer.score(torch.zeros(1, 3, 64, 64))["gained"].shape == (1, 2, 2)


def test_rerunning_a_finished_command_trains_nothing(trained, labelled):
    out, _ = trained
    before = sorted(p.name for p in (out / "A").iterdir())
    logged = []
    again = train_experts(str(out), ["A", "B"], data=str(labelled), negatives=[None, ["normal"]], recipe=TINY,
                          log=logged.append)
    assert all(e.already_trained for e in again)
    assert sorted(p.name for p in (out / "A").iterdir()) == before
    assert any("already trained with this data and recipe" in line for line in logged)
    # only A's data changes: B is found finished, A trained anew; still returned in class order
    mixed = train_experts(str(out), ["A", "B"], data=str(labelled), negatives=[["normal"], ["normal"]], recipe=TINY)
    assert [(e.label, e.already_trained) for e in mixed] == [("A", False), ("B", True)]


def test_an_image_replaced_in_place_changes_the_training_key(tmp_path):
    from dualcam.distributed.training import plan_experts

    write_labelled_folder(tmp_path, 6)
    def key() -> str:
        plans, _ = plan_experts(str(tmp_path), ["A"], [None], [None], seed=3)
        return plans[0].training_key(TINY)

    before = key()
    assert key() == before  # the same files: already trained
    image = sorted((tmp_path / "A").iterdir())[0]
    image.write_bytes(image.read_bytes() + b"\0")  # same name, other bytes
    assert key() != before


def test_warm_start_from_an_earlier_version_yields_a_new_version(trained, labelled, tmp_path):
    out, _ = trained
    previous = latest_version(str(out / "A"))
    retrained = train_experts(str(out), ["A"], data=str(labelled), recipe=dataclasses.replace(TINY, epochs=1),
                              init_from=[str(out)])
    assert retrained[0].uri != previous and retrained[0].meta.recipe["init_from"] == previous
    assert retrained[0].meta.recipe["weights"] == previous  # what it started from, not TINY's unused "none"
    assert latest_version(str(out / "A")) == retrained[0].uri
    again = train_experts(str(out), ["A"], data=str(labelled), recipe=dataclasses.replace(TINY, epochs=1),
                          init_from=[str(out)])  # the same retraining command, rerun: nothing new
    assert again[0].already_trained and again[0].uri == retrained[0].uri
    with pytest.raises(ValueError, match="is an expert for 'A', which is not being trained"):
        train_experts(str(tmp_path), ["B"], data=str(labelled), recipe=TINY, init_from=[previous])


def test_an_interrupted_run_resumes_from_its_last_checkpoint(ray_cluster, labelled, tmp_path):
    out = tmp_path / "out"
    code = (
        "from dualcam.distributed.training import Recipe, train_experts\n"
        f"train_experts({str(out)!r}, ['B'], data={str(labelled)!r}, "
        "recipe=Recipe(arch='resnet18', weights='none', epochs=3, batch_size=8, image_size=64, seed=5))\n"
    )
    # killed once Ray has recorded the first epoch's checkpoint
    def first_checkpoint() -> bool:
        return any(out.glob("_ray_train/*/checkpoint_manager_snapshot.json"))

    killed_at = kill_driver_when(code, ray_cluster, first_checkpoint, timeout=300)
    assert not (out / "B").exists()

    done = train_experts(str(out), ["B"], data=str(labelled),
                         recipe=Recipe(arch="resnet18", weights="none", epochs=3, batch_size=8, image_size=64, seed=5))
    history = done[0].meta.metrics["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0]["epoch_end_time"] < killed_at < history[-1]["epoch_end_time"]  # epoch 1 came from the first run


def test_two_workers_train_one_expert_with_ddp(ray_cluster, labelled, tmp_path):
    done = train_experts(str(tmp_path), ["B"], data=str(labelled), negatives=[["normal"]],
                         recipe=dataclasses.replace(TINY, epochs=1), workers_per_expert=2, cpus_per_worker=1)
    epoch = done[0].meta.metrics["history"][0]
    # every split is counted over both workers' shards: 14 + 14 train, 5 + 5 val and test images
    assert (epoch["train_images"], epoch["val_n"], epoch["test_n"]) == (28, 10, 10)


def test_training_data_and_output_on_s3(ray_cluster, labelled, s3_bucket):
    lines = ["uri,label"]
    for path in sorted(labelled.rglob("*.png")):
        if path.parent.name in ("B", "normal"):
            key = f"images/{path.parent.name}/{path.name}"
            storage.write_bytes(f"{s3_bucket}/{key}", path.read_bytes())
            lines.append(f"{key},{path.parent.name}")
    lines.append("images/B/gone.png,B")
    storage.write_bytes(f"{s3_bucket}/labels.csv", ("\n".join(lines) + "\n").encode())
    logged = []
    done = train_experts(f"{s3_bucket}/models", ["B"], data=f"{s3_bucket}/labels.csv",
                         recipe=dataclasses.replace(TINY, epochs=1), log=logged.append)
    assert done[0].uri.startswith(f"{s3_bucket}/models/B/")
    assert load_expert(done[0].uri).meta.metrics["history"][0]["train_images"] == 28
    missing = f"1 listed images are missing and left out, e.g. {s3_bucket}/images/B/gone.png"
    assert any(missing in line for line in logged)


class Split:
    """A split as ``train_loop`` reads it from Ray Train (``iter_batches``), from an Arrow table, without Ray."""

    def __init__(self, table: pa.Table):
        self.table = table

    def iter_batches(self, batch_size: int, batch_format: str):
        assert batch_format == "pyarrow"
        for start in range(0, self.table.num_rows, batch_size):
            yield self.table.slice(start, batch_size)


def split_of(folder: Path, n: int, bad: int) -> Split:
    """``n`` images of a split, half of them positives, the last ``bad`` of them not images at all."""
    folder.mkdir()
    uris = []
    for i in range(n):
        path = folder / f"{i:02d}.png"
        pixels = np.full((48, 48), 40 + 150 * (i % 2), np.uint8)
        path.write_bytes(b"not an image after all" if i >= n - bad else png_bytes(pixels))
        uris.append(str(path))
    return Split(pa.table({"uri": uris, "target": pa.array([i % 2 for i in range(n)], pa.int64())}))


def test_validation_and_test_images_that_fail_to_load_are_counted_and_too_many_stop_training(tmp_path):
    from dualcam.distributed import train_loop
    from dualcam.distributed.train_loop import UnloadedImages, _evaluate, unloaded_note
    from dualcam.distributed.training import TrainedExpert, results_table
    from dualcam.io.checkpoints import ExpertMeta, build_expert

    meta = ExpertMeta(arch="resnet18", class_name="A", input_size=64, color_mode="L")
    model = build_expert("resnet18", "none")
    cpu = torch.device("cpu")
    val, test = split_of(tmp_path / "val", 20, bad=1), split_of(tmp_path / "test", 20, bad=0)  # 1 in 20: allowed
    metrics = _evaluate(model, {"val": val, "test": test}, meta, 8, cpu)
    first = str(tmp_path / "val" / "19.png")
    assert (metrics["val_unloaded"], metrics["test_unloaded"]) == (1, 0) and "test_first_unloaded" not in metrics
    assert metrics["val_first_unloaded"].startswith(f"{first}: not a PNG, JPEG or DICOM file")
    assert unloaded_note(metrics) == (f"; 1 of the val images could not be loaded, left out of the metrics "
                                      f"(first: {metrics['val_first_unloaded']})")
    assert unloaded_note({**metrics, "val_unloaded": 0}) == ""

    flat = {split: {k.split("_", 1)[1]: v for k, v in metrics.items() if k.startswith(f"{split}_")}
            for split in ("val", "test")}  # as the published expert's metrics hold them
    table = results_table([TrainedExpert("A", "out/A/v1", dataclasses.replace(meta, metrics=flat), 2)])
    assert table.splitlines()[-1] == f"A: at epoch 2; 1 of the val images could not be loaded, left out of the " \
                                     f"metrics (first: {metrics['val_first_unloaded']})"

    too_many = split_of(tmp_path / "test-bad", 20, bad=2)  # 2 in 20: over MAX_UNLOADED_FRACTION
    assert train_loop.MAX_UNLOADED_FRACTION == 0.05
    with pytest.raises(UnloadedImages, match=r"^2 of the 20 test images could not be loaded, over 0.05 of them "
                                             r"\(train_loop.MAX_UNLOADED_FRACTION\): .* First: "
                                             f"{tmp_path / 'test-bad' / '18.png'}: not a PNG"):
        _evaluate(model, {"val": val, "test": too_many}, meta, 8, cpu)
