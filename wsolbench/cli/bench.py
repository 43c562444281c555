"""``wsolbench bench``: run a benchmark suite (methods x datasets x seeds) and report it."""

from __future__ import annotations

import functools
import sys

import click
from rich.markup import escape
from rich.table import Table

from wsolbench.cli.console import err, out
from wsolbench.errors import UserError


def _data_roots(items: tuple[str, ...]) -> dict[str, str]:
    roots = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserError(f"--data-root expects DATASET=PATH (for example glas=/data/glas), got {item!r}")
        roots[name.strip()] = path.strip()
    return roots


@click.command("bench")
@click.argument("suite_file", type=click.Path(dir_okay=False))
@click.option("--output-dir", "-o", default=None, help="Where the suite's runs go (overrides suite.output_dir).")
@click.option("--data-root", "data_roots", multiple=True, metavar="DATASET=PATH", help="A dataset's folder.")
@click.option("--only", multiple=True, metavar="PATTERN",
              help="Only cells matching a glob on DATASET/NAME/seed-S, the dataset, the name or the method.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="A setting for every run (after the suite's).")
@click.option("--dry-run", is_flag=True, help="List the grid and each cell's state; run nothing.")
@click.option("--metrics", multiple=True, metavar="M1,M2", help="The report's columns (see `wsolbench report`).")
@click.option("--launcher", type=click.Choice(["local", "slurm", "submitit-local"]), default="local",
              show_default=True,
              help="local: one cell after another here; slurm: every cell a Slurm job (submitit); "
                   "submitit-local: the same jobs as processes on this machine.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Cells run at a time by the local launcher, the CPU cores shared among them "
                   "(OMP_NUM_THREADS, unless set).")
@click.option("--partition", default=None, help="Slurm partition (overrides slurm.partition).")
@click.option("--gpus-per-node", type=click.IntRange(min=0), default=None,
              help="GPUs per job (default 1); more than 1 runs the cell with torchrun.")
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=None, help="CPUs per job.")
@click.option("--mem-gb", type=click.FloatRange(min=0, min_open=True), default=None, help="Memory per job (GB).")
@click.option("--timeout-min", type=click.IntRange(min=1), default=None,
              help="Time limit per job in minutes (default 1440).")
def bench(suite_file, output_dir, data_roots, only, sets, dry_run, metrics, launcher, jobs, partition,
          gpus_per_node, cpus_per_task, mem_gb, timeout_min) -> None:  # noqa: ANN001
    """Run every cell of SUITE_FILE (a TOML benchmark suite), then print the report table.

    Every cell's settings (the suite's and each --set) are checked before any
    cell starts; a cell that does not resolve stops the command with exit
    status 2, naming the cells and the problem.

    Cells already complete are skipped; an interrupted one continues from its
    last finished epoch (when its settings are unchanged); a failed cell does
    not stop the others and is listed at the end (exit status 1). See
    wsolbench/runs/suite.py and benchmarks/*.toml for the suite format, and
    wsolbench/runs/slurm.py for --launcher slurm and the suite's [slurm] table.
    """
    from wsolbench.runs import report as rep  # torch: see wsolbench.cli
    from wsolbench.runs import suite as bench_mod

    if jobs > 1 and launcher != "local":
        raise click.UsageError("--jobs is for the local launcher; Slurm runs the cells as parallel jobs anyway")
    suite = bench_mod.load_suite(suite_file, output_dir, _data_roots(data_roots), list(sets))
    bench_mod.check_cells(suite.cells)
    cells = [c for c in suite.cells if c.matches(only)]
    err.print(
        f"[bold]wsolbench bench[/bold] {escape(suite.name)}: {len(cells)} of {len(suite.cells)} cells, "
        f"profile {suite.profile}, output {escape(str(suite.output_dir))}"
    )
    if dry_run:
        table = Table(show_edge=False)
        for col in ("cell", "method", "state", "run directory"):
            table.add_column(col)
        for cell in cells:
            table.add_row(escape(cell.key), escape(cell.method), bench_mod.state(cell), escape(str(cell.run_dir)))
        rep.print_table(table, out)
        return

    def on_start(i: int, n: int, cell: bench_mod.Cell) -> None:
        head = f"[{i + 1}/{n}] {escape(cell.key)} ({escape(cell.method)})"
        if jobs == 1:  # the outcome follows on the same line
            err.print(f"{head} ...", end=" ", highlight=False)
        else:
            err.print(f"{head} started", highlight=False)

    def on_done(outcome: bench_mod.Outcome) -> None:
        colour = {"completed": "green", "skipped": "dim", "failed": "red", "busy": "yellow"}[outcome.status]
        detail = f" in {outcome.seconds:.1f} s" if outcome.status == "completed" else ""
        detail += f": {escape(outcome.message)}" if outcome.message else ""
        if jobs > 1:  # cells end in any order: name each
            err.print(f"{escape(outcome.cell.key)} ({escape(outcome.cell.method)}) ", end="", highlight=False)
        err.print(f"[{colour}]{outcome.status}[/{colour}]{detail}", highlight=False)

    if launcher == "local":
        launch = bench_mod.launch_local
        if jobs > 1:
            threads = bench_mod.threads_per_job(jobs)
            launch = functools.partial(bench_mod.launch_local, threads=threads)
            err.print(f"{jobs} cells at a time, {threads} CPU thread(s) each")
        outcomes = bench_mod.run_suite(cells, launch, on_start=on_start, on_done=on_done, jobs=jobs)
    else:
        from wsolbench.runs import slurm

        options = slurm.SlurmOptions.from_tables(suite.slurm, {
            "partition": partition, "gpus_per_node": gpus_per_node, "cpus_per_task": cpus_per_task,
            "mem_gb": mem_gb, "timeout_min": timeout_min,
        })

        def on_submitted(jobs: int, total: int) -> None:
            err.print(f"{jobs} job(s) submitted ({launcher}), {total - jobs} cell(s) not to run; waiting ...")

        def on_job_done(outcome: bench_mod.Outcome) -> None:
            err.print(f"{escape(outcome.cell.key)} ({escape(outcome.cell.method)}) ", end="", highlight=False)
            on_done(outcome)

        outcomes = slurm.run_suite_as_jobs(cells, options, suite.output_dir / ".submitit", launcher,
                                           name=f"wsolbench-{suite.name}", on_submitted=on_submitted,
                                           on_done=on_job_done)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("completed", "skipped", "failed", "busy")}
    err.print(
        f"{counts['completed']} run, {counts['skipped']} already complete, {counts['failed']} failed"
        + (f", {counts['busy']} running elsewhere" if counts["busy"] else "")
    )
    problems = [o for o in outcomes if o.status in ("failed", "busy")]
    if problems:
        table = Table(title="cells not completed", title_justify="left", show_edge=False)
        for col in ("cell", "method", "exit", "reason", "log"):
            table.add_column(col)
        for o in problems:
            table.add_row(
                escape(o.cell.key), escape(o.cell.method), "" if o.returncode is None else str(o.returncode),
                escape(o.message), escape(str(o.log or "")),
            )
        err.print(table)

    _print_report(suite, [o.cell for o in outcomes], metrics)
    if problems:
        sys.exit(1)


def _print_report(suite, cells, metrics) -> None:  # noqa: ANN001
    from wsolbench.runs import report as rep  # torch: see wsolbench.cli
    from wsolbench.runs.suite import bench_rows

    done = [c.run_dir for c in cells if c.run_dir.exists()]
    if not done:
        err.print("no completed runs to report")
        return
    collection = rep.collect(done)
    if collection.runs.empty:
        err.print("no completed runs to report")
        return
    rows = bench_rows(cells, collection.runs)
    datasets = [d for d in suite.datasets if d in set(collection.runs["dataset"])]
    chosen = [m.strip() for value in metrics for m in value.split(",") if m.strip()] or rep.DEFAULT_METRICS
    summary = rep.summarize(collection.runs, chosen, rows, datasets)
    for line in rep.table_warnings(collection.runs, summary):
        err.print(f"[yellow]warning:[/yellow] {escape(line)}", soft_wrap=True)
    rep.print_table(rep.to_rich(summary, title=f"suite {suite.name}"), out)
