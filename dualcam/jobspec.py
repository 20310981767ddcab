"""Job specs: a command's options in one YAML file, for Ray jobs (``jobs/<job>.py spec.yaml``).

A spec names its job and gives the options of the matching command, each long option spelled
with ``_`` for ``-`` (``--batch-size 16`` is ``batch_size: 16``, a flag is ``true``; labels and
``init_from`` may be YAML lists)::

    job: score                           # jobs/score.py: the options of `dualcam score`
    expert1: s3://models/COVID-19/20261127T081500Z-ab12cd34
    expert2: s3://models/pneumonia/20261126T221000Z-9f8e7d6c
    input: s3://archive/cxr/
    output: s3://results/cxr/

This module only reads and checks specs: the keys a spec may have, and the defaults of the keys
it leaves out, are those of the command's parser (``add_arguments`` of its module in
``dualcam.commands``), and a job calls that module's ``run``, so a job and the command with the same
options do the same work, print the same lines and end with the same exit status: 0 done, 1
failed, 2 unusable spec, arguments, experts, input or output; for drift, ``DRIFT_EXIT`` (3) when
too many images drifted. A job is named as its command is. The old job names and keys
(``commands.renamed``) still work for one release, with a notice.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import yaml

from dualcam.commands import drift, renamed, score, train
from dualcam.commands.common import exit_status, options_of
from dualcam.io import storage

JOBS: dict[str, ModuleType] = {"score": score, "train": train, "drift": drift}
"""Job name, the command's -> the command it runs (``dualcam.commands``); ``jobs/<name>.py`` is its Ray job
entrypoint."""


@dataclass(frozen=True)
class JobSpec:
    uri: str
    job: str
    options: dict[str, Any]

    @property
    def entrypoint(self) -> str:
        """The script that runs this spec, relative to the repository root."""
        return f"jobs/{self.job}.py"

    def arguments(self) -> dict[str, Any]:
        """Every keyword the command's ``run`` takes: the spec's options over the command line's defaults."""
        defaults = {name: action.default for name, action in options_of(JOBS[self.job]).items()}
        return {**defaults, **self.options}


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
    if job in renamed.JOBS:
        renamed.notice(f"job: {job}", f"job: {renamed.JOBS[job]}", uri)
        job = renamed.JOBS[job]
    if job not in JOBS:
        raise ValueError(f"{uri}: 'job' must be one of {', '.join(JOBS)}, got {job!r}")
    spec = renamed.rewrite_keys(spec, JOBS[job].RENAMED, uri)
    options = options_of(JOBS[job])
    for key in spec:
        if key not in options:
            close = difflib.get_close_matches(str(key).replace("-", "_"), options, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{uri}: unknown option {key!r} for {job}{hint}")
    missing = [name for name, action in options.items() if action.required and name not in spec]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise ValueError(f"{uri}: missing option{plural} {', '.join(map(repr, missing))} for {job}")
    for key, value in spec.items():
        problem = _type_problem(options[key], key, value)
        if problem:
            raise ValueError(f"{uri}: {key} must be {problem}, got {value!r}")
    return JobSpec(uri, job, spec)


LIST_OPTIONS = frozenset({"class1_negatives", "class2_negatives", "views", "init_from"})
"""Options a spec may give as a YAML list (the command line: comma-separated, or repeated)."""


def _type_problem(action: argparse.Action, key: str, value: Any) -> str | None:
    """What ``value`` should be for the option ``action`` takes (its type, choices, a flag), or None
    when it is that: the command line's own checks, which a spec's YAML values never pass through.
    Ranges (alpha >= 0...) are checked by the command itself, for both."""
    if value is None and not action.required and action.default is None:
        return None  # the default: "not given"
    if action.nargs == 0:  # a flag: --retry-errors, --no-progress
        return None if isinstance(value, bool) else "true or false"
    if action.choices is not None:
        choices = ", ".join(map(str, action.choices))
        return None if value in action.choices and not isinstance(value, bool) else f"one of {choices}"
    if action.type is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if action.type is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if key in LIST_OPTIONS and isinstance(value, list):
        return None if all(isinstance(v, str) for v in value) else "a string or a list of strings"
    return None if isinstance(value, str) else "a string"


def run_job(job: str, argv: Sequence[str]) -> int:
    """``python jobs/<job>.py SPEC``: run the spec at SPEC (a path or s3:// URI); the exit status."""
    if job in renamed.JOBS:
        renamed.notice(f"jobs/{job}.py", f"jobs/{renamed.JOBS[job]}.py", "dualcam")
        job = renamed.JOBS[job]
    if len(argv) != 1:
        print(f"usage: python jobs/{job}.py SPEC.yaml", file=sys.stderr)
        return 2
    arguments: dict[str, Any] = {}  # the spec's, once read: a failure's log goes beside its output

    def run() -> int:
        spec = load_spec(argv[0])
        if spec.job != job:
            raise ValueError(f"{spec.uri} is a {spec.job} spec; run it with {spec.entrypoint}")
        arguments.update(spec.arguments())
        return JOBS[job].run(**arguments)

    return exit_status(run, lambda: arguments.get("output"))
