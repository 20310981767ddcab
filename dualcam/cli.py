"""The ``dualcam`` command line: parses, then runs the chosen command.

Each command's options and work live in its own module under ``dualcam/commands/``; this module
only builds the parser from them and dispatches to their ``run``, as ``dualcam.jobspec`` does for
job specs.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

from dualcam.commands import (
    decode,
    demo,
    drift,
    evaluate,
    experiment,
    expert,
    explain,
    render,
    repair,
    score,
    synth,
    train,
)
from dualcam.commands.common import EXIT_STATUSES, exit_epilog, exit_status
from dualcam.commands.renamed import rewrite

COMMANDS = {
    "expert": expert, "decode": decode, "explain": explain, "score": score, "drift": drift, "repair": repair,
    "render": render, "train": train, "synth": synth, "evaluate": evaluate, "demo": demo, "experiment": experiment,
}
"""Command name -> its module (``dualcam.commands``), in the order ``dualcam --help`` lists them."""


NEGATIVE_VALUE = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)
"""What a value that starts with '-' looks like: a number or a list of numbers (``-1,nan``, ``-inf``)."""


class LineFormatter(argparse.HelpFormatter):
    """argparse's help layout, with the line breaks of a description or epilog kept: one exit status a line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(super(LineFormatter, self)._fill_text(line, width, indent) for line in text.splitlines())


class Parser(argparse.ArgumentParser):
    """argparse, with any word that starts with a minus and a number taken as a value, not an option, and
    the command's old option spellings (``renamed``: old -> new) rewritten to the new ones with a notice.

    argparse takes only a plain negative number (``-1``, ``-.5``) as an option's value, and anything
    else that starts with '-' as an option, so ``--alphas -1,nan`` or ``--alpha -inf`` would stop
    with "expected one argument" instead of being read and refused with a reason. No option of
    dualcam starts with a minus and a digit, so nothing else changes. (Sub-parsers are of the same class.)
    """

    def __init__(self, *args: Any, renamed: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **{"formatter_class": LineFormatter, **kwargs})
        self._negative_number_matcher = NEGATIVE_VALUE  # argparse's own test, widened (same name since 3.2)
        self.renamed = renamed or {}

    def parse_known_args(  # type: ignore[override]  # argparse's overloads, one signature here
        self, args: Sequence[str] | None = None, namespace: Any = None,
    ) -> Any:
        """argparse's, after the old spellings in ``args`` are rewritten (a sub-parser gets its own args here)."""
        if self.renamed:
            args = rewrite(sys.argv[1:] if args is None else args, self.renamed, self.prog)
        return super().parse_known_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dualcam", description="Dual-expert CAMs and the ADDK kernel for X-ray "
                    "classifiers.", epilog=exit_epilog(dict.fromkeys(EXIT_STATUSES, "")))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.HELP, description=command.DESCRIPTION,
                                             epilog=exit_epilog(command.EXITS), renamed=command.RENAMED))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = vars(build_parser().parse_args(argv))
    command = COMMANDS[options.pop("command")]
    return exit_status(lambda: command.run(**options), lambda: options.get("output"))


if __name__ == "__main__":
    sys.exit(main())
