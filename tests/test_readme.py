"""The README's snippets do what it says: the Python blocks marked as checked run on a real output,
and the command lines of "Getting started" are accepted by the command line as written."""

import os
import re
import shlex
import subprocess

import numpy as np
import pytest
import torch

from dualcam import build_expert, read_results, save_expert
from dualcam.cli import build_parser
from dualcam.distributed.pipeline import score_archive
from dualcam.io.results import to_numpy
from dualcam.synthetic.scenarios import write_synthetic_xrays

from conftest import ROOT

README = (ROOT / "README.md").read_text()
MARK = "<!-- checked by tests/test_readme.py -->"


def checked_snippets() -> list[str]:
    """The Python blocks right after a MARK comment."""
    return re.findall(re.escape(MARK) + r"\n```python\n(.*?)```", README, re.DOTALL)


def test_the_readme_marks_its_result_snippets():
    snippets = checked_snippets()
    assert len(snippets) == README.count(MARK) == 3
    assert [("pyarrow" in s, "pandas" in s, "duckdb" in s) for s in snippets] == [
        (True, False, False), (True, True, False), (False, False, True)]


@pytest.fixture(scope="module")
def results(ray_cluster, tmp_path_factory):
    """A real dualcam score output in ``<folder>/results/``, with an error row and _run.json beside the data."""
    root = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    experts = []
    for name in ("COVID-19", "pneumonia"):
        save_expert(build_expert("resnet18"), str(root / name), {"arch": "resnet18", "class_name": name,
                                                                 "input_size": 96})
        experts.append(str(root / name))
    images = root / "images"
    write_synthetic_xrays(images, 5, size=96)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    summary = score_archive(*experts, str(images), str(root / "results"), batch_size=2, rows_per_file=2,
                            progress=False)
    assert (summary.ok, summary.errors) == (5, 1)
    return root


@pytest.mark.parametrize("snippet", checked_snippets(), ids=["pyarrow", "pandas", "duckdb"])
def test_a_result_snippet_gives_the_heatmaps_as_h_by_w_arrays(results, snippet):
    table = read_results(str(results / "results"))
    ok = table.filter(np.array(table.column("status").to_pylist()) == "ok")
    expected = dict(zip(ok.column("uri").to_pylist(), to_numpy(ok.column("heatmap"))))
    here = os.getcwd()
    os.chdir(results)  # the snippets name the folder "results/"
    try:
        namespace: dict = {}
        exec(compile(snippet, "README.md", "exec"), namespace)
    finally:
        os.chdir(here)
    heatmaps, uris = namespace["heatmaps"], namespace["uris"]
    assert heatmaps.dtype == np.float32 and heatmaps.shape == (5, 3, 3)  # 96 px, stride 32: a 3 x 3 grid
    assert sorted(uris) == sorted(expected)
    for uri, heatmap in zip(uris, heatmaps):
        np.testing.assert_array_equal(heatmap, expected[uri])


def getting_started_commands() -> list[list[str]]:
    """The dualcam command lines of the Getting started block, as the shell would split them."""
    section = README.split("## Getting started", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1)
    commands = []
    for line in block.splitlines():
        for part in re.split(r"\s*(?:&&|\|)\s*", line.split("#", 1)[0]):
            words = shlex.split(part)
            if words and words[0] == "dualcam":
                commands.append(words[1:])
    return commands


def test_getting_started_commands_are_accepted_as_written():
    commands = getting_started_commands()
    assert [c[0] for c in commands] == ["expert", "expert", "decode", "explain", "score", "render"]
    parser = build_parser()
    for words in commands:
        parser.parse_args(words)  # argparse exits (a failed test) on anything it does not take


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
