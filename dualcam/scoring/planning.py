"""What a run over an archive would do, decided in the driver before any work: no Ray here.

Which inputs are still to score (the resume set difference against the output folder), where
the scoring actors go, how the inputs are cut into blocks for Ray Data, and, from measured
rates, how long it would take on a cluster (what ``--dry-run`` prints). Each step on the inputs
is a few Arrow operations over whole columns, so the driver's cost per input stays flat from
thousands to millions of inputs (``make scale``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from dualcam.io import storage
from dualcam.io.results import VERSION, read_results_in_parts, retried

MAX_ROWS_PER_BLOCK = 1024
PART_ROWS = 65_536
"""Fewest output rows set against the inputs at once when resuming (``progress``)."""
BLOCKS_PER_SLOT = 4


@dataclass
class Progress:
    """Where the inputs stand against an output folder."""

    pending: pa.Array
    """Row numbers (ascending) of the inputs a run would score: 8 bytes each, not a copy of their rows."""
    done: int
    """Inputs already in the output, which a run skips."""
    retried: int
    """Inputs in the output only as error rows that a run scores again (they are pending): transient ones,
    or all with ``retry_errors`` (``results.retried``)."""
    changed: pa.Array
    """URIs of inputs in the output whose rows scored another version than the one listed now (pending:
    a run drops their rows and scores them again)."""


def progress(inputs: pa.Table, output: str, retry_errors: bool = False) -> Progress:
    """Set the inputs against the rows of ``output``; reads nothing but its ``uri``, ``status``,
    ``error_kind`` and ``input_version`` columns and changes nothing.

    An input is done when the output holds a row of it that is not to be retried and that scored the
    version listed now (or either version is unknown). A hashed set difference in Arrow (``is_in``),
    taken against the output a part at a time: a hash set holds its URIs about 2.5 times over, so
    parts of at most a quarter as many rows as there are inputs keep the driver's memory per input
    bounded however much of the archive is done, for at most five passes over the inputs. Inputs
    with versions (listed) cost one more copy of their URIs, joined to their versions, and two more
    passes per part, for the comparison; without (a manifest), nothing more.
    """
    release_unused()  # what reading the inputs freed
    uris = inputs.column("uri")
    listed = inputs.column(VERSION) if VERSION in inputs.column_names else pa.nulls(len(uris), pa.string())
    # versions compared only where the inputs have some (a listing's; a manifest's are unknown)
    keys = pc.binary_join_element_wise(uris, listed, "\n") if listed.null_count < len(listed) else None
    skip = retry = changed = pc.is_in(uris, value_set=pa.array([], pa.string()))  # all false
    columns = ["uri", "status", "error_kind"] + ([VERSION] if keys is not None else [])
    for part in read_results_in_parts(output, columns, rows=max(PART_ROWS, len(uris) // 4)):
        written = part.column("uri")
        failed = retried(part.column("status"), part.column("error_kind"), retry_errors)
        retry = pc.or_(retry, pc.is_in(uris, value_set=written.filter(failed)))
        if keys is not None:
            versioned = pc.is_valid(part.column(VERSION))
            same = pc.is_in(keys, value_set=pc.binary_join_element_wise(written, part.column(VERSION), "\n")
                            .filter(versioned))
            changed = pc.or_(changed, pc.and_(pc.is_in(uris, value_set=written.filter(versioned)),
                                              pc.and_not(pc.is_valid(keys), same)))
        skip = pc.or_(skip, pc.is_in(uris, value_set=written.filter(pc.invert(failed))))
        del part, written
    skip = pc.and_not(skip, changed)
    pending = pc.indices_nonzero(pc.invert(skip))
    release_unused()
    return Progress(pending, len(uris) - len(pending), pc.sum(retry).as_py() or 0, uris.filter(changed))


@dataclass(frozen=True)
class Placement:
    """How many scoring actors run, and what each holds."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float


