"""A whole Ray node lost mid-run, as ``tests/test_faults.py`` runs it: in a process of its own, with a Ray of its
own on 127.0.0.1 (Ray's ``cluster_utils.Cluster``: a head and two worker nodes, each a raylet of its own; the
session's shared Ray stays as it is). A node is removed by killing its raylet and every process on it. Each
scenario must finish by itself and prints one JSON line of what was seen.

``python tests/node_loss.py score C1 C2 IMAGES OUTPUT``: one CPU per node and one scoring actor on each; once
the three actors are up (each holding its node's CPU) and one runs a batch, a worker node is removed. Seen:
nodes, actors, when the node went, how many rows were written by then, nodes alive after.

``python tests/node_loss.py train DATA OUTPUT``: a head without CPUs and two worker nodes of two CPUs; one
expert trains (resnet18, 3 epochs, one Ray Train worker of one CPU, ``max_failures`` 2, as ``dualcam train``
sets Ray Train's ``FailureConfig``); once its first epoch is reported with its checkpoint, the node its
training worker runs on is removed, while the second epoch runs. Seen: nodes, when the node went, each epoch's
end and the checkpoint it resumed from, the run's length.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

SCORING_A_BATCH = "MapBatches(DualScorer)).submit"
"""A scoring actor's title while it runs a batch."""
TRAINING_WORKER = "ray::RayTrainWorker"


@contextlib.contextmanager
def local_cluster(head_cpus: int, worker_cpus: int) -> Iterator[tuple]:
    """(cluster, its two worker nodes), joined by this process; shut down afterwards."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    try:
        workers = [cluster.add_node(num_cpus=worker_cpus, node_ip_address="127.0.0.1") for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


def in_thread(work) -> tuple[threading.Thread, dict]:
    """``work()`` started in a thread; its result or error lands in the dict, as "result" or "error"."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as err:  # re-raised by the scenario
            outcome["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def alive_nodes() -> int:
    import ray

    return len([n for n in ray.nodes() if n["Alive"]])


def score(c1: str, c2: str, images: str, output: str) -> dict:
    import ray

    from dualcam.distributed.pipeline import score_archive
    from dualcam.io.results import data_files, read_results

    from conftest import descendants

    with local_cluster(head_cpus=1, worker_cpus=1) as (cluster, workers):
        started = time.monotonic()
        run, outcome = in_thread(lambda: score_archive(c1, c2, images, output, actors=3, cpus_per_actor=1,
                                                       batch_size=4, rows_per_file=8, progress=False))
        # scoring under way on every node: all three CPUs held by the actors and one of them running a batch
        # (not "rows written": on a loaded machine writing lags, and every input can be scored before the
        # first file appears)
        most_held = 0.0
        while run.is_alive():
            held = 3 - ray.available_resources().get("CPU", 0)
            most_held = max(most_held, held)
            if held == 3 and any(c.startswith("ray::") and SCORING_A_BATCH in c for c in descendants().values()):
                break
            time.sleep(0.05)
        if not run.is_alive():
            raise RuntimeError(f"the run ended before a node could be removed (at most {most_held:g} CPUs held at "
                               f"once, {len(data_files(output))} files): {outcome}")
        seen = {"nodes": alive_nodes(), "actors": 3 - int(ray.available_resources().get("CPU", 0)),
                "rows_then": read_results(output, ["uri"], warn_duplicates=False).num_rows,
                "removed_after_s": time.monotonic() - started}
        cluster.remove_node(workers[0], allow_graceful=False)
        run.join()
        if "error" in outcome:
            raise outcome["error"]
        summary = outcome["result"]
        return {**seen, "alive_after": alive_nodes(), "ok": summary.ok, "errors": summary.errors,
                "inputs": summary.inputs}


def train(data: str, output: str) -> dict:
    from dualcam.distributed.train_loop import Recipe
    from dualcam.distributed.training import train_experts
    from dualcam.io.checkpoints import load_meta

    from conftest import descendants

    recipe = Recipe(arch="resnet18", weights="none", epochs=3, batch_size=8, image_size=64, lr=0.01, seed=3)
    with local_cluster(head_cpus=0, worker_cpus=2) as (cluster, workers):
        started = time.time()
        run, outcome = in_thread(lambda: train_experts(output, ["A"], data=data, recipe=recipe, cpus_per_worker=1,
                                                       max_failures=2, log=lambda line: None))
        while run.is_alive() and not list(Path(output).glob("_ray_train/*/checkpoint_manager_snapshot.json")):
            time.sleep(0.05)  # until the first epoch is reported with its checkpoint
        # the worker node whose raylet runs the training worker (Ray's workers are its raylet's children)
        hosts = [w for w in workers if any(c.startswith(TRAINING_WORKER) for c in descendants(raylet_pid(w)).values())]
        if not run.is_alive() or len(hosts) != 1:
            raise RuntimeError(f"no training worker to take away ({len(hosts)} nodes host one): {outcome}")
        nodes = alive_nodes()
        removed_at = time.time()
        cluster.remove_node(hosts[0], allow_graceful=False)
        run.join()
        if "error" in outcome:
            raise outcome["error"]
        (expert,) = outcome["result"]
        history = load_meta(expert.uri).metrics["history"]
        return {"nodes": nodes, "alive_after": alive_nodes(), "removed_after_s": removed_at - started,
                "epochs": [h["epoch"] for h in history],
                "resumed_from_epoch": [h["resumed_from_epoch"] for h in history],
                "epoch_end_after_removal_s": [h["epoch_end_time"] - removed_at for h in history],
                "total_s": time.time() - started}


def raylet_pid(node) -> int:
    """The pid of a ``cluster_utils`` node's raylet."""
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


if __name__ == "__main__":
    scenario, *arguments = sys.argv[1:]
    # before Ray is imported: its files (sessions, sockets, the "current cluster" address) in a folder of this
    # run's own, and every Ray process on loopback
    temp = tempfile.mkdtemp(prefix="rayn")
    os.environ.update(RAY_TMPDIR=temp, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    try:
        print(json.dumps({"score": score, "train": train}[scenario](*arguments)), flush=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
