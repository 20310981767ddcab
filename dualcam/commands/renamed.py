"""Old spellings of options and job names, kept for one release after the rename to one dialect.

A command module lists its own as ``RENAMED`` (old option -> new option). The command line
(``cli.Parser``) rewrites an old spelling to the new one before parsing, and a job spec
(``jobspec.load_spec``) its key, each with a one-line notice on stderr; ``--help`` shows only
the new spellings. CHANGELOG.md lists every pair (a test checks it).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

REMOVED_IN = "0.2"
"""The release that drops the old spellings: 0.1.0, the first, still takes them."""

EXPERT_PAIR = {"--c1": "--expert1", "--c2": "--expert2"}
"""The two experts' checkpoints, wherever a command takes both (score, explain)."""

OUT = {"--out": "--output"}
"""A writing command's destination."""

JOBS = {"score_archive": "score", "train_experts": "train", "detect_drift": "drift"}
"""Old job names (a spec's ``job:``, ``jobs/<name>.py``) -> the command they run, the new name."""


def notice(old: str, new: str, where: str) -> None:
    """The one line that says ``old`` still works, but not for long."""
    print(f"{where}: warning: {old} is deprecated; use {new} ({old} goes in dualcam {REMOVED_IN})",
          file=sys.stderr)


def rewrite(args: Sequence[str], renamed: Mapping[str, str], where: str) -> list[str]:
    """``args`` with each old option (``--out DIR`` or ``--out=DIR``) spelled the new way; a notice per one.
    Nothing after ``--`` is an option, so nothing there is rewritten."""
    result = list(args)
    for i, arg in enumerate(result):
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        if name in renamed:
            notice(name, renamed[name], where)
            result[i] = renamed[name] + eq + value
    return result


def rewrite_keys(options: Mapping[str, object], renamed: Mapping[str, str], where: str) -> dict[str, object]:
    """A job spec's keys with each old option's key (``c1``) renamed as its new one (``expert1``); a notice each.
    ValueError when a spec gives both spellings of one option."""
    keys = {_key(old): _key(new) for old, new in renamed.items()}
    result: dict[str, object] = {}
    for key, value in options.items():
        new = keys.get(key, key)
        if new != key:
            notice(key, new, where)
            if new in options:
                raise ValueError(f"{where}: {key} and {new} are one option; keep {new}")
        result[new] = value
    return result


def _key(option: str) -> str:
    return option.lstrip("-").replace("-", "_")
