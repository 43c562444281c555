"""``wsolbench list``: fast, never imports torch.

The summaries are the plug-in classes' ``summary`` attributes, read from their
modules' source (:attr:`wsolbench.registry.Entry.summary`).
"""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from wsolbench.cli.console import out
from wsolbench.errors import PluginImportError
from wsolbench.plugin_host import DISABLE_AUTOLOAD_ENV, get_host


@click.command("list")
@click.argument("what", type=click.Choice(["all", "methods", "poolings", "datasets", "loggers", "plugins"]), default="all")
@click.argument("patterns", nargs=-1)
def list_cmd(what: str, patterns: tuple[str, ...]) -> None:
    """List methods, poolings, datasets or plug-ins; PATTERNS are glob filters (e.g. 'cam-*')."""
    host = get_host()
    globs = list(patterns) or ["*"]
    kinds = {"methods": "method", "poolings": "pooling", "datasets": "dataset", "loggers": "logger"}
    shown = list(kinds) if what == "all" else [what] if what in kinds else []
    for plural in shown:
        registry = host.registry(kinds[plural])
        table = Table(title=plural, title_justify="left", show_edge=False)
        table.add_column("name", style="bold cyan")
        table.add_column("summary")
        table.add_column("plug-in", style="dim")
        for entry in registry.entries(globs):
            aliases = f" (alias: {', '.join(entry.aliases)})" if entry.aliases else ""
            try:
                summary = escape(entry.summary)
            except PluginImportError:
                summary = f"[red]{escape(entry.factory)} fails to import[/red]"
            table.add_row(entry.name + aliases, summary, f"{entry.distribution} {entry.version}")
        out.print(table)
    if what in ("plugins", "all"):
        ctx = click.get_current_context()
        root = ctx.find_root().command
        if isinstance(root, click.Group):  # asking it for its commands lets plug-ins add theirs
            root.list_commands(ctx)
        table = Table(title="plugins", title_justify="left", show_edge=False)
        for col in ("name", "distribution", "version", "registers", "status"):
            table.add_column(col)
        for info in host.plugins:
            registers = "; ".join(f"{k}s: {', '.join(v)}" for k, v in info.registered.items())
            if info.error:
                status = f"[red]{escape(info.error)}[/red]"
            elif info.skipped:
                status = f"[yellow]not loaded: {escape(info.skipped)}[/yellow]"
            else:
                status = "[green]loaded[/green]"
            table.add_row(info.name, info.distribution, info.version, registers, status)
        out.print(table)
        if not host.autoload:
            out.print(f"third-party plug-ins are not loaded: {DISABLE_AUTOLOAD_ENV} is set")
