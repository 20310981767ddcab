"""The map in docs/ARCHITECTURE.md is the code's: each folder of the package is a layer of its layers
table, each module a row of its modules table; imports go only to the module's own layer or the ones
above it; Ray is imported only by the Ray layer, in functions; nothing in the library imports the
benches; no function is longer than a reader takes in at once."""

import ast
import re
import subprocess
import sys

from conftest import ROOT

MAP = ROOT / "docs" / "ARCHITECTURE.md"
PACKAGE = ROOT / "dualcam"
RAY_LAYER = "distributed"
BENCH = "bench"
MAX_FUNCTION_LINES = 60


def folder_layers() -> dict[str, int]:
    """Folder of the package ("" for its top level, "maps", ...) -> its layer, from the layers table."""
    rows = re.findall(r"^\| (\d) \| `dualcam/(\w*)/?` \|", MAP.read_text(), flags=re.MULTILINE)
    return {folder: int(layer) for layer, folder in rows}


def mapped_modules() -> set[str]:
    """The modules table's entries, as paths under dualcam/ (``maps/kernel.py``, ``commands/*.py``)."""
    return set(re.findall(r"^\| `([\w/*]+\.py)` \|", MAP.read_text(), flags=re.MULTILINE))


def modules() -> dict[str, ast.Module]:
    """Every module of the package by dotted name (``dualcam.maps.kernel``; packages without ``.__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = ast.parse(path.read_text())
    return found


def folder_of(module: str) -> str:
    """``dualcam.maps.kernel`` -> "maps"; ``dualcam.cli`` and ``dualcam`` -> "" (the top level)."""
    parts = module.split(".")[1:]
    return parts[0] if parts and (PACKAGE / parts[0]).is_dir() else ""


def imported(tree: ast.Module) -> set[str]:
    """The dualcam modules (or packages) a module imports, as written."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dualcam":
            names |= {f"{node.module}.{a.name}" for a in node.names} if node.module == "dualcam" else {node.module}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "dualcam"}
    return names


def test_every_folder_is_a_layer_and_every_module_is_on_the_map():
    layers, listed = folder_layers(), mapped_modules()
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} | {""}
    assert set(layers) == folders, f"the layers table in {MAP.name} and the folders of dualcam/ differ"
    files = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    expected = {f for f in files if f == "__init__.py" or not f.endswith("/__init__.py")}
    expected = {re.sub(r"^commands/\w+\.py$", "commands/*.py", f) for f in expected}
    assert sorted(expected - listed) == [], f"add these modules to the modules table in {MAP.name}"
    assert sorted(listed - expected) == [], f"the modules table in {MAP.name} names modules that are gone"


def test_the_top_level_holds_a_handful_of_modules():
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "cli.py", "jobspec.py", "reference.py"]


def test_imports_go_to_the_same_layer_or_above():
    layers, code = folder_layers(), modules()
    wrong = []
    for name, tree in code.items():
        own = layers[folder_of(name)]
        for target in imported(tree):
            if target != "dualcam" and layers[folder_of(target)] > own:
                wrong.append(f"{name} (layer {own}) imports {target} (layer {layers[folder_of(target)]})")
    assert wrong == []


def test_nothing_in_the_library_imports_the_benches():
    wrong = [f"{name} imports {target}" for name, tree in modules().items() if folder_of(name) != BENCH
             for target in imported(tree) if folder_of(target) == BENCH]
    assert wrong == []


def test_import_dualcam_brings_in_neither_moto_nor_bench_code_nor_ray():
    code = "import sys, dualcam; print(sorted(m for m in sys.modules if m.split('.')[0] in ('moto', 'ray') " \
           "or m.startswith('dualcam.bench')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_only_the_ray_layer_imports_ray_and_only_inside_functions():
    for name, tree in modules().items():
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            modules_named = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if any(m.split(".")[0] == "ray" for m in modules_named):
                assert folder_of(name) == RAY_LAYER, f"{name} imports ray"
                assert id(node) not in top_level, f"{name} imports ray at import time"


def test_no_function_is_over_60_lines():
    long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for name, tree in modules().items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []
