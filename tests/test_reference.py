"""The command line speaks one dialect, ends every --help with its exit statuses, keeps the old spellings
working for one release, and its reference pages (``make docs``) are what the code prints today."""

import argparse
import re

import pytest

from dualcam import reference
from dualcam.cli import COMMANDS, build_parser, main
from dualcam.commands import renamed
from dualcam.commands.common import EXIT_STATUSES
from dualcam.io import results

from conftest import ROOT

CHANGELOG = (ROOT / "CHANGELOG.md").read_text()


def leaf_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command that does work, by its command line (``dualcam expert init``), with its parser."""
    return {command: parser for command, parser in reference.parsers(build_parser())
            if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)}


@pytest.mark.parametrize("page", reference.PAGES)
def test_the_reference_pages_are_what_the_code_makes(page):
    on_disk = (ROOT / "docs" / "reference" / page).read_text()
    assert on_disk == reference.PAGES[page](), f"docs/reference/{page} is stale: run `make docs`"


def test_the_cli_page_holds_every_commands_help_as_printed():
    page = reference.cli_page()
    assert len(leaf_parsers()) == 13
    for command in leaf_parsers():
        assert f"## {command}\n" in page
        assert f"usage: {command} " in page


def test_the_schema_page_explains_every_column_of_both_kinds():
    doc = results.__doc__ or ""
    for layout in results.LAYOUTS.values():
        for column in layout.columns:
            assert re.search(rf"\b{column}\b", doc), (layout.kind, column)


def test_every_help_ends_with_its_exit_statuses_from_the_one_table():
    for command, parser in leaf_parsers().items():
        text = parser.format_help()
        tail = text[text.index("Exit status:"):].splitlines()
        statuses = [int(line.split(":")[0]) for line in tail[1:] if re.match(r"^\d:", line)]
        assert statuses[0] == 0 and 2 in statuses, command
        for status in statuses:
            assert f"{status}: {EXIT_STATUSES[status].split()[0]}" in text, (command, status)
        assert "Exit status:" not in text[:text.index("Exit status:")], f"{command} says its exit statuses twice"


WRITERS = ["dualcam expert init", "dualcam explain", "dualcam score", "dualcam drift", "dualcam repair",
           "dualcam render", "dualcam train", "dualcam synth", "dualcam evaluate", "dualcam demo",
           "dualcam experiment"]


def test_every_writing_command_takes_output_and_no_old_spelling_shows_in_help():
    parsers = leaf_parsers()
    for command in WRITERS:
        assert "--output" in {o for a in parsers[command]._actions for o in a.option_strings}, command
    for command, parser in parsers.items():
        shown = {o for a in parser._actions for o in a.option_strings}
        assert not shown & set(parser.renamed), command
        assert "--out" not in shown, command


def old_spellings() -> list[tuple[str, str, str]]:
    """(command, old option, new option) of every command."""
    pairs = [(f"dualcam {name}", old, new) for name, module in COMMANDS.items() for old, new in module.RENAMED.items()]
    return pairs + [("dualcam expert init", old, new) for old, new in renamed.OUT.items()]


@pytest.mark.parametrize(("command", "old", "new"), old_spellings())
def test_an_old_spelling_still_parses_as_the_new_one_saying_so(command, old, new, capsys):
    parser = leaf_parsers()[command]
    action = next(a for a in parser._actions if new in a.option_strings)
    value = [] if action.nargs == 0 else ["7" if action.type in (int, float) else "x"]
    required = [arg for a in parser._actions if a.required and a.option_strings and a is not action
                for arg in (a.option_strings[0], "7" if a.type in (int, float) else "x")]
    positional = ["x"] if any(not a.option_strings and a.nargs == "+" for a in parser._actions) else []
    prefix = command.split()[1:]
    with_old = build_parser().parse_args([*prefix, *required, old, *value, *positional])
    assert capsys.readouterr().err == (f"{command}: warning: {old} is deprecated; use {new} ({old} goes in dualcam "
                                       f"{renamed.REMOVED_IN})\n")
    assert with_old == build_parser().parse_args([*prefix, *required, new, *value, *positional])
    assert capsys.readouterr().err == ""
    assert f"`{old}`" in CHANGELOG and f"`{new}`" in CHANGELOG, "the CHANGELOG lists every old spelling"


def test_repair_takes_the_old_positional_folder_with_a_notice(tmp_path, capsys):
    assert main(["repair", str(tmp_path)]) == 2  # not a results folder: the folder was read as --output
    err = capsys.readouterr().err
    assert f"dualcam repair {tmp_path} is deprecated; use dualcam repair --output {tmp_path}" in err
    assert f"dualcam: error: {tmp_path}: no _run.json; not a results folder" in err
    assert main(["repair"]) == 2
    assert "the following argument is required: --output" in capsys.readouterr().err


def test_the_old_job_names_are_the_commands_ones():
    assert set(renamed.JOBS.values()) == {"score", "train", "drift"}
    for old, new in renamed.JOBS.items():
        assert (ROOT / "jobs" / f"{old}.py").exists() and (ROOT / "jobs" / f"{new}.py").exists()
        assert f"`{old}`" in CHANGELOG
