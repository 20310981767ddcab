"""A whole Ray node lost mid-run, as ``tests/test_faults.py`` runs it: in a process of its own, with a Ray of its
own (the session's shared Ray stays as it is).

``python tests/node_loss.py C1 C2 IMAGES OUTPUT``: three nodes on 127.0.0.1 (Ray's ``cluster_utils.Cluster``),
one CPU and one scoring actor each; once the three actors are up (each holding its node's CPU), a worker node is
removed (its raylet and every process on it killed). The run must finish by itself. Prints one JSON line: what
was seen (nodes, actors, when the node went, how many rows were written by then, nodes alive after).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time

SCORING_A_BATCH = "MapBatches(DualScorer)).submit"
"""A scoring actor's title while it runs a batch."""


def main(c1: str, c2: str, images: str, output: str) -> int:
    # Ray's files (sessions, sockets, the "current cluster" address) in a folder of this run's own
    temp = tempfile.mkdtemp(prefix="rayn")
    os.environ["RAY_TMPDIR"] = temp
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback only
    import ray
    from ray.cluster_utils import Cluster

    from dualcam.distributed.pipeline import score_archive
    from dualcam.io.results import data_files, read_results

    from conftest import descendants

    loopback = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={**loopback, "include_dashboard": False})
    try:
        workers = [cluster.add_node(**loopback) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        outcome: dict = {}

        def score() -> None:
            try:
                outcome["summary"] = score_archive(c1, c2, images, output, actors=3, cpus_per_actor=1, batch_size=4,
                                                   rows_per_file=8, progress=False)
            except BaseException as err:  # reported below
                outcome["error"] = err

        run = threading.Thread(target=score)
        started = time.monotonic()
        run.start()
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
        seen = {"nodes": len([n for n in ray.nodes() if n["Alive"]]), "actors": 3 - int(ray.available_resources()
                                                                                          .get("CPU", 0)),
                "rows_then": read_results(output, ["uri"], warn_duplicates=False).num_rows,
                "removed_after_s": time.monotonic() - started}
        cluster.remove_node(workers[0], allow_graceful=False)
        run.join()
        if "error" in outcome:
            raise outcome["error"]
        summary = outcome["summary"]
        seen.update(alive_after=len([n for n in ray.nodes() if n["Alive"]]), ok=summary.ok, errors=summary.errors,
                    inputs=summary.inputs)
        print(json.dumps(seen), flush=True)
        return 0
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
