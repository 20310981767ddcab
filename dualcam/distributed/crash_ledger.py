"""Which inputs were being read or decoded when a worker died: the poison-input rule, run-wide.

A file that crashes its decoder natively (a segfault in a codec) or gets its worker killed for memory
takes the whole process down, so no ``try`` can turn it into an error row, and Ray Data restarts the
actor and retries the batch for ever. Every loader therefore tells one actor what it starts and what it
finishes (``scorers.load_images``): an input still started when its batch is started again was in
flight when its worker died. Such suspects are then loaded one at a time, alone in their process, so
that a death is theirs; one in flight at ``scorers.POISON_DEATHS`` deaths becomes a permanent error row
instead of killing every rerun. One small actor call per batch; the counts live as long as the run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ray.actor import ActorHandle


class Ledger:
    """Inputs started and not finished, and how many times a worker died with each in flight.

    The actor's state, plain Python (``scorers.Ledger`` is its protocol; tests use it as it is)."""

    def __init__(self) -> None:
        self.started: set[str] = set()
        self.deaths: Counter[str] = Counter()

    def start(self, uris: list[str], alone: bool = False) -> list[int]:
        """Each input's deaths so far, counting the attempt that started it and never finished; marks as
        started those with none (the batch loads them together) or, with ``alone``, all of them."""
        for uri in uris:
            if uri in self.started:  # started by a worker that died before it finished
                self.started.discard(uri)
                self.deaths[uri] += 1
        counts = [self.deaths[uri] for uri in uris]
        self.started.update(uri for uri, n in zip(uris, counts) if alone or not n)
        return counts

    def finish(self, uris: list[str]) -> None:
        self.started.difference_update(uris)


@dataclass(frozen=True)
class LedgerHandle:
    """``scorers.Ledger`` backed by a ``Ledger`` actor: what the pipeline hands every loader (pickled, handle and
    all)."""

    actor: ActorHandle

    def start(self, uris: list[str], alone: bool = False) -> list[int]:
        import ray

        counts: list[int] = ray.get(self.actor.start.remote(uris, alone))
        return counts

    def finish(self, uris: list[str]) -> None:
        self.actor.finish.remote(uris)  # not waited for: a finish lost with its worker only makes a suspect


def crash_ledger(ray: ModuleType) -> LedgerHandle:
    """A new ledger for one run, on the driver's node (a node lost takes the loaders, not the counts), on no CPU;
    restarted empty should that node go anyway."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, scheduling_strategy=here)(Ledger).remote()
    return LedgerHandle(actor)
