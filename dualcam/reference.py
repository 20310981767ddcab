"""``make docs``: the reference pages made from the code, so that they cannot drift from it.

``docs/reference/cli.md`` is every command's ``--help``, as the parsers print it at a pinned width;
``docs/reference/schema.md`` is the result columns of each kind of run, in ``results.Layout``'s
order, with the meanings of ``dualcam.io.results``' docstring. ``tests/test_reference.py`` fails when
either file differs from what this module makes of the current code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from dualcam.io import results

COLUMNS = 100
"""The width the help texts are wrapped to (argparse reads it from $COLUMNS)."""
HEADER = "<!-- made by `make docs` (python -m dualcam.reference) from the code; do not edit -->\n\n"


def parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ("dualcam",),
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(command line, its parser) of ``parser`` and of each of its sub-commands, depth first, in the order
    ``--help`` lists them."""
    yield " ".join(path), parser
    for action in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


def cli_page() -> str:
    """Every command's ``--help``, at ``COLUMNS`` characters."""
    from dualcam.cli import build_parser  # imports every command: only when the page is made

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(COLUMNS)
    try:
        sections = [f"## {command}\n\n```text\n{parser.format_help().rstrip()}\n```\n"
                    for command, parser in parsers(build_parser())]
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    intro = ("# Command-line reference\n\nEvery command's `--help`. Old option spellings still work for one release, "
             "with a notice on stderr: [CHANGELOG](../../CHANGELOG.md).\n\n")
    return HEADER + intro + "\n".join(sections)


def schema_page() -> str:
    """The columns of each kind of run in order, then what each means (``results``' docstring)."""
    doc = results.__doc__ or ""
    meanings = doc[doc.index("Both kinds share one frame"):].strip()
    layouts = "\n".join(
        f"- **{layout.kind}** (schema version {layout.schema_version}): "
        + ", ".join(f"`{column}`" for column in layout.columns) + ", then the manifest's columns"
        for layout in results.LAYOUTS.values())
    return (HEADER + "# Result schema\n\nOne Parquet row per input. The columns, in order:\n\n" + layouts
            + "\n\nWhat they hold (from `dualcam/io/results.py`):\n\n```text\n" + meanings + "\n```\n")


PAGES = {"cli.md": cli_page, "schema.md": schema_page}
"""Page file name -> what makes it."""


def write(folder: Path) -> list[Path]:
    """Write every page into ``folder``; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, function in PAGES.items():
        path = folder / name
        path.write_text(function())
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/reference")):
        print(f"wrote {path}")
