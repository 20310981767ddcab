"""The documentation's snippets do what it says, across README.md and docs/**/*.md: the Python blocks marked
as checked run on a real output, every other Python block compiles and its dualcam imports resolve, every
``dualcam`` line of a sh block is accepted by the command line as written, every ``make`` target and
``python -m`` module it names exists, and every relative link (and its anchor) leads somewhere."""

import ast
import importlib.util
import os
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dualcam import build_expert, read_results, save_expert
from dualcam.cli import build_parser
from dualcam.distributed.pipeline import score_archive
from dualcam.io.results import to_numpy
from dualcam.synthetic.scenarios import write_synthetic_xrays

from conftest import ROOT

MARK = "<!-- checked by tests/test_docs.py -->"
NOT_PARSED = re.compile(r"<!-- not parsed: [^>]+ -->\n$")

PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
TEXT = {page: page.read_text() for page in PAGES}
README = TEXT[ROOT / "README.md"]


def name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def blocks(language: str) -> list[tuple[Path, str, str]]:
    """(page, the text just before the block, the block's body) of every fenced block in that language."""
    found = []
    for page, text in TEXT.items():
        for match in re.finditer(r"^```" + language + r"\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
            found.append((page, text[:match.start()], match.group(1)))
    return found


def checked_snippets() -> list[tuple[str, str]]:
    """(page, code) of the Python blocks right after a MARK comment."""
    return [(name(page), body) for page, before, body in blocks("python") if before.endswith(MARK + "\n")]


def test_the_docs_mark_their_result_snippets():
    snippets = checked_snippets()
    assert len(snippets) == sum(text.count(MARK) for text in TEXT.values()) == 4
    libraries = [next(lib for lib in ("polars", "duckdb", "pandas", "pyarrow") if f"import {lib}" in code)
                 for _, code in snippets]
    assert sorted(libraries) == ["duckdb", "pandas", "polars", "pyarrow"]


@pytest.fixture(scope="module")
def results(ray_cluster, tmp_path_factory):
    """A real dualcam score output in ``<folder>/results/``, with an error row and _run.json beside the data."""
    root = tmp_path_factory.mktemp("docs")
    torch.manual_seed(0)
    experts = []
    for cls in ("COVID-19", "pneumonia"):
        save_expert(build_expert("resnet18"), str(root / cls), {"arch": "resnet18", "class_name": cls,
                                                                "input_size": 96})
        experts.append(str(root / cls))
    images = root / "images"
    write_synthetic_xrays(images, 5, size=96)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    summary = score_archive(*experts, str(images), str(root / "results"), batch_size=2, rows_per_file=2,
                            progress=False)
    assert (summary.ok, summary.errors) == (5, 1)
    return root


@pytest.mark.parametrize("page, snippet", checked_snippets(),
                         ids=[f"{page}-{i}" for i, (page, _) in enumerate(checked_snippets())])
def test_a_result_snippet_gives_the_heatmaps_as_h_by_w_arrays(results, page, snippet):
    table = read_results(str(results / "results"))
    ok = table.filter(np.array(table.column("status").to_pylist()) == "ok")
    expected = dict(zip(ok.column("uri").to_pylist(), to_numpy(ok.column("heatmap"))))
    here = os.getcwd()
    os.chdir(results)  # the snippets name the folder "results/"
    try:
        namespace: dict = {}
        exec(compile(snippet, page, "exec"), namespace)
    finally:
        os.chdir(here)
    heatmaps, uris = namespace["heatmaps"], namespace["uris"]
    assert heatmaps.dtype == np.float32 and heatmaps.shape == (5, 3, 3)  # 96 px, stride 32: a 3 x 3 grid
    assert sorted(uris) == sorted(expected)
    for uri, heatmap in zip(uris, heatmaps):
        np.testing.assert_array_equal(heatmap, expected[uri])


def unchecked_python() -> list[tuple[str, str]]:
    return [(name(page), body) for page, before, body in blocks("python") if not before.endswith(MARK + "\n")]


@pytest.mark.parametrize("page, code", unchecked_python())
def test_other_python_blocks_compile_and_their_dualcam_imports_resolve(page, code):
    tree = ast.parse(compile(code, page, "exec", flags=ast.PyCF_ONLY_AST))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dualcam":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                    f"{page}: from {node.module} import {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "dualcam":
                    importlib.import_module(alias.name)


def shell_lines() -> list[tuple[str, str]]:
    """(page, command) of every line of a sh block not marked as not parsed, continuation lines joined, comments
    dropped, and split at && and pipes."""
    found = []
    for page, before, body in blocks("sh"):
        if NOT_PARSED.search(before):
            continue
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            line = re.sub(r"^\$ ", "", line.strip())
            words = shlex.split(line, comments=True) if line else []
            command: list[str] = []
            for word in [*words, "&&"]:
                if word in ("&&", "|", "||", ";"):
                    if command:
                        found.append((name(page), shlex.join(command)))
                    command = []
                else:
                    command.append(word)
    return found


def dualcam_lines() -> list[tuple[str, str]]:
    return [(page, line) for page, line in shell_lines() if line.split()[0] == "dualcam"]


def test_the_getting_started_commands_are_there():
    section = README.split("## Your X-rays, your checkpoints", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1)
    commands = [shlex.split(line, comments=True)[1] for line in block.splitlines() if line.startswith("dualcam ")]
    assert commands == ["expert", "expert", "decode", "explain", "score", "render"]


@pytest.mark.parametrize("page, line", dualcam_lines())
def test_every_dualcam_line_is_accepted_as_written(page, line, capsys):
    build_parser().parse_args(shlex.split(line)[1:])  # argparse exits (a failed test) on anything it does not take
    assert "deprecated" not in capsys.readouterr().err, f"{page} uses an old spelling: {line}"


def make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*?)(?<!\\)\n", makefile, re.DOTALL | re.MULTILINE).group(1)
    return set(phony.replace("\\\n", " ").split())


@pytest.mark.parametrize("page, line", [(p, line) for p, line in shell_lines() if line.split()[0] == "make"])
def test_every_make_target_exists(page, line):
    targets = [w for w in shlex.split(line)[1:] if "=" not in w and not w.startswith("-")]
    assert targets and set(targets) <= make_targets(), f"{page}: {line}"


@pytest.mark.parametrize("page, module", sorted({(name(page), m) for page, text in TEXT.items()
                                                 for m in re.findall(r"python3? -m ([\w.]+)", text)}))
def test_every_python_m_module_exists(page, module):
    assert importlib.util.find_spec(module) is not None, f"{page}: python -m {module}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but - and _ dropped, spaces to -."""
    text = re.sub(r"`|\*\*|<[^>]+>", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    body = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", body, re.MULTILINE)}


def links() -> list[tuple[str, str]]:
    found = []
    for page, text in TEXT.items():
        body = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
        body = re.sub(r"`[^`\n]*`", "", body)
        for target in re.findall(r"\]\(([^)\s]+)\)", body):
            if not re.match(r"[a-z]+:", target):
                found.append((name(page), target))
    return found


@pytest.mark.parametrize("page, target", links())
def test_every_relative_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    where = (ROOT / page).parent / path if path else ROOT / page
    assert where.exists(), f"{page}: {target}: no such file"
    if anchor and where.suffix == ".md":
        assert anchor in anchors(where.read_text()), f"{page}: {target}: no heading with that anchor"


def test_the_readme_opens_with_the_two_commands():
    lines = README.splitlines()
    assert lines[0] == "# dualcam" and lines[2] == "```"
    assert lines[3].startswith("make demo ") and lines[4].startswith("make test ")


def test_the_readme_is_short():
    assert len(README.splitlines()) < 250


def test_the_index_lists_every_page():
    index = TEXT[ROOT / "docs" / "README.md"]
    listed = {os.path.normpath(ROOT / "docs" / target) for target in re.findall(r"\]\(([^)#\s]+\.md)", index)}
    pages = {os.path.normpath(p) for p in PAGES if p.parent != ROOT and p != ROOT / "docs" / "README.md"}
    assert pages <= listed, sorted(pages - listed)


def test_the_activation_step_puts_dualcam_on_the_path():
    """The README's activation line, run by bash from the checkout with .venv off the PATH, finds .venv's dualcam."""
    (activate,) = set(re.findall(r"`(source \.venv/bin/activate)`", README))
    if not (ROOT / ".venv" / "bin" / "activate").exists():
        pytest.skip("no .venv in this checkout (make venv creates it)")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not p.startswith(str(ROOT / ".venv")))
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | {"PATH": path}
    found = subprocess.run(["bash", "-c", f"{activate} && command -v dualcam && dualcam --help"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines()[0] == str(ROOT / ".venv" / "bin" / "dualcam")
    assert "usage: dualcam" in found.stdout
