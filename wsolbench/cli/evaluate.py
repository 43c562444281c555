"""``wsolbench evaluate``: score maps made by other code with wsolbench's metrics."""

from __future__ import annotations

import sys

import click
from rich.markup import escape
from rich.table import Table

from wsolbench import config as config_mod
from wsolbench.cli.console import err
from wsolbench.cli.run import print_results


@click.command("evaluate")
@click.option("--scoremaps", "scoremaps_dir", required=True, type=click.Path(),
              help="Folder of <image id>.npy maps (or wsolevaluation's <image file>.npy), float in [0, 1].")
@click.option("--valid-scoremaps", "valid_dir", type=click.Path(), default=None,
              help="Folder of the validation split's maps, named and checked alike (wsolevaluation's root, with "
                   "val/ and test/, may be both folders): their best thresholds score --scoremaps (the \"(val "
                   "thr.)\" metrics and Top-1 Loc, as a run's).")
@click.option("--dataset", "-d", required=True, help="Dataset name (see `wsolbench list datasets`).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="Folder holding the dataset.")
@click.option("--split", default="test", show_default=True, help="The split the maps are for.")
@click.option("--profile", type=click.Choice(["quick", "paper"]), default="paper", show_default=True,
              help="The profile whose dataset settings the maps were made with (paper: the whole official split).")
@click.option("--seed", type=int, default=None, help="The dataset's seed (splits, synthetic images); default 0.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="A dataset.* or eval.* setting.")
@click.option("--predictions", type=click.Path(dir_okay=False), default=None,
              help="CSV with id and pred (class index) columns, for the classification error.")
@click.option("--crf/--no-crf", default=False, help="Also score the maps after dense-CRF post-processing.")
@click.option("--label", default=None, help="The report's row name (default: the folder's name).")
@click.option("--output-dir", "-o", default=None,
              help="Also write a run directory here (results, per-image scores, pictures) for `wsolbench report`.")
@click.option("--run-name", default=None, help="Its name (default scoremaps-<dataset>-<label>).")
def evaluate(scoremaps_dir, valid_dir, dataset, data_root, split, profile, seed, sets, predictions, crf, label,
             output_dir, run_name) -> None:  # noqa: ANN001
    """Score the maps in --scoremaps on a dataset split with wsolbench's metrics.

    Every file is checked first (missing, unreadable, wrong shape, not float,
    NaN or infinite values, values outside [0, 1]); the problems are listed
    per file and the command exits with status 2 without scoring. Maps may be
    at the mask's size or at the evaluation image's size; under
    `--set eval.protocol=wsoleval` they are 224 x 224, as wsolevaluation's.
    The whole split is scored (the paper profile's dataset settings) unless
    --profile quick says the maps are of the quick profile's subset.

    Thresholds follow the CVPR 2020 protocol when --valid-scoremaps is given:
    the validation maps are checked and scored first, and their best
    thresholds give the "(val thr.)" metrics and Top-1 / GT-known Loc of the
    scored split, as in a run. Without it those use the scored split's own
    (test-optimal) thresholds and results.json says so (thresholds_from).
    """
    from wsolbench.scoring import scoremaps  # torch: see wsolbench.cli

    options = {"data_root": data_root, "seed": seed, "eval": {"crf": crf or None}}
    cfg = config_mod.resolve(None, dataset, profile, None, options, list(sets))
    if output_dir is None:
        cfg.eval.pictures = 0
    try:
        evaluation = scoremaps.evaluate_directory(scoremaps_dir, cfg, split, predictions, label, valid_dir)
    except scoremaps.ScoreMapError as exc:
        for what, problems in exc.groups:
            table = Table(title=f"problems with {escape(what)}", title_justify="left", show_edge=False)
            table.add_column("file")
            table.add_column("problem", style="red")
            for problem in problems:
                table.add_row(escape(problem.file), escape(problem.problem))
            err.print(table)
        err.print(f"[red]Error:[/red] {len(exc.problems)} problem(s); nothing was scored.")
        sys.exit(exc.exit_code)
    if evaluation.unmatched:
        shown = ", ".join(evaluation.unmatched[:3]) + (" ..." if len(evaluation.unmatched) > 3 else "")
        err.print(f"[yellow]note:[/yellow] {len(evaluation.unmatched)} .npy file(s) match no image of the split: "
                  f"{escape(shown)}")
    path = None
    if output_dir is not None:
        name = run_name or f"scoremaps-{cfg.dataset}-{evaluation.results['method_label']}"
        path = escape(str(scoremaps.write_run(evaluation, cfg, output_dir, name, ["wsolbench", *sys.argv[1:]])))
    else:
        evaluation.finish(None)
    print_results(evaluation.results, path)
