"""The ``dualcam`` command line: parses, then runs the chosen command.

Each command's options and work live in its own module under ``dualcam/commands/``; this module
only builds the parser from them and dispatches to their ``run``, as ``dualcam.jobspec`` does for
job specs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
from dualcam.commands.common import exit_status

COMMANDS = {
    "expert": expert, "decode": decode, "explain": explain, "score": score, "drift": drift, "repair": repair,
    "render": render, "train": train, "synth": synth, "evaluate": evaluate, "demo": demo, "experiment": experiment,
}
"""Command name -> its module (``dualcam.commands``), in the order ``dualcam --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualcam", description="Dual-expert CAMs and the ADDK kernel for X-ray "
                                     "classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.HELP, description=command.DESCRIPTION))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = vars(build_parser().parse_args(argv))
    command = COMMANDS[options.pop("command")]
    return exit_status(lambda: command.run(**options))


if __name__ == "__main__":
    sys.exit(main())
