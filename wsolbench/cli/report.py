"""``wsolbench report``: tables (and precision-recall figures) from run directories."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from wsolbench.cli.console import err, out
from wsolbench.utils import atomic_write_text


def _split(values: tuple[str, ...]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


@click.command("report")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--format", "-f", "fmt", type=click.Choice(["table", "csv", "latex", "markdown"]), default=None,
    help="Output format (default: from the --output suffix .csv/.tex/.md, else table).",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write to FILE, not stdout.")
@click.option(
    "--metrics", multiple=True, metavar="M1,M2",
    help="Columns per dataset: metric names (docs/metrics.md lists them and the default ones), or all.",
)
@click.option("--rows", multiple=True, metavar="L1,L2", help="Only these method labels, in this order.")
@click.option("--datasets", multiple=True, metavar="D1,D2", help="Only these datasets, in this order.")
@click.option("--title", default="", help="Table title (LaTeX: the start of the caption).")
@click.option(
    "--plots", "plots_dir", type=click.Path(file_okay=False), default=None,
    help="Also draw the labels' pixel precision-recall curves, one figure per dataset (PNG, PDF), in DIR.",
)
def report(paths, fmt, output, metrics, rows, datasets, title, plots_dir) -> None:  # noqa: ANN001
    """One row per method label, one column group per dataset: mean ± std over seeds, best in bold.

    PATHS are run directories or folders holding them (searched recursively).
    Runs that are not completed or cannot be read are listed as skipped, with
    the reason, on stderr. The CSV has one line per label and dataset
    (n_runs, seeds, <metric>_mean, <metric>_std); the LaTeX table needs
    \\usepackage{booktabs}.
    """
    from wsolbench.runs import report as rep  # torch: see wsolbench.cli

    collection = rep.collect(paths)
    print_skipped(collection.skipped)
    summary = rep.summarize(
        collection.runs, _split(metrics) or rep.DEFAULT_METRICS, _split(rows) or None, _split(datasets) or None
    )
    for line in rep.table_warnings(collection.runs, summary):
        err.print(f"[yellow]warning:[/yellow] {line}", soft_wrap=True)
    fmt = fmt or (rep.format_for(output) if output else "table")
    if output:
        atomic_write_text(output, rep.render(summary, fmt, title))
        err.print(f"wrote {output}")
    elif fmt == "table":
        rep.print_table(rep.to_rich(summary, title), out)
    else:
        click.echo(rep.render(summary, fmt, title), nl=False)
    if plots_dir:
        for path in rep.draw_curves(collection.runs, Path(plots_dir), summary):
            err.print(f"wrote {path}")


def print_skipped(skipped: list) -> None:
    if skipped:
        err.print(f"[yellow]skipped {len(skipped)} run director{'ies' if len(skipped) > 1 else 'y'}:[/yellow]")
        for item in skipped:
            err.print(f"  {escape(item.path)}: {escape(item.reason)}", soft_wrap=True)
