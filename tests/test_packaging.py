"""The distribution ships every package of the source tree (a plain `pip install .` included)."""

from __future__ import annotations

import tomllib
from conftest import REPO


def test_every_package_folder_is_listed_in_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    mapping = setuptools["package-dir"]
    found = set()
    for import_name, folder in mapping.items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            found.add(".".join([import_name, *rel.parts]) if rel.parts else import_name)
    assert found - listed == set(), "add these packages to [tool.setuptools] packages"
    assert listed - found == set(), "these listed packages do not exist"


def test_console_script_and_extras():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["wsolbench"] == "wsolbench.cli:main"
    assert {"test", "crf"} <= set(project["optional-dependencies"])
