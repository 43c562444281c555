"""The rich consoles: results on stdout, progress and messages on stderr."""

from __future__ import annotations

from rich.console import Console

out = Console()
err = Console(stderr=True)