def plan_placement(
    resources: dict[str, float], actors: int | None = None, gpus_per_actor: float | None = None,
    cpus_per_actor: float | None = None,
) -> Placement:
    """Defaults: one actor per GPU when the cluster has GPUs; else one actor per CPU, each scoring on one
    torch thread. Many one-thread actors beat fewer many-thread ones on CPUs: a forward pass split over
    threads waits at every layer for its slowest thread, and any other process on the node (the driver,
    Ray's own) stalls it (``make bench`` on 2 cores, real-size files: two 1-CPU actors 17.2 images/s, one
    2-CPU actor 14.2). Each actor holds its own copy of both experts (docs/guide/scoring.md)."""
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 1.0)
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus else 0.0
    if gpus_per_actor > 0 and gpus < gpus_per_actor:
        raise ValueError(f"{gpus_per_actor} GPUs per actor requested, but the cluster has {gpus:g} GPUs")
    if cpus_per_actor is None:
        cpus_per_actor = 1.0
    if actors is None:
        actors = int(gpus // gpus_per_actor) if gpus_per_actor else int(max(1, cpus // cpus_per_actor))
    if actors < 1:
        raise ValueError(f"actors must be at least 1, got {actors}")
    return Placement(actors, cpus_per_actor, gpus_per_actor)


def release_unused() -> None:
    """Hand back to the system what Arrow has freed. Its allocator keeps freed buffers for reuse, and
    after reading millions of URIs the driver would otherwise hold as much again as it uses (measured
    by ``make scale``)."""
    pa.default_memory_pool().release_unused()


def block_rows(rows: int, slots: int, batch_size: int) -> int:
    """Rows per block of input URIs handed to Ray Data: each block is one loading task, one object the
    driver puts in Ray's store, and one metadata task Ray runs before the first image is read.

    At most ``MAX_ROWS_PER_BLOCK`` (1,024): loading 1,024 X-rays takes a core 7 s (sample X-rays)
    to 80 s (16-bit PNGs; ``make bench`` (e)), so Ray's few milliseconds per task stay under a
    thousandth, and 10 million inputs are about 10,000 blocks (not 156,000 blocks of 64). At least
    ``BLOCKS_PER_SLOT`` blocks for each slot (a CPU of the cluster) when there are fewer inputs, so
    that every slot gets work and the last blocks finish close together. Whole batches, so that no
    batch straddles two blocks; never less than one batch.
    """
    per_slot = math.ceil(max(0, rows) / (BLOCKS_PER_SLOT * max(1, slots)))
    return max(batch_size, min(MAX_ROWS_PER_BLOCK, per_slot) // batch_size * batch_size)


def blocks(inputs: pa.Table, rows: pa.Array, rows_per_block: int) -> Iterator[pa.Table]:
    """The ``inputs`` at row numbers ``rows``, ``rows_per_block`` at a time: each block is copied out
    only when it is asked for (and handed to Ray), so the driver never holds the pending rows twice."""
    for start in range(0, len(rows), rows_per_block):
        block = rows.slice(start, rows_per_block)
        first, last = block[0].as_py(), block[-1].as_py()
        # ascending rows lie within [first, last]: take from that slice (a take over the whole chunked
        # table would combine all its chunks for every block)
        yield inputs.slice(first, last - first + 1).take(pc.subtract(block, pa.scalar(first, block.type)))


# --- How long a run would take ---------------------------------------------------------------


@dataclass(frozen=True)
class Rates:
    """Images per second one unit does: reading, decoding and preprocessing on a CPU core; scoring (both
    experts, their CAMs, the kernel) on a GPU, or on a CPU core where there are no GPUs.

    ``make bench`` measures them (``--json`` writes them as ``rates``): loading from (e), on real-size
    files, since its cost follows the file (``imaging.model_input``), scoring from (b).
    """

    decode_per_cpu: float
    model_per_gpu: float | None = None
    model_per_cpu: float | None = None
    measured: str = "given"

    def __post_init__(self) -> None:
        for name in ("decode_per_cpu", "model_per_gpu", "model_per_cpu"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"rates: {name} must be a positive number of images/s, got {value}")

    @classmethod
    def read(cls, uri: str) -> Rates:
        """The ``rates`` of a ``make bench`` JSON report (``python -m dualcam.bench.speed --json``)."""
        try:
            rates = json.loads(storage.read_bytes(uri))["rates"]
            return cls(float(rates["decode_per_cpu"]), rates.get("model_per_gpu"), rates.get("model_per_cpu"),
                       f"{rates.get('measured', 'make bench')} ({uri})")
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{uri}: not a make bench report with rates ({type(err).__name__}: {err})") from None

    @classmethod
    def parse(cls, text: str) -> Rates:
        """``decode=45,gpu=1800`` (images/s: decoding per CPU core, scoring per GPU and/or ``cpu=`` per CPU
        core), or the path or URI of a ``make bench`` JSON report."""
        if "=" not in text:
            return cls.read(text)
        names = {"decode": "decode_per_cpu", "gpu": "model_per_gpu", "cpu": "model_per_cpu"}
        try:
            given = {names[key.strip()]: float(value) for key, value in (part.split("=") for part in text.split(","))}
        except (KeyError, ValueError, TypeError):
            raise ValueError(f"rates {text!r}: expected decode=N[,gpu=N][,cpu=N] (images/s) or a make bench JSON "
                             "report") from None
        if "decode_per_cpu" not in given:
            raise ValueError(f"rates {text!r}: decode=N (images/s per CPU core) is needed")
        return cls(**given, measured="given")

    def describe(self) -> str:
        model = [f"{rate:,.1f} per {unit}" for rate, unit in ((self.model_per_gpu, "GPU"), (self.model_per_cpu, "CPU"))
                 if rate is not None]
        return (f"decoding {self.decode_per_cpu:,.1f} images/s per CPU, scoring {' or '.join(model) or 'unknown'} "
                f"({self.measured})")


@dataclass(frozen=True)
class Cluster:
    """The nodes a run would have: (CPUs, GPUs) of each."""

    nodes: tuple[tuple[float, float], ...]
    name: str

    @classmethod
    def alike(cls, nodes: int, cpus: float, gpus: float = 0.0) -> Cluster:
        if nodes < 1 or cpus < 1 or gpus < 0:
            raise ValueError(f"a cluster needs at least one node of at least one CPU, got {nodes} of {cpus:g} CPU, "
                             f"{gpus:g} GPU")
        name = f"{nodes} node{'s' if nodes > 1 else ''} of {cpus:g} CPU, {gpus:g} GPU"
        return cls(((float(cpus), float(gpus)),) * nodes, name)

    @classmethod
    def parse(cls, text: str) -> Cluster:
        """``NODES,CPUS[,GPUS]``: that many nodes alike, of so many CPUs and GPUs each (``8,16,1``)."""
        try:
            numbers = [float(part) for part in text.split(",")]
            if len(numbers) not in (2, 3) or numbers[0] != int(numbers[0]):
                raise ValueError
        except ValueError:
            raise ValueError(f"cluster {text!r}: expected NODES,CPUS[,GPUS] per node, say 8,16,1") from None
        return cls.alike(int(numbers[0]), *numbers[1:])

    @property
    def cpus(self) -> float:
        return sum(cpus for cpus, _ in self.nodes)

    @property
    def gpus(self) -> float:
        return sum(gpus for _, gpus in self.nodes)

    def describe(self) -> str:
        return f"{self.name}: {self.cpus:g} CPUs, {self.gpus:g} GPUs"


def images_per_second(cluster: Cluster, placement: Placement, rates: Rates) -> tuple[float, str]:
    """(images/s, what limits it) of a run placed so on ``cluster``, from ``rates``.

    With GPUs, the actors score while loading tasks decode on the CPUs the actors leave: the slower
    of the two sets the pace. Without, each actor decodes and scores in turn on its own CPUs.
    Decoding and scoring are taken to scale with CPUs and GPUs, and Ray's own costs to be nil:
    an upper bound to check against the first hour of a run.
    """
    if placement.gpus_per_actor:
        if rates.model_per_gpu is None:
            raise ValueError("no scoring rate per GPU: give one (make bench on a GPU machine measures it)")
        gpus = placement.actors * placement.gpus_per_actor
        loaders = max(0.0, cluster.cpus - placement.actors * placement.cpus_per_actor)
        scoring, decoding = gpus * rates.model_per_gpu, loaders * rates.decode_per_cpu
        if scoring <= decoding:
            return scoring, f"scoring on {gpus:g} GPUs"
        return decoding, f"decoding on the {loaders:g} CPUs the actors leave"
    if rates.model_per_cpu is None:
        raise ValueError("no scoring rate per CPU: give one (make bench on a CPU machine measures it)")
    per_actor = placement.cpus_per_actor / (1 / rates.decode_per_cpu + 1 / rates.model_per_cpu)
    return placement.actors * per_actor, "the actors' CPUs, decoding and scoring in turn"


@dataclass
class RunPlan:
    """What a run would do (``--dry-run``): counts from the inputs and the output, and for each cluster
    the placement, the blocks and, with rates, the images/s and hours."""

    kind: str
    input: str
    output: str
    inputs: int
    read_seconds: float
    skipped: dict[str, int]
    skipped_because: str
    done: int
    retried: int
    retry_errors: bool
    changed: int
    pending: int
    limit: int | None
    batch_size: int
    clusters: list[tuple[Cluster, Placement]]
    rates: Rates | None

    @property
    def to_score(self) -> int:
        return self.pending if self.limit is None else min(self.limit, self.pending)

    def lines(self) -> list[str]:
        skipped = ": " + ", ".join(f"{kind} {n:,}" for kind, n in self.skipped.items()) if self.skipped else ""
        lines = [
            f"dualcam: dry run ({self.kind} {self.input} into {self.output}): nothing started, nothing written",
            f"  inputs        {self.inputs:>12,}  found in {self.read_seconds:.1f} s",
            f"  skipped       {sum(self.skipped.values()):>12,}  ({self.skipped_because}){skipped}",
            f"  already done  {self.done:>12,}  in the output",
        ]
        if self.retried or self.retry_errors:
            which = "error rows (--retry-errors)" if self.retry_errors else "transient error rows"
            lines.append(f"  to retry      {self.retried:>12,}  inputs with {which}")
        if self.changed:
            lines.append(f"  changed       {self.changed:>12,}  inputs since they were scored: scored again")
        lines.append(f"  to score      {self.to_score:>12,}" + (
            f"  of {self.pending:,} not yet scored (--limit {self.limit:,})" if self.limit is not None else ""))
        if self.rates:
            lines.append(f"  rates         {self.rates.describe()}")
        for cluster, placement in self.clusters:
            rows = block_rows(self.to_score, int(cluster.cpus), self.batch_size)
            lines.append(f"  {cluster.describe()}: {placement.actors} actor(s) of {placement.cpus_per_actor:g} CPU, "
                         f"{placement.gpus_per_actor:g} GPU; {math.ceil(self.to_score / rows):,} block(s) of up to "
                         f"{rows:,} inputs")
            lines.append("    " + self._hours(cluster, placement))
        return lines

    def _hours(self, cluster: Cluster, placement: Placement) -> str:
        if self.rates is None:
            return "hours: give --rates (make bench --json writes them, or decode=N,gpu=N,cpu=N in images/s)"
        try:
            rate, bound = images_per_second(cluster, placement, self.rates)
        except ValueError as err:
            return f"hours: {err}"
        return f"{rate:,.1f} images/s ({bound}): {duration(self.to_score / rate)} to score {self.to_score:,}"


def duration(seconds: float) -> str:
    """Hours, or minutes or seconds when shorter: ``3.2 h``, ``25 min``, ``40 s``."""
    if seconds >= 3600:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
