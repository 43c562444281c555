"""Installed distributions made by hand: a module and its ``.dist-info`` (what pip would leave behind)."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_distribution(
    site: Path, dist: str, module: str, source: str, version: str = "1.2.3", entry_point: str | None = None
) -> None:
    """Install ``module`` (``source``) into ``site`` as distribution ``dist`` with a ``wsolbench`` entry point."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[wsolbench]\n{entry_point or dist} = {module}\n")
