"""``wsolbench evaluate-run``: score a run's checkpoint again, on one process or several."""

from __future__ import annotations

import click
from rich.markup import escape

from wsolbench.cli.console import out
from wsolbench.cli.run import print_results, progress_display


@click.command("evaluate-run")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="best.pt (the model selected on validation) or last.pt.")
@click.option("--split", default="test", show_default=True, help="The split to score.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the run's setting).")
@click.option("--output-dir", "-o", default=None, type=click.Path(file_okay=False),
              help="Write results.json, per_image.csv, histograms.npz and the pictures here.")
@click.option("--method", "method", default=None,
              help="Load the weights into this method instead of the run's: one with the same network, e.g. "
                   "posthoc on a cam-avg run (no training).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Change a setting that keeps the network, e.g. method.cam=scorecam or eval.map_class=ground_truth "
                   "(repeatable).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def evaluate_run(run_dir, checkpoint, split, device, output_dir, method, sets, quiet) -> None:  # noqa: ANN001
    """Score RUN_DIR's checkpoint on a split with the run's own settings.

    The numbers are those the run computed at its end (for best.pt on test).
    Started with torchrun --nproc_per_node=N -m wsolbench evaluate-run ..., the
    processes share the images and give the same numbers as one process.
    With --method, another method with the same network localizes with the
    run's weights: wsolbench evaluate-run RUN --method posthoc --set
    method.cam=scorecam scores Score-CAM on a CAM run without training.
    """
    from wsolbench.training.checkpoint_eval import (
        evaluate_checkpoint,  # torch: see wsolbench.cli
    )
    from wsolbench.training.distributed import from_environment

    speaks = from_environment().is_main
    with progress_display(quiet or not speaks) as listener:
        results = evaluate_checkpoint(run_dir, checkpoint, split, device, output_dir, listener, method, list(sets))
    if speaks:
        print_results(results)
        if output_dir is not None:
            out.print(f"written to [bold]{escape(str(output_dir))}[/bold]")
