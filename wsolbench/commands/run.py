"""``wsolbench run``: train and evaluate one method on one dataset."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Iterator

import click

#: options that may accompany --resume (everything else comes from the run's config.json)
RESUME_COMPATIBLE = ("resume_dir", "quiet")


@click.command("run")
@click.option("--method", "-m", default=None, help="Method name (see `wsolbench list methods`). Default: minmax.")
@click.option("--dataset", "-d", default=None, help="Dataset name (see `wsolbench list datasets`). Default: synthetic.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="Folder holding the dataset.")
@click.option("--backbone", default=None, help="Any timm CNN that supports features_only (e.g. resnet18).")
@click.option("--pretrained/--no-pretrained", default=None, help="ImageNet weights for the backbone.")
@click.option("--pooling", default=None, help="Pooling head (see `wsolbench list poolings`).")
@click.option(
    "--profile", type=click.Choice(["quick", "paper"]), default=None,
    help="quick: a CPU smoke run (default); paper: the paper's settings.",
)
@click.option("--epochs", type=click.IntRange(min=0), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Learning rate.")
@click.option("--seed", type=int, default=None, help="Seed for everything (default 0).")
@click.option("--device", default=None, help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--output-dir", "-o", default=None, help="Where run directories go (default ./runs).")
@click.option("--run-name", default=None, help="Name of the run directory (default: time-dataset-method-seed).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help="A TOML file of settings.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a setting, e.g. --set train.lr=0.01.")
@click.option("--show-config", is_flag=True, help="Print the resolved configuration and exit.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option(
    "--resume", "resume_dir", type=click.Path(exists=True, file_okay=False), default=None, metavar="RUN_DIR",
    help="Continue a killed, interrupted or failed run from its last finished epoch, with its own settings.",
)
def run(
    method, dataset, data_root, backbone, pretrained, pooling, profile, epochs, batch_size, lr, seed, device,
    output_dir, run_name, config_file, sets, show_config, quiet, resume_dir,
) -> None:  # noqa: ANN001
    """Train METHOD on DATASET, select the model on validation error, evaluate it on test.

    Writes a run directory (config.json, manifest.json, metrics.jsonl,
    results.json, per_image.csv, best.pt, last.pt) and prints the test metrics.
    With --resume RUN_DIR, continues that run instead (on CPU it ends with the
    metrics an uninterrupted run would have had).
    """
    if resume_dir is not None:
        _resume(resume_dir, quiet)
        return
    from wsolbench import config as config_mod

    options = {
        "data_root": data_root, "seed": seed, "device": device, "output_dir": output_dir, "run_name": run_name,
        "model": {"backbone": backbone, "pretrained": pretrained, "pooling": pooling},
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr},
    }
    cfg = config_mod.resolve(method, dataset, profile, config_file, options, list(sets))
    if show_config:
        click.echo(json.dumps(cfg.to_dict(), indent=2))
        return

    from wsolbench import engine
    from wsolbench.console import err

    speaks = _speaks()
    if speaks:
        err.print(
            f"[bold]wsolbench[/bold] run: method [cyan]{cfg.method}[/cyan], dataset [cyan]{cfg.dataset}[/cyan], "
            f"profile {cfg.profile}, backbone {cfg.model.backbone}"
            f"{' (pretrained)' if cfg.model.pretrained else ''}, seed {cfg.seed}, {cfg.train.epochs} epochs"
        )
    with _sigterm_interrupts():
        result = engine.run(cfg, argv=["wsolbench", *sys.argv[1:]], quiet=quiet)
    if speaks:
        print_results(result.results, str(result.run_dir.path))


def _resume(resume_dir: str, quiet: bool) -> None:
    ctx = click.get_current_context()
    given = [
        p for p in ctx.command.params
        if p.name not in RESUME_COMPATIBLE
        and ctx.get_parameter_source(p.name) in (click.core.ParameterSource.COMMANDLINE,
                                                 click.core.ParameterSource.ENVIRONMENT)
    ]
    if given:
        names = ", ".join(p.opts[0] for p in given)
        from wsolbench.errors import ConfigError

        raise ConfigError(
            f"--resume continues a run with the settings in its config.json, so it cannot be combined with "
            f"{names}; only --quiet may accompany it. To change settings, start a new run."
        )
    from wsolbench import engine, runs
    from wsolbench.console import err

    speaks = _speaks()
    if runs.is_complete(resume_dir):
        if speaks:
            err.print(f"run {resume_dir} is already complete; nothing to resume", soft_wrap=True)
            print_results(runs.RunDir(resume_dir).read_results(), resume_dir)
        return
    if speaks:
        err.print(f"[bold]wsolbench[/bold] resuming run {resume_dir}", soft_wrap=True)
    with _sigterm_interrupts():
        result = engine.resume(resume_dir, argv=["wsolbench", *sys.argv[1:]], quiet=quiet)
    if speaks:
        print_results(result.results, str(result.run_dir.path))


def _speaks() -> bool:
    """Whether this process prints: the only one, or rank 0 of a torchrun launch."""
    from wsolbench.distributed import from_environment

    return from_environment().is_main


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Treat SIGTERM (schedulers, ``kill``) like Ctrl-C, so the manifest records the interruption."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("terminated by SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_results(results: dict, run_dir: str) -> None:
    from rich.table import Table

    from wsolbench.console import out

    table = Table(title=f"{results['method_label']} on {results['dataset']} (test, seed {results['seed']})")
    for col in ("cl. error %", "F1+", "F1-", "PxAP", "Dice@best", "images"):
        table.add_column(col, justify="right")

    def fmt(x: object) -> str:
        return "-" if x is None or x != x else f"{x:.2f}"  # noqa: PLR0124 - NaN check

    table.add_row(
        fmt(results["cl_error"]), fmt(results["f1_pos"]), fmt(results["f1_neg"]), fmt(results["pxap"]),
        fmt(results.get("dice_best")), str(results["n_images"]),
    )
    out.print(table)
    crf = results.get("crf")
    if isinstance(crf, dict):
        out.print(f"after dense CRF: F1+ {fmt(crf['f1_pos'])}, F1- {fmt(crf['f1_neg'])}, PxAP {fmt(crf['pxap'])}, "
                  f"Dice@best {fmt(crf.get('dice_best'))}")
    out.print("F1+/F1-: per-image Dice at 0.5, mean over images. Dice@best: pooled, best threshold.")
    out.print(f"run directory: [bold]{run_dir}[/bold]")
