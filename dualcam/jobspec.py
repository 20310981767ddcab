"""Job specs: a command's options in one YAML file, for Ray jobs (``jobs/<job>.py spec.yaml``).

A spec names its job and gives the options of the matching command, each long option spelled
with ``_`` for ``-`` (``--batch-size 16`` is ``batch_size: 16``, a flag is ``true``; labels and
``init_from`` may be YAML lists)::

    job: score_archive                   # jobs/score_archive.py: the options of `dualcam score`
    c1: s3://models/COVID-19/20261127T081500Z-ab12cd34
    c2: s3://models/pneumonia/20261126T221000Z-9f8e7d6c
    input: s3://archive/cxr/
    output: s3://results/cxr/

``run_score``, ``run_drift`` and ``run_train`` below are what ``dualcam score``, ``dualcam drift``
and ``dualcam train`` run, so a job and the command with the same options do the same work, print
the same lines and end with the same exit status: 0 done, 1 failed, 2 unusable spec, arguments,
experts, input or output; for drift, ``DRIFT_EXIT`` (3) when too many images drifted.
"""

from __future__ import annotations

import difflib
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from dualcam import drift, storage
from dualcam.experts import CheckpointError
from dualcam.imaging import DecodeError
from dualcam.pipeline import MAX_ERROR_FRACTION, ScoreSummary, drift_archive, score_archive
from dualcam.training import Recipe, results_table, train_experts

USAGE_ERRORS = (CheckpointError, DecodeError, ValueError, OSError)
"""What the library raises for unusable arguments, experts, input or output: exit status 2."""
DRIFT_EXIT = 3
"""Exit status of ``dualcam drift`` when more than ``max_drift_share`` of the images drifted."""


def run_score(
    *, c1: str, c2: str, input: str, output: str, alpha: float = 5.0, batch_size: int = 16,
    actors: int | None = None, gpus_per_actor: float | None = None, cpus_per_actor: float | None = None,
    limit: int | None = None, max_error_fraction: float = MAX_ERROR_FRACTION, retry_errors: bool = False,
    no_progress: bool = False,
) -> int:
    """``dualcam score``: score the archive, print the summary (it ends with where the results are).

    1 when more than ``max_error_fraction`` of the inputs failed or none could be scored.
    """
    summary = score_archive(
        c1, c2, input, output, alpha=alpha, batch_size=batch_size, actors=actors, gpus_per_actor=gpus_per_actor,
        cpus_per_actor=cpus_per_actor, limit=limit, retry_errors=retry_errors, progress=not no_progress,
    )
    print(summary.line(), flush=True)
    return _failed(summary, max_error_fraction)


def run_drift(
    *, old: str, new: str, input: str, output: str, alpha: float = 5.0, threshold: float = drift.DRIFT_THRESHOLD,
    max_drift_share: float = drift.MAX_DRIFT_SHARE, top_k: int = drift.TOP_K, batch_size: int = 16,
    actors: int | None = None, gpus_per_actor: float | None = None, cpus_per_actor: float | None = None,
    limit: int | None = None, max_error_fraction: float = MAX_ERROR_FRACTION, retry_errors: bool = False,
    no_progress: bool = False,
) -> int:
    """``dualcam drift``: compare the two versions on the archive, print the pass and the drift.

    1 as for ``run_score`` (a run with too many errors says nothing reliable about drift), else
    ``DRIFT_EXIT`` when more than ``max_drift_share`` of the images drifted.
    """
    summary = drift_archive(
        old, new, input, output, alpha=alpha, threshold=threshold, max_drift_share=max_drift_share, top_k=top_k,
        batch_size=batch_size, actors=actors, gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor,
        limit=limit, retry_errors=retry_errors, progress=not no_progress,
    )
    print(summary.run.line(), flush=True)
    print(summary.line(), flush=True)
    failed = _failed(summary.run, max_error_fraction)
    if failed:
        return failed
    if summary.alert:
        print(f"dualcam: drift: {summary.drifted_share:.1%} of the images drifted, more than the allowed "
              f"{max_drift_share:.1%}", file=sys.stderr)
        return DRIFT_EXIT
    return 0


def _failed(summary: ScoreSummary, max_error_fraction: float) -> int:
    """1, with the reason on stderr, when more than ``max_error_fraction`` of the inputs failed or none could be scored."""
    failure = summary.failure(max_error_fraction)
    if failure:
        print(f"dualcam: run failed: {failure}", file=sys.stderr)
        return 1
    return 0


