"""An error told to a person: one line without colour codes, and its full traceback in a log file.

An error raised inside Ray reaches the driver rendered by Ray: the remote traceback, with ANSI
colour codes, often wrapped in Ray Data's own error (``UserCodeException: UDF failed ...``) whose
text is all that is left of the original. ``one_line`` finds the error the failing code raised and
gives it as ``Type: message`` on one line (``OSError: [Errno 28] No space left on device while
writing /results/x.parquet``); ``write_log`` keeps everything in a file for whoever looks next, beside
the run's output (``<output>/_logs/``, a local folder or an S3 prefix), where it outlives the machine
or pod that ran the job, or else in this user's private folder in the temporary folder. No Ray here:
Ray's errors are recognized by their module.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
import tempfile
import traceback
from datetime import datetime, timezone
from pathlib import Path

from dualcam.io import storage

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
"""Terminal escape sequences (colours), which Ray puts into the errors it renders."""
_CHAINED = re.compile(r"^(?:The above exception was the direct cause of the following exception|"
                      r"During handling of the above exception, another exception occurred):$", re.MULTILINE)


class RunFailed(RuntimeError):
    """Storage failed under a run that had begun writing (its output's bucket deleted, the store gone):
    the run failed, not its arguments; a rerun, once storage is back, scores what is not in the output."""


def raised_by_ray(err: BaseException) -> bool:
    """Whether ``err``, or an error it was raised from, is one of Ray's (a task, actor or node that failed)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_ray(type(current)):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_ray(kind: type) -> bool:
    return any(cls.__module__.split(".")[0] == "ray" for cls in kind.__mro__)


def one_line(err: BaseException) -> str:
    """``err`` on one line, without colour codes. For an error raised inside Ray, the error the
    failing code raised, as ``Type: message``, rather than Ray's wrapping of it."""
    text = ANSI.sub("", str(err)).strip()
    if _is_ray(type(err)):
        cause = getattr(err, "cause", None)  # a task's own error, when Ray kept it (RayTaskError)
        if isinstance(cause, BaseException) and not _is_ray(type(cause)):
            text = f"{type(cause).__name__}: {ANSI.sub('', str(cause))}"
        else:
            text = _last_raised_in_code(text) or text
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(err).__name__


def _last_raised_in_code(rendered: str) -> str | None:
    """From Ray's rendering of a remote error (the tracebacks of a chain, oldest first): the
    ``Type: message`` lines of the last error that is not Ray's own wrapper, or None."""
    found = None
    for section in _CHAINED.split(rendered):
        lines = [line for line in section.strip().splitlines() if line.strip()]
        # an error's own lines come after its traceback's indented "File ..." lines (or Ray's "ray::" header)
        indented = [i for i, line in enumerate(lines) if line[0].isspace()]
        begin = indented[-1] + 1 if indented else sum(1 for line in lines[:1] if line.startswith("ray::"))
        if begin < len(lines) and not lines[begin].startswith("ray."):
            found = "\n".join(lines[begin:])
    return found


LOG_FOLDER = "_logs"
"""The folder of an output that holds the logs of its runs' failures (``_``: not results, for readers)."""


def log_dir(output: str | None = None) -> str:
    """Where a log goes: ``DUALCAM_LOG_DIR`` when set, else ``<output>/_logs`` (a path or an s3:// prefix),
    else this user's own folder in the system's temporary folder (``temporary_log_dir``)."""
    if os.environ.get("DUALCAM_LOG_DIR"):
        return os.environ["DUALCAM_LOG_DIR"]
    if output:
        return storage.join(output, LOG_FOLDER)
    return str(temporary_log_dir())


def temporary_log_dir() -> Path:
    """``<tmp>/dualcam-logs-<uid>``: a log holds the command line and the paths of a run, so in a folder every
    user shares it goes into a folder of this user's that no one else can read, write or plant files in."""
    return Path(tempfile.gettempdir()) / f"dualcam-logs-{os.getuid()}"


def write_log(err: BaseException, output: str | None = None) -> str:
    """Write the command line and ``err``'s full traceback (colour codes removed) to a new log file in
    ``log_dir(output)``; its path or URI. When that cannot be written (the failure may be the very storage
    the output is on), the log goes to the temporary folder instead, created 0600 in a folder of 0700."""
    now = datetime.now(timezone.utc)
    story = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    text = f"{now:%Y-%m-%d %H:%M:%S} UTC: {' '.join(sys.argv)}\n\n{ANSI.sub('', story)}".encode()
    name = f"dualcam-{now:%Y%m%dT%H%M%S}-{os.getpid()}"
    failures = []
    for folder in dict.fromkeys((log_dir(output), log_dir())):
        try:
            if folder == str(temporary_log_dir()):
                return str(_write_private(Path(folder), name, text))
            uri = storage.join(folder, f"{name}.log")
            storage.write_bytes(uri, text)
            return uri
        except OSError as failed:
            failures.append(f"{folder} ({failed})")
    raise OSError(f"could not write the log of {type(err).__name__} to {' nor '.join(failures)}")


def _write_private(folder: Path, name: str, data: bytes) -> Path:
    """A new file ``<name>.log`` (``<name>-<n>.log`` if taken), 0600, in ``folder``, made 0700 if missing.

    PermissionError when ``folder`` is not a folder of this user's that only it can write: whoever made it
    could read the logs, or replace them.
    """
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    found = os.lstat(folder)
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o022:
        kind = "a folder" if stat.S_ISDIR(found.st_mode) else "not a folder (a link?)"
        raise PermissionError(f"{folder}: {kind}, owned by uid {found.st_uid}, mode {stat.S_IMODE(found.st_mode):o}; "
                              f"a log goes only into a folder that this user (uid {os.getuid()}) owns and no one else "
                              "can write")
    for n in range(100):
        path = folder / f"{name}{f'-{n}' if n else ''}.log"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path
    raise FileExistsError(f"{folder}: {name}.log and 99 more names taken")
