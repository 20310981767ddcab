"""One bound on a run's requests to a PACS, across every loader on every node: a Ray actor holding a semaphore.

A per-process semaphore would bound each loader, not the run: the number of loaders follows the
cluster's CPUs. Every DICOMweb read of a run instead takes a slot from one actor first and gives
it back when its request ends (``inputs.read_input``); a slot costs one small actor call, nothing
beside the megabytes of a radiograph.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ray.actor import ActorHandle


class _Gate:
    """The actor: ``slots`` requests at once; an async actor, so callers wait without holding a thread."""

    def __init__(self, slots: int):
        self.free = asyncio.Semaphore(slots)

    async def acquire(self) -> None:
        await self.free.acquire()

    async def release(self) -> None:
        self.free.release()


@dataclass(frozen=True)
class GateSlots:
    """``inputs.Slots`` backed by a ``_Gate`` actor: what the pipeline hands every loader (pickled with the handle)."""

    gate: ActorHandle

    def acquire(self) -> None:
        import ray

        ray.get(self.gate.acquire.remote())

    def release(self) -> None:
        self.gate.release.remote()


def request_gate(ray: ModuleType, slots: int) -> GateSlots:
    """A new gate of ``slots`` for one run (it ends with the driver's job); no CPU reserved for it."""
    return GateSlots(ray.remote(num_cpus=0)(_Gate).remote(slots))
