"""What a run would do, decided in the driver: the resume set difference and the blocks (no Ray)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dualcam.scoring import planning
from dualcam.scoring.planning import plan_placement


def inputs_table(n: int) -> pa.Table:
    """n inputs in three chunks, as a streamed manifest arrives, with a pass-through column."""
    uris = [f"/archive/{i:05d}.png" for i in range(n)]
    third = n // 3
    return pa.Table.from_batches([
        pa.record_batch({"uri": uris[a:b], "patient": [f"p{i}" for i in range(a, b)]})
        for a, b in ((0, third), (third, 2 * third), (2 * third, n))
    ])


def write_output(folder, rows: list[tuple[str, ...]], per_file: int) -> None:
    """Result files of (uri, status[, input_version]) rows; status ``ok``, ``error`` (a permanent error)
    or ``transient``."""
    folder.mkdir()
    for part, start in enumerate(range(0, len(rows), per_file)):
        chunk = [(*row, None)[:3] for row in rows[start:start + per_file]]
        pq.write_table(pa.table({
            "uri": [u for u, _, _ in chunk], "status": ["ok" if s == "ok" else "error" for _, s, _ in chunk],
            "error_kind": pa.array([{"ok": None, "error": "permanent"}.get(s, s) for _, s, _ in chunk], pa.string()),
            "input_version": pa.array([v for _, _, v in chunk], pa.string()),
        }), folder / f"part-{part:03d}.parquet")


@pytest.mark.parametrize("part_rows", [1, 7, 10_000])  # the output set against the inputs in parts, or at once
def test_progress_leaves_exactly_the_inputs_not_in_the_output(tmp_path, monkeypatch, part_rows):
    monkeypatch.setattr(planning, "PART_ROWS", part_rows)
    inputs = inputs_table(50)
    uris = inputs.column("uri").to_pylist()
    ok, failed, transient = uris[0:50:3], uris[1:50:7], uris[2:50:11]
    failed = [u for u in failed if u not in ok]
    transient = [u for u in transient if u not in ok + failed]
    write_output(tmp_path / "out", [(u, "ok") for u in ok] + [(u, "error") for u in failed]
                 + [(u, "transient") for u in transient] + [("/elsewhere/x.png", "ok")], per_file=4)

    state = planning.progress(inputs, str(tmp_path / "out"))  # transient errors are tried again
    pending = inputs.take(state.pending).column("uri").to_pylist()
    assert pending == [u for u in uris if u not in ok + failed]  # in input order
    assert (state.done, state.retried) == (len(ok) + len(failed), len(transient))

    retrying = planning.progress(inputs, str(tmp_path / "out"), retry_errors=True)  # every error
    assert inputs.take(retrying.pending).column("uri").to_pylist() == [u for u in uris if u not in ok]
    assert (retrying.done, retrying.retried) == (len(ok), len(failed) + len(transient))

    fresh = planning.progress(inputs, str(tmp_path / "nothing-yet"))
    assert fresh.pending.to_pylist() == list(range(50)) and fresh.done == 0


@pytest.mark.parametrize("part_rows", [1, 10_000])
def test_an_input_listed_with_another_version_than_it_was_scored_is_pending_again(tmp_path, monkeypatch, part_rows):
    monkeypatch.setattr(planning, "PART_ROWS", part_rows)
    listed = ["1:10", "2:20", "3:30", None, "5:50", "6:60"]
    uris = [f"/archive/{i}.png" for i in range(len(listed))]
    inputs = pa.table({"uri": uris, "input_version": pa.array(listed, pa.string())})
    write_output(tmp_path / "out", [
        (uris[0], "ok", "1:10"),  # the same version: done
        (uris[1], "ok", "2:19"),  # rewritten since: scored again
        (uris[2], "error", "3:29"),  # a permanent error, and the file replaced since (fixed?): scored again
        (uris[3], "ok", "4:40"),  # its listing cannot say (None): done, as before versions
        (uris[4], "ok", None),  # its row cannot say (a PACS instance): done
    ], per_file=2)  # uris[5]: never scored
    state = planning.progress(inputs, str(tmp_path / "out"))
    assert inputs.take(state.pending).column("uri").to_pylist() == [uris[1], uris[2], uris[5]]
    assert state.changed.to_pylist() == [uris[1], uris[2]] and state.done == 3


def test_blocks_hold_the_pending_rows_once_in_order(tmp_path):
    inputs = inputs_table(1000)
    pending = pa.array([i for i in range(1000) if i % 3], pa.uint64())
    blocks = list(planning.blocks(inputs, pending, 64))
    assert all(b.num_rows == 64 for b in blocks[:-1]) and 0 < blocks[-1].num_rows <= 64
    assert pa.concat_tables(blocks).to_pylist() == inputs.take(pending).to_pylist()
    assert list(planning.blocks(inputs, pa.array([], pa.uint64()), 64)) == []


@pytest.mark.parametrize("rows, slots, batch, expected", [
    (10_000_000, 1000, 16, 1024),  # a large archive: blocks of 1,024 (9,766 of them)
    (100_000, 1000, 16, 16),  # fewer inputs: at least 4 blocks per slot (6,250 blocks for 1,000 CPUs)
    (80, 2, 2, 10),
    (3, 64, 16, 16),  # never less than a batch
    (10_000_000, 8, 48, 1008),  # whole batches, at most 1,024 rows
])
def test_block_rows(rows, slots, batch, expected):
    size = planning.block_rows(rows, slots, batch)
    assert size == expected and size % batch == 0 and size <= max(batch, planning.MAX_ROWS_PER_BLOCK)
    enough = min(planning.BLOCKS_PER_SLOT * slots, -(-rows // batch), rows // planning.MAX_ROWS_PER_BLOCK)
    assert -(-rows // size) >= enough


def test_hours_come_from_the_slower_of_decoding_and_scoring(tmp_path):
    rates = planning.Rates(decode_per_cpu=50.0, model_per_gpu=2000.0, model_per_cpu=5.0)
    gpu_nodes = planning.Cluster.alike(8, cpus=16, gpus=1)
    placement = plan_placement({"CPU": gpu_nodes.cpus, "GPU": gpu_nodes.gpus})
    rate, bound = planning.images_per_second(gpu_nodes, placement, rates)
    assert rate == (128 - 8) * 50.0 and "decoding on the 120 CPUs" in bound  # 8 GPUs could score 16,000/s
    fast_decode = planning.Rates(decode_per_cpu=500.0, model_per_gpu=2000.0)
    assert planning.images_per_second(gpu_nodes, placement, fast_decode) == (16_000.0, "scoring on 8 GPUs")

    cpu_nodes = planning.Cluster.alike(4, cpus=8)
    placement = plan_placement({"CPU": cpu_nodes.cpus})
    rate, _ = planning.images_per_second(cpu_nodes, placement, rates)
    assert placement.actors == 32  # one per CPU, each decoding, then scoring
    assert rate == pytest.approx(32 / (1 / 50 + 1 / 5))

    (tmp_path / "bench.json").write_text('{"rates": {"decode_per_cpu": 40, "model_per_cpu": 3.5, "measured": "here"}}')
    read = planning.Rates.read(str(tmp_path / "bench.json"))
    assert (read.decode_per_cpu, read.model_per_cpu, read.model_per_gpu) == (40.0, 3.5, None)
    with pytest.raises(ValueError, match="no scoring rate per GPU"):
        planning.images_per_second(gpu_nodes, plan_placement({"CPU": 128.0, "GPU": 8.0}), read)
    (tmp_path / "other.json").write_text('{"b_scorer": 3}')
    with pytest.raises(ValueError, match=f"^{tmp_path / 'other.json'}: not a make bench report"):
        planning.Rates.read(str(tmp_path / "other.json"))
    with pytest.raises(ValueError, match="decode_per_cpu must be a positive number"):
        planning.Rates(decode_per_cpu=0.0)


def test_placement_defaults():
    assert plan_placement({"CPU": 2.0}) == plan_placement({"CPU": 2.0}, actors=2, cpus_per_actor=1.0, gpus_per_actor=0)
    assert plan_placement({"CPU": 64.0}).actors == 64
    assert plan_placement({"CPU": 64.0}, cpus_per_actor=4).actors == 16
    assert plan_placement({"CPU": 0.0}).actors == 1  # a CPU-less head before its workers start: one, to ask for them
    gpu = plan_placement({"CPU": 32.0, "GPU": 4.0})
    assert (gpu.actors, gpu.cpus_per_actor, gpu.gpus_per_actor) == (4, 1.0, 1.0)
    assert plan_placement({"CPU": 32.0, "GPU": 4.0}, gpus_per_actor=0.5).actors == 8
    with pytest.raises(ValueError, match="1 GPUs per actor requested, but the cluster has 0 GPUs"):
        plan_placement({"CPU": 8.0}, gpus_per_actor=1)
