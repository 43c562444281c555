"""``wsolbench run``: train and evaluate one method on one dataset; its progress display and result table."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from wsolbench import config as config_mod
from wsolbench.cli.console import err, out
from wsolbench.errors import ConfigError, RunInterrupted

if TYPE_CHECKING:
    from wsolbench.training.engine import Event

#: options that may accompany --resume (everything else comes from the run's config.json)
RESUME_COMPATIBLE = ("resume_dir", "quiet")
#: options that may accompany --like (the settings come from the run's config.json, the new run goes elsewhere)
LIKE_COMPATIBLE = ("like_dir", "quiet", "output_dir", "run_name")
#: where --like puts the new run unless --output-dir says otherwise
LIKE_OUTPUT_DIR = "runs/like"


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
@click.option("--logger", "loggers", multiple=True, metavar="NAME",
              help="An experiment logger (see `wsolbench list loggers`): csv, tensorboard, ...; repeatable.")
@click.option("--show-config", is_flag=True, help="Print the resolved configuration and exit.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option(
    "--resume", "resume_dir", type=click.Path(exists=True, file_okay=False), default=None, metavar="RUN_DIR",
    help="Continue a killed, interrupted or failed run from its last finished epoch, with its own settings.",
)
@click.option(
    "--like", "like_dir", type=click.Path(exists=True, file_okay=False), default=None, metavar="RUN_DIR",
    help="Run a completed run's settings again (a new run, in runs/like unless --output-dir says otherwise), then "
         "compare the numbers and the recorded environments; exit status 1 when the numbers differ.",
)
def run(
    method, dataset, data_root, backbone, pretrained, pooling, profile, epochs, batch_size, lr, seed, device,
    output_dir, run_name, config_file, sets, loggers, show_config, quiet, resume_dir, like_dir,
) -> None:  # noqa: ANN001
    """Train METHOD on DATASET, select the model on validation error, evaluate it on test.

    Writes a run directory (config.json, manifest.json, metrics.jsonl,
    results.json, per_image.csv, best.pt, last.pt) and prints the test metrics.
    With --resume RUN_DIR, continues that run instead (on CPU it ends with the
    metrics an uninterrupted run would have had). With --like RUN_DIR, runs
    that run's settings again and says whether the numbers are identical and
    what differed in the recorded environment (commit, versions, threads,
    processors, device, data).
    """
    if resume_dir is not None and like_dir is not None:
        raise ConfigError("--resume continues a run and --like starts a new one like it: give one of them")
    if resume_dir is not None:
        _only_with("--resume", RESUME_COMPATIBLE,
                   "continues a run with the settings in its config.json, so it cannot be combined with {names}; "
                   "only --quiet may accompany it. To change settings, start a new run.")
        _resume(resume_dir, quiet)
        return
    if like_dir is not None:
        _only_with("--like", LIKE_COMPATIBLE,
                   "runs again with the settings in RUN_DIR/config.json, so it cannot be combined with {names}; "
                   "only --quiet, --output-dir and --run-name may accompany it.")
        _like(like_dir, quiet, output_dir, run_name)
        return
    options = {
        "data_root": data_root, "seed": seed, "device": device, "output_dir": output_dir, "run_name": run_name,
        "loggers": list(loggers) or None,
        "model": {"backbone": backbone, "pretrained": pretrained, "pooling": pooling},
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr},
    }
    cfg = config_mod.resolve(method, dataset, profile, config_file, options, list(sets))
    if show_config:
        click.echo(json.dumps(cfg.to_dict(), indent=2))
        return

    from wsolbench.training import distributed, runner  # torch: see wsolbench.cli

    speaks = distributed.from_environment().is_main  # the only process, or rank 0 of a torchrun launch
    if speaks:
        err.print(
            f"[bold]wsolbench[/bold] run: method [cyan]{cfg.method}[/cyan], dataset [cyan]{cfg.dataset}[/cyan], "
            f"profile {cfg.profile}, backbone {cfg.model.backbone}"
            f"{' (pretrained)' if cfg.model.pretrained else ''}, seed {cfg.seed}, {cfg.train.epochs} epochs"
        )
    with _sigterm_interrupts(), progress_display(quiet or not speaks) as listener:
        result = runner.run(cfg, argv=["wsolbench", *sys.argv[1:]], listener=listener)
    if speaks:
        print_results(result.results, str(result.run_dir.path))


def _only_with(flag: str, allowed: tuple[str, ...], why: str) -> None:
    """Refuse the options given besides ``allowed``: ``flag`` + ``why`` (``{names}``: the refused ones)."""
    ctx = click.get_current_context()
    given = [
        p for p in ctx.command.params
        if p.name not in allowed
        and ctx.get_parameter_source(p.name) in (click.core.ParameterSource.COMMANDLINE,
                                                 click.core.ParameterSource.ENVIRONMENT)
    ]
    if given:
        raise ConfigError(f"{flag} " + why.format(names=", ".join(p.opts[0] for p in given)))


def _like(like_dir: str, quiet: bool, output_dir: str | None, run_name: str | None) -> None:
    from wsolbench.runs import rundir  # torch: see wsolbench.cli
    from wsolbench.runs.compare import compare
    from wsolbench.training import distributed, runner

    old = rundir.RunDir(like_dir)
    if not rundir.is_complete(like_dir):
        raise rundir.RunDirError(
            f"{like_dir} is not a completed run (its manifest must say completed and it must have results.json); "
            f"--like compares a new run with a finished one. Continue an unfinished run with --resume."
        )
    cfg = dataclasses.replace(old.read_config(), output_dir=output_dir or LIKE_OUTPUT_DIR,
                              run_name=run_name or old.path.name)
    speaks = distributed.from_environment().is_main
    if speaks:
        err.print(f"[bold]wsolbench[/bold] run like {escape(like_dir)}: method [cyan]{cfg.method}[/cyan], dataset "
                  f"[cyan]{cfg.dataset}[/cyan], seed {cfg.seed}, {cfg.train.epochs} epochs", soft_wrap=True)
    with _sigterm_interrupts(), progress_display(quiet or not speaks) as listener:
        result = runner.run(cfg, argv=["wsolbench", *sys.argv[1:]], listener=listener)
    if not speaks:
        return
    comparison = compare(old, result.run_dir)
    print_comparison(comparison, like_dir, str(result.run_dir.path))
    if not comparison.identical:
        sys.exit(1)


def print_comparison(comparison: Any, old: str, new: str) -> None:
    """The two runs' numbers side by side, whether they are identical, and how their recorded origins differ."""
    table = Table(title="the run and its rerun")
    for column in ("", "old", "new", ""):
        table.add_column(column, justify="right")
    for name, a, b in comparison.rows:
        table.add_row(name, _exact(a), _exact(b), "" if a == b else "[red]differs[/red]")
    out.print(table)
    out.print(f"old: {escape(old)}\nnew: {escape(new)}", soft_wrap=True)
    if comparison.identical:
        out.print("[green]identical[/green]: every test metric, the kept epoch and each epoch's training loss are "
                  "bit-identical", soft_wrap=True)
    else:
        differ = sum(a != b for _, a, b in comparison.rows)
        what = [f"{differ} of {len(comparison.rows)} numbers differ"]
        if comparison.first_loss_difference is not None:
            what.append(f"the training losses first differ at epoch {comparison.first_loss_difference}")
        if comparison.epochs[0] != comparison.epochs[1]:
            what.append(f"the runs recorded {comparison.epochs[0]} and {comparison.epochs[1]} epochs")
        out.print(f"[red]not identical[/red]: {'; '.join(what)}", soft_wrap=True)
    if comparison.origin:
        out.print("the recorded environments differ (old -> new):")
        for key, a, b in comparison.origin:
            out.print(f"  {escape(key)}: {escape(_recorded(a))} -> {escape(_recorded(b))}", soft_wrap=True)
    else:
        out.print("the recorded environments agree: code, versions, threads, processors, device and data")


