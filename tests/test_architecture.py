"""docs/architecture.md is the module map: every module has its row, and imports only what its row allows."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "wsolbench"
MAP = ROOT / "docs" / "architecture.md"


def modules() -> set[str]:
    """Every module of the wsolbench package, dotted (a package is its ``__init__``)."""
    out = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def module_map() -> dict[str, list[str]]:
    """``{module: [what it may import]}`` from the table rows of the map."""
    rows = {}
    for line in MAP.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`wsolbench(\.\w+)*`", cells[0]):
            allowed = re.findall(r"`([\w.*]+)`", cells[2])
            rows[cells[0].strip("`")] = allowed
    return rows


def imported(module: str, known: set[str]) -> set[str]:
    """The wsolbench modules ``module`` imports anywhere in its file (functions and type checks included)."""
    parts = module.split(".")
    path = ROOT.joinpath(*parts, "__init__.py")
    if not path.is_file():
        path = ROOT.joinpath(*parts).with_suffix(".py")
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "wsolbench"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "wsolbench":
            submodules = {f"{node.module}.{a.name}" for a in node.names} & known
            out |= submodules
            if len(submodules) < len(node.names):  # names defined in the module itself
                out.add(node.module)
    return {m for m in out if m in known} - {module, "wsolbench"}


def allows(rules: list[str], target: str) -> bool:
    for rule in rules:
        if rule == "*":
            return True
        name = "wsolbench" if rule == "wsolbench" else f"wsolbench.{rule}"
        if target == name or target.startswith(name + "."):
            return True
    return False


def test_every_module_has_one_row_and_every_row_a_module():
    rows, code = module_map(), modules()
    assert sorted(code - set(rows)) == [], "modules missing from docs/architecture.md"
    assert sorted(set(rows) - code) == [], "rows of docs/architecture.md naming no module"


def test_modules_import_only_what_the_map_allows():
    rows, code = module_map(), modules()
    broken = {
        module: sorted(t for t in imported(module, code) if not allows(rows[module], t))
        for module in sorted(code & set(rows))
    }
    assert {m: t for m, t in broken.items() if t} == {}


def test_the_rules_catch_an_import_they_do_not_allow():
    rows = module_map()
    assert not allows(rows["wsolbench.errors"], "wsolbench.training.engine")
    assert allows(["scoring"], "wsolbench.scoring.metrics") and not allows(["scoring"], "wsolbench.scoringx")


def test_training_draws_nothing():
    """The loops and a run's life report through events; drawing on the screen is the command line's."""
    for path in sorted((PACKAGE / "training").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        drawing = ("rich", "click", "wsolbench.cli")
        assert not {m for m in names for d in drawing if m == d or m.startswith(d + ".")}, path.name
