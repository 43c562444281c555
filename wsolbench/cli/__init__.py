"""The ``wsolbench`` command line.

Each subcommand is a module of this package, imported only when invoked.
Those modules import torch, and what needs it, inside their command's body:
importing torch alone takes 2 s or more, while ``wsolbench --help``,
``wsolbench list`` and every ``--help`` page answer in about 0.1 s.
Errors that are the user's to fix print one paragraph and exit with status 2;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from typing import Any

import click

from wsolbench import __version__
from wsolbench.errors import RunInterrupted, UserError
from wsolbench.plugin_host import PluginWarning, get_host

#: subcommand -> "module:function"; plug-ins add more through wsolbench_register_commands
COMMANDS = {
    "run": ("wsolbench.cli.run:run", "Train and evaluate one method on one dataset."),
    "list": ("wsolbench.cli.listing:list_cmd", "List methods, poolings, datasets or plug-ins."),
    "data": ("wsolbench.cli.data:data", "Check a dataset on disk or download its official files."),
    "report": ("wsolbench.cli.report:report", "Tables and figures from run directories."),
    "bench": ("wsolbench.cli.bench:bench", "Run a benchmark suite (methods x datasets x seeds)."),
    "evaluate": ("wsolbench.cli.evaluate:evaluate", "Score maps made by other code (one .npy per image)."),
    "evaluate-run": ("wsolbench.cli.evaluate_run:evaluate_run", "Score a run's checkpoint again (any process count)."),
    "predict": ("wsolbench.cli.predict:predict", "Maps, boxes and classes of a trained model on your own images."),
    "export": ("wsolbench.cli.export:export", "Write a run's model to one self-contained .wsol file."),
}


class LazyGroup(click.Group):
    """A group whose built-in subcommands are imported on first use."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})
        self._plugins_added = False

    def _add_plugin_commands(self) -> None:
        if self._plugins_added:
            return
        self._plugins_added = True
        get_host().add_commands(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module_name, _, attr = self.lazy[name][0].partition(":")
            return getattr(importlib.import_module(module_name), attr)
        command = super().get_command(ctx, name)
        if command is None:
            self._add_plugin_commands()
            command = super().get_command(ctx, name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._add_plugin_commands()
        rows = [(name, help_) for name, (_, help_) in sorted(self.lazy.items())]
        for name in super().list_commands(ctx):
            if name not in self.lazy:
                cmd = super().get_command(ctx, name)
                rows.append((name, cmd.get_short_help_str() if cmd else ""))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(sorted(rows))

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0] if args else None
        if name is not None and name not in self.list_commands(ctx) and not name.startswith("-"):
            import difflib

            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            ctx.fail(f"No such command {name!r}.{hint}")
        return super().resolve_command(ctx, args)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsolbench")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """wsolbench: train and compare weakly supervised object localization methods.

    \b
    Examples:
      wsolbench list
      wsolbench run                                   # min-max on the synthetic set (quick)
      wsolbench run --method cam-avg --dataset synthetic --profile quick
      wsolbench run --method minmax --dataset glas --data-root DATA/glas --profile paper
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug or os.environ.get("WSOLBENCH_DEBUG") == "1"


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    if issubclass(category, PluginWarning):
        click.secho(f"warning: {message}", fg="yellow", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    warnings.showwarning = _show_warning
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("WSOLBENCH_DEBUG") == "1"
    try:
        cli.main(args=args, prog_name="wsolbench", standalone_mode=False)
    except click.exceptions.Abort as exc:
        if not isinstance(exc.__cause__, RunInterrupted):  # a run says itself how it stopped
            click.secho("Aborted.", fg="red", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except UserError as exc:
        if debug:
            raise
        click.secho(f"Error: {exc}", fg="red", err=True)
        sys.exit(exc.exit_code)
    except MemoryError as exc:
        if debug:
            raise
        detail = f" ({exc})" if str(exc) else ""
        click.secho(f"Error: out of memory{detail}. The settings ask for more than this machine has: lower the "
                    "image or crop size, the batch size, or dataset.cache_images; --debug shows where.",
                    fg="red", err=True)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        if not isinstance(exc, RunInterrupted):
            click.secho("Interrupted.", fg="red", err=True)
        sys.exit(130)