def _exact(value: Any) -> str:
    return "-" if value is None else repr(value) if isinstance(value, float) else str(value)


def _recorded(value: Any) -> str:
    return "not recorded" if value is None else str(value)


def _resume(resume_dir: str, quiet: bool) -> None:
    from wsolbench.runs import rundir  # torch: see wsolbench.cli
    from wsolbench.training import distributed, runner

    speaks = distributed.from_environment().is_main
    if rundir.is_complete(resume_dir):
        if speaks:
            err.print(f"run {resume_dir} is already complete; nothing to resume", soft_wrap=True)
            print_results(rundir.RunDir(resume_dir).read_results(), resume_dir)
        return
    if speaks:
        err.print(f"[bold]wsolbench[/bold] resuming run {resume_dir}", soft_wrap=True)
    with _sigterm_interrupts(), progress_display(quiet or not speaks) as listener:
        result = runner.resume(resume_dir, argv=["wsolbench", *sys.argv[1:]], listener=listener)
    if speaks:
        print_results(result.results, str(result.run_dir.path))


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Treat SIGTERM (schedulers, ``kill``) like Ctrl-C, so the manifest records the interruption.

    A run that stops this way says how to continue it (:class:`RunInterrupted`); that is printed here.
    """

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("terminated by SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        yield
    except RunInterrupted as exc:
        err.print(str(exc), soft_wrap=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class ProgressDisplay:
    """Rich progress bars on stderr for a run's :class:`~wsolbench.training.engine.Event` values.

    One bar counts the epochs (with the last loss and validation error, ``*``
    for a new best model), one the batches of the current training or
    validation pass, and one each scored split.
    """

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=err,
            transient=False,
        )
        self.epochs: Any = None
        self.batches: Any = None
        self.current: Any = None

    def __call__(self, event: Event) -> None:
        p = self.progress
        if event.kind == "training_started":
            self.epochs = p.add_task("epochs", total=event.total, completed=event.epoch, info="")
        elif event.kind == "phase_started":
            if event.phase in ("train", "valid"):
                if self.batches is None:
                    self.batches = p.add_task("train", total=event.total, info="")
                described = f"train {event.epoch + 1}/{p.tasks[self.epochs].total}" if event.phase == "train" else "valid"
                p.reset(self.batches, total=event.total, description=described)
                self.current = self.batches
            else:
                self.current = p.add_task(event.phase, total=event.total, info="")
        elif event.kind == "step" and self.current is not None:
            p.advance(self.current)
        elif event.kind == "epoch_ended" and self.epochs is not None:
            logs = event.logs
            info = (f"loss {logs['train_loss']:.4f}  valid err {logs.get('valid_error', float('nan')):.2f}%"
                    + ("  *" if logs["improved"] else ""))
            p.update(self.epochs, advance=1, info=info)
        elif event.kind == "stopped_early":
            err.print(f"early stop at epoch {event.epoch + 1}: no better validation error for "
                      f"{event.logs['stale']} epochs")


@contextlib.contextmanager
def progress_display(quiet: bool) -> Iterator[ProgressDisplay | None]:
    """A :class:`ProgressDisplay` shown for the block (``None`` when ``quiet``)."""
    if quiet:
        yield None
        return
    display = ProgressDisplay()
    with display.progress:
        yield display


def shown_metrics(results: dict) -> list[str]:
    """The metrics of the result tables printed by ``run``, ``evaluate`` and ``evaluate-run``: the headline
    entries of the metric table that ``results`` holds, in its order (every metric is in ``results.json``)."""
    from wsolbench.scoring.metrics import METRICS  # torch: see wsolbench.cli

    return [name for name, metric in METRICS.items() if metric.headline and name in results]


def results_table(results: dict, title: str) -> Table:
    """The metrics of ``results``, one per row, with a column after dense-CRF when present."""
    from wsolbench.scoring.metrics import METRICS  # torch: see wsolbench.cli

    crf = results.get("crf")
    crf = {**crf, "cl_error": results.get("cl_error")} if isinstance(crf, dict) else None  # the CRF keeps the classes
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("as given", justify="right")
    if crf is not None:
        table.add_column("dense CRF", justify="right")
    for name in shown_metrics(results):
        cells = [METRICS[name].format(results.get(name))]
        if crf is not None:
            cells.append(METRICS[name].format(crf.get(name)))
        table.add_row(METRICS[name].title, *cells)
    table.add_row("images", str(results["n_images"]), *([str(results["n_images"])] if crf is not None else []))
    return table


#: how ``train.select_ties`` broke a tie, in words
TIE_RULE_WORDS = {"loss": "the lower validation loss", "last": "the last such epoch"}


def selection_note(results: dict) -> str | None:
    """How the tested model was chosen: its epoch, the epochs tied at its validation error, the tie rule."""
    if "tied_epochs" not in results:
        return None
    ties, rule = results["tied_epochs"], results.get("tie_rule")
    tie = (f"{ties} validated epochs tied at its selection value, kept by {TIE_RULE_WORDS.get(rule, rule)}"
           if ties > 1 else "no other validated epoch reached its selection value")
    return (f"model kept: best_epoch {results.get('best_epoch')} (epochs counted from 0), validation error "
            f"{results.get('valid_error', float('nan')):.2f}%; {tie} (train.select_ties = {rule})")


def thresholds_note(results: dict) -> str | None:
    """Which split chose the thresholds of the "(val thr.)" rows and of top-k localization."""
    source = results.get("thresholds_from")
    if source is None or "maxboxacc" not in results:
        return None
    if source == "valid":
        return ("Top-1, Top-5 and GT-known Loc (and the \"(val thr.)\" metrics of results.json) use thresholds "
                "chosen on the validation split; MaxBoxAcc, MaxBoxAccV2 and Dice* take the test-optimal threshold")
    return (f"no validation split was scored: Top-k and GT-known Loc take the threshold of MaxBoxAcc on the {source} "
            f"split itself, and the \"(val thr.)\" metrics are empty")


def metric_notes(results: dict) -> str:
    """What each shown metric is."""
    from wsolbench.scoring.metrics import METRICS  # torch: see wsolbench.cli

    return "\n".join(f"{METRICS[k].title}: {METRICS[k].description}" for k in shown_metrics(results))


def print_results(results: dict, run_dir: str | None = None) -> None:
    """The test metrics of a run (or of scored maps), what they mean, and where the files are."""
    split = results.get("split", "test")
    seed = f", seed {results['seed']}" if results.get("method") != "external" else ""
    title = f"{escape(str(results['method_label']))} on {escape(str(results['dataset']))} ({split}{seed})"
    out.print(results_table(results, title))
    for note in (selection_note(results), thresholds_note(results)):
        if note:
            out.print(note[0].upper() + note[1:] + ".")
    out.print(metric_notes(results))
    from wsolbench.scoring.metrics import METRICS  # torch: see wsolbench.cli

    others = len([name for name in METRICS if name in results]) - len(shown_metrics(results))
    if others > 0:
        out.print(f"{others} more metrics (per-IoU box accuracies, thresholds, validation-threshold scores) in "
                  f"results.json; `wsolbench report --metrics all` tabulates them (docs/metrics.md).")
    if run_dir is not None:
        out.print(f"run directory: [bold]{run_dir}[/bold]")
