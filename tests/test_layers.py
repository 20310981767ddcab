"""The map in docs/ARCHITECTURE.md is the code's: every module is in its layers table, and imports
go only to its own layer or the ones above it; Ray is imported only by the Ray layer, in functions."""

import ast
import re

from conftest import ROOT

MAP = ROOT / "docs" / "ARCHITECTURE.md"
RAY_LAYER = 5


def layers() -> dict[str, int]:
    """Module name (``dualcam.maps.kernel``, ``dualcam.commands``) -> its layer, from the map's table."""
    rows = re.findall(r"^\| (\d) [^|]+\| `([\w/*]+)\.py` \|", MAP.read_text(), flags=re.MULTILINE)
    return {"dualcam" + ("" if path == "__init__" else "." + path.replace("/*", "").replace("/", ".")): int(layer)
            for layer, path in rows}


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted((ROOT / "dualcam").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = ast.parse(path.read_text())
    return found


def layer_of(module: str, table: dict[str, int]) -> int:
    """A module's layer: its own row, or its package's (``dualcam.commands.score``: ``commands/*``)."""
    while module not in table:
        module = module.rsplit(".", 1)[0]
    return table[module]


def imported(tree: ast.Module, known: set[str]) -> set[str]:
    """The dualcam modules a module imports (``from dualcam import storage`` imports ``dualcam.io.storage``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dualcam":
            names |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                      for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "dualcam"}
    return names


def test_every_module_is_on_the_map():
    table, code = layers(), modules()
    assert len(table) > 20
    missing = [name for name in code if not any(name == m or name.startswith(m + ".") for m in table)]
    assert missing == [], f"add these modules to the layers table in {MAP.name}"
    assert [m for m in table if m not in code] == [], f"the layers table in {MAP.name} names modules that are gone"


def test_imports_go_to_the_same_layer_or_above():
    table, code = layers(), modules()
    wrong = []
    for name, tree in code.items():
        own = layer_of(name, table)
        for target in imported(tree, set(code)):
            if target != "dualcam" and layer_of(target, table) > own:
                wrong.append(f"{name} (layer {own}) imports {target} (layer {layer_of(target, table)})")
    assert wrong == []


def test_only_the_ray_layer_imports_ray_and_only_inside_functions():
    table, code = layers(), modules()
    for name, tree in code.items():
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            modules_named = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if any(m.split(".")[0] == "ray" for m in modules_named):
                assert layer_of(name, table) == RAY_LAYER, f"{name} imports ray"
                assert id(node) not in top_level, f"{name} imports ray at import time"
