"""``wsolbench data``: check a dataset on disk, download the official files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from wsolbench import config
from wsolbench.cli.console import err, out
from wsolbench.data.download import extract, fetch
from wsolbench.errors import DataError
from wsolbench.plugin_host import registry

#: more classes than this: the summary gives counts per class as min / max instead of columns
MAX_CLASS_COLUMNS = 10
#: problems listed before "... and N more"
MAX_LISTED = 30


@click.group("data")
def data() -> None:
    """Check a dataset on disk or download its official files."""


@data.command("verify")
@click.argument("name")
@click.option("--data-root", type=click.Path(file_okay=False), required=True, help="The dataset's folder.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="A dataset parameter, e.g. --set dataset.split_dir=PATH.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Threads decoding files (default: cores, at most 8).")
def verify_cmd(name: str, data_root: str, sets: tuple[str, ...], workers: int | None) -> None:
    """Check that every file of dataset NAME exists and opens and that each mask matches its image's size.

    Prints the images per split and class; exits with status 2 listing the
    problems if there are any.
    """
    from wsolbench import assembly  # torch: see wsolbench.cli
    from wsolbench.data.files import FileDataset, verify

    cfg = config.resolve(dataset=name, profile="paper", options={"data_root": data_root}, sets=list(sets))
    dataset = assembly.build_dataset(cfg)
    if not isinstance(dataset, FileDataset):
        out.print(_table(dataset.classes, {i.name: i.per_class for i in dataset.describe()}))
        out.print(f"{cfg.dataset} is generated on the fly: no files to check.")
        return
    with Progress(TextColumn("[bold]checking files"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task("check", total=None)
        report = verify(
            dataset,
            on_record=lambda: progress.advance(task),
            on_total=lambda n: progress.update(task, total=n),
            workers=workers,
        )
    if not report.counts:  # the layout is wrong: one problem that says what is expected
        raise DataError(report.problems[0])
    title = dataset.title[:1].upper() + dataset.title[1:]
    out.print(f"[bold]{title}[/bold] at {data_root}: {report.total} images, {len(report.classes)} classes")
    out.print(_table(report.classes, report.counts))
    sizes = " / ".join(f"{k} {v}" for k, v in report.run_sizes.items())
    p = dataset.params
    if p["split_dir"]:
        how = f"the split files of {p['split_dir']}"
    elif "valid" in report.counts:
        how = "the official split"
    else:
        how = (f"validation = {p['valid_fraction']:.0%} of each class's training images, rounded up, "
               f"split seed {p['split_seed']}")
    if p.get("valid_per_class"):
        how += f", {p['valid_per_class']} validation images per class"
    if p.get("train_on_valid"):
        how += ", training on the validation split"
    if p["max_per_class"]:
        how += f", at most {p['max_per_class']} images per class"
    out.print(f"Runs use {sizes} ({how}).")
    if report.problems:
        listed = report.problems[:MAX_LISTED]
        for problem in listed:
            err.print(f"  [red]-[/red] {problem}", markup=True, highlight=False)
        if len(report.problems) > len(listed):
            err.print(f"  ... and {len(report.problems) - len(listed)} more")
        missing = {kind: sum(p.startswith(f"{kind} not found") for p in report.problems) for kind in ("image", "mask")}
        detail = ", ".join(f"{n} {kind}s not found" for kind, n in missing.items() if n)
        raise DataError(
            f"{len(report.problems)} problem{'s' if len(report.problems) > 1 else ''} with {dataset.title} at "
            f"{data_root}{f' ({detail})' if detail else ''}, listed above."
        )
    out.print(f"[green]{report.checked} images and their masks open and match in size.[/green]")


def _table(classes: list[str], counts: dict[str, Any]) -> Any:
    table = Table()
    table.add_column("split")
    table.add_column("images", justify="right")
    wide = len(classes) <= MAX_CLASS_COLUMNS
    heads = classes if wide else ["classes", "min per class", "max per class"]
    for head in heads:
        table.add_column(head, justify="right")
    rows = dict(counts)
    rows["total"] = {c: sum(counts[s].get(c, 0) for s in counts) for c in classes}
    for split, per_class in rows.items():
        values = [per_class.get(c, 0) for c in classes]
        cells = values if wide else [sum(v > 0 for v in values), min(values, default=0), max(values, default=0)]
        table.add_row(split, str(sum(values)), *map(str, cells), end_section=split == list(counts)[-1])
    return table


@data.command("download")
@click.argument("name")
@click.option("--dest", type=click.Path(file_okay=False), required=True,
              help="Folder to download into; it becomes the --data-root.")
@click.option("--mirror", default=None, metavar="URL", help="Fetch <URL>/<file name> instead of the official URLs.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="A dataset parameter that decides the files, e.g. --set dataset.dataset_name=ILSVRC for wsoleval.")
def download_cmd(name: str, dest: str, mirror: str | None, sets: tuple[str, ...]) -> None:
    """Download and extract the official files of dataset NAME into DEST.

    Checks each file's checksum, resumes partial downloads and skips files
    already there. Datasets without a public download (GlaS) say where to get
    them.
    """
    entry = registry("dataset").get(name)
    cls = entry.resolve()
    resources = getattr(cls, "downloads", ())
    note = ""
    if hasattr(cls, "download_resources"):
        params = config.resolve(dataset=entry.name, profile="paper", options={"data_root": dest},
                                sets=list(sets)).dataset_params
        resources, note = cls.download_resources(params), cls.download_note(params)
    elif sets:
        raise DataError(f"dataset {entry.name!r} takes no --set for its download")
    if not resources:
        if not getattr(cls, "needs_root", True):
            raise DataError(f"dataset {entry.name!r} is generated on the fly: there is nothing to download.")
        steps = [f"Get it from {cls.homepage}"] if getattr(cls, "homepage", "") else []
        if getattr(cls, "layout", ""):
            steps.append(f"point --data-root at a folder laid out as:\n{cls.layout}")
        how = " and ".join(steps)
        raise DataError(f"dataset {entry.name!r} has no download that wsolbench can fetch. {how[:1].upper()}{how[1:]}")
    target = Path(dest)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=err) as progress:
        for resource in resources:
            fetched = fetch(resource, target, progress, mirror=mirror)
            if not fetched:
                progress.console.print(f"{resource.filename}: already downloaded, checksum OK")
            if resource.extract and extract(target / resource.filename, target):
                progress.console.print(f"{resource.filename}: extracted")
    out.print(f"[green]{entry.name} is in {target}[/green]: use --data-root {target}")
    if note:
        out.print(note, highlight=False)
