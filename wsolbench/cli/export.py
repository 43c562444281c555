"""``wsolbench export``: a run's model as one self-contained ``.wsol`` file."""

from __future__ import annotations

import click
from rich.markup import escape

from wsolbench.cli.console import out


@click.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="The file to write (model.wsol).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="The run's dataset folder, for datasets whose class names are read from their files.")
def export(run_dir, output, data_root) -> None:  # noqa: ANN001
    """Write RUN_DIR's best model to one file that `predict` and `wsolbench.load` accept.

    The file holds the weights (safetensors), the configuration, the class
    names and the plug-ins and versions that made the model; loading it never
    runs code from it. It needs the same method, pooling and dataset plug-ins
    installed, but not the run directory nor the dataset's files.
    """
    from wsolbench.runs import inference  # torch: see wsolbench.cli

    path = inference.export(run_dir, output, data_root=data_root)
    out.print(f"model written to [bold]{escape(str(path))}[/bold] ({path.stat().st_size / 2**20:.1f} MiB)")