def run_train(
    *, c1: str, output: str, data: str | None = None, c2: str | None = None, c1_data: str | None = None,
    c2_data: str | None = None, c1_negatives: str | Sequence[str] | None = None,
    c2_negatives: str | Sequence[str] | None = None, views: str | Sequence[str] = "PA", arch: str = Recipe.arch,
    weights: str = Recipe.weights, init_from: str | Sequence[str] = (), epochs: int = Recipe.epochs,
    lr: float = Recipe.lr, momentum: float = Recipe.momentum, batch_size: int = Recipe.batch_size,
    image_size: int = Recipe.image_size, output_stride: int = Recipe.output_stride, color_mode: str = Recipe.color_mode,
    augment: str = Recipe.augment,
    seed: int = Recipe.seed, workers_per_expert: int = 1, gpus_per_worker: float | None = None,
    cpus_per_worker: float | None = None, max_failures: int = 2, storage_path: str | None = None,
    export_epochs: bool = False,
) -> int:
    """``dualcam train``: train expert ``c1`` (and ``c2``), print the table of where each checkpoint went.

    Raises when training fails (a non-zero exit); labels are comma-separated strings or lists.
    """
    recipe = Recipe(arch=arch, weights=weights, epochs=epochs, lr=lr, momentum=momentum, batch_size=batch_size,
                    image_size=image_size, output_stride=output_stride, color_mode=color_mode, augment=augment, seed=seed)
    classes = [c1] + ([c2] if c2 else [])
    experts = train_experts(
        output, classes, data=data, negatives=[labels(c1_negatives), labels(c2_negatives)][: len(classes)],
        per_expert_data=[c1_data, c2_data][: len(classes)], recipe=recipe,
        init_from=[init_from] if isinstance(init_from, str) else list(init_from),
        workers_per_expert=workers_per_expert, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
        max_failures=max_failures, views=labels(views) or ["PA"], storage_path=storage_path,
        export_epochs=export_epochs,
    )
    print(results_table(experts), flush=True)
    return 0


def labels(value: str | Sequence[str] | None) -> list[str] | None:
    """Labels from a comma-separated string (the command line) or a list (a spec)."""
    parts = value.split(",") if isinstance(value, str) else list(value or [])
    return [part.strip() for part in parts if part.strip()] or None


JOBS: dict[str, Callable[..., int]] = {"score_archive": run_score, "train_experts": run_train, "detect_drift": run_drift}
"""Job name -> what runs it; ``jobs/<name>.py`` is its Ray job entrypoint."""


@dataclass(frozen=True)
class JobSpec:
    uri: str
    job: str
    options: dict[str, Any]

    @property
    def entrypoint(self) -> str:
        """The script that runs this spec, relative to the repository root."""
        return f"jobs/{self.job}.py"


def load_spec(uri: str) -> JobSpec:
    """Read a spec (a path or s3:// URI) and check it before any work: a known ``job``, every
    option it requires, none it does not know. Raises ValueError naming the file and the key."""
    try:
        spec = yaml.safe_load(storage.read_bytes(uri))
    except yaml.YAMLError as err:
        raise ValueError(f"{uri}: not valid YAML: {err}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{uri}: a job spec is a mapping of options, got {type(spec).__name__}")
    job = spec.pop("job", None)
    if job not in JOBS:
        raise ValueError(f"{uri}: 'job' must be one of {', '.join(JOBS)}, got {job!r}")
    params = inspect.signature(JOBS[job]).parameters
    for key in spec:
        if key not in params:
            close = difflib.get_close_matches(str(key).replace("-", "_"), params, n=1)
            raise ValueError(f"{uri}: unknown option {key!r} for {job}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    missing = [name for name, p in params.items() if p.default is inspect.Parameter.empty and name not in spec]
    if missing:
        raise ValueError(f"{uri}: missing option{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} for {job}")
    return JobSpec(uri, job, spec)


def exit_status(run: Callable[[], int]) -> int:
    """``run()``'s exit status; 2, with the reason on stderr, when it raised for unusable input.

    A failure inside Ray's workers (an S3 write that keeps failing, say) is re-raised by Ray as a
    subclass of the original error, but it is a failed run, not unusable input: exit 1.
    """
    try:
        return run()
    except USAGE_ERRORS as err:
        print(f"dualcam: error: {err}", file=sys.stderr)
        return 1 if _raised_by_ray(err) else 2


def _raised_by_ray(err: BaseException) -> bool:
    exceptions = sys.modules.get("ray.exceptions")  # never imports Ray: loaded only if Ray ran
    return exceptions is not None and isinstance(err, exceptions.RayError)


def run_job(job: str, argv: Sequence[str]) -> int:
    """``python jobs/<job>.py SPEC``: run the spec at SPEC (a path or s3:// URI); the exit status."""
    if len(argv) != 1:
        print(f"usage: python jobs/{job}.py SPEC.yaml", file=sys.stderr)
        return 2

    def run() -> int:
        spec = load_spec(argv[0])
        if spec.job != job:
            raise ValueError(f"{spec.uri} is a {spec.job} spec; run it with {spec.entrypoint}")
        return JOBS[job](**spec.options)

    return exit_status(run)
