"""``wsolbench run``: train and evaluate one method on one dataset."""

from __future__ import annotations

import json
import sys

import click


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
def run(
    method, dataset, data_root, backbone, pretrained, pooling, profile, epochs, batch_size, lr, seed, device,
    output_dir, run_name, config_file, sets, show_config, quiet,
) -> None:  # noqa: ANN001
    """Train METHOD on DATASET, select the model on validation error, evaluate it on test.

    Writes a run directory (config.json, manifest.json, metrics.jsonl,
    results.json, per_image.csv, best.pt) and prints the test metrics.
    """
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

    err.print(
        f"[bold]wsolbench[/bold] run: method [cyan]{cfg.method}[/cyan], dataset [cyan]{cfg.dataset}[/cyan], "
        f"profile {cfg.profile}, backbone {cfg.model.backbone}"
        f"{' (pretrained)' if cfg.model.pretrained else ''}, seed {cfg.seed}, {cfg.train.epochs} epochs"
    )
    result = engine.run(cfg, argv=["wsolbench", *sys.argv[1:]], quiet=quiet)
    print_results(result.results, str(result.run_dir.path))


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
