"""Benchmark suites: a grid of methods x datasets x seeds from a TOML file.

A suite file::

    [suite]
    name = "cpu"                       # default: the file's name
    profile = "quick"                  # quick | paper
    seeds = [0, 1]
    output_dir = "runs/cpu"            # default runs/<name>; --output-dir overrides
    datasets = ["synthetic"]           # the report's column groups, in this order
    methods = ["cam-avg", "cam-max"]   # each method with its own defaults
    set = ["train.epochs=8"]           # settings for every run (as --set KEY=VALUE)

    [datasets.glas]                    # optional, per dataset
    data_root = "data/glas"            # --data-root glas=PATH overrides
    set = ["eval.crf=true"]

    [slurm]                            # optional: jobs of `bench --launcher slurm` (wsolbench.runs.slurm)
    partition = "gpu"

    [[runs]]                           # optional: a method with its own settings
    method = "minmax"
    set = ["method.u=0"]
    label = "Min-max (u=0)"            # optional: the report's row name
    datasets = ["glas"]                # optional: a subset of the suite's datasets
    seeds = [0, 1, 2]                  # optional: its own seeds instead of the suite's

    [[runs]]                           # no training: another entry's trained weights, localized by this method
    method = "posthoc"
    set = ["method.cam=scorecam"]
    label = "Score-CAM"
    weights_from = "gradcam"           # that entry's label or directory name, same dataset and seed

Relative paths (``output_dir``, ``data_root``) are relative to the current
directory. Settings apply in order: suite, dataset, run entry, command line.

Each cell runs in a fresh interpreter (``python -m wsolbench run ...``: a crash
or a memory leak stays in its cell) and goes to
``<output_dir>/<dataset>/<name>/seed-<seed>``, where ``<name>`` is the entry's
label, or the method's name followed by its settings. An entry with
``weights_from`` trains nothing: each of its cells scores the best checkpoint
of the named entry's cell of the same dataset and seed with its own method
(``wsolbench evaluate-run SOURCE --method M --set ... --output-dir CELL``),
after that cell is complete; its settings are only the entry's own ``set``
and the command line's (the network and its training are the source's).
Cluster launchers submit such a cell only once its source is complete: run
``bench`` again after the training jobs.
Before any cell starts,
:func:`check_cells` resolves every cell's settings (``bench`` exits with
status 2 and names the cells when one does not). A cell whose directory
holds a completed run is skipped. An incomplete one (killed, interrupted,
failed) continues from its last finished epoch (``wsolbench run --resume``)
when it has one and its settings are still the cell's; otherwise it is renamed
``seed-<seed>.attempt-<k>`` and run again from the start. A failed cell
(missing data, a crash) is recorded and the grid goes on.
``run_suite(..., jobs=N)`` runs N cells at a time. :func:`launch_local` is the
one place that starts a run; :mod:`wsolbench.runs.slurm` submits the same command
lines as cluster jobs instead (``bench --launcher slurm``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsolbench import config
from wsolbench.config import PROFILES, load_toml
from wsolbench.errors import ConfigError, UnknownNameError, UserError
from wsolbench.runs import rundir
from wsolbench.runs.report import CRF_SUFFIX
from wsolbench.training.checkpoints import as_stored_json
from wsolbench.training.runner import RESUMABLE


class SuiteError(ConfigError):
    """A suite file that cannot be used as written."""


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    name: str  #: the entry's directory name
    method: str
    dataset: str
    seed: int
    profile: str
    run_dir: Path
    data_root: str | None = None
    sets: tuple[str, ...] = ()
    label: str | None = None
    resume: bool = False  #: continue the incomplete run in ``run_dir`` instead of starting one
    source: Cell | None = None  #: the cell whose trained weights this one scores (``weights_from``): no training

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.name}/seed-{self.seed}"

    def options(self) -> dict[str, Any]:
        """The cell as ``wsolbench run`` options, keyed by that command's parameter names, in command-line order.

        ``sets`` holds the ``--set`` items: the suite's, then the label's.
        ``data_root`` is left out when the cell has none.
        """
        options: dict[str, Any] = {
            "method": self.method, "dataset": self.dataset, "profile": self.profile, "seed": self.seed,
            "output_dir": str(self.run_dir.parent), "run_name": self.run_dir.name,
        }
        if self.data_root:
            options["data_root"] = self.data_root
        options["sets"] = [*self.sets] + ([f"label={json.dumps(self.label)}"] if self.label else [])
        return options

    def command(self, python: str = sys.executable) -> list[str]:
        """The ``wsolbench run`` command line of this cell's :meth:`options` (``run --resume RUN_DIR`` when ``resume``).

        A cell with a ``source``: ``wsolbench evaluate-run SOURCE --method M --set ... --output-dir RUN_DIR``.
        """
        if self.source is not None:
            argv = [python, "-m", "wsolbench", "evaluate-run", str(self.source.run_dir), "--quiet",
                    "--method", self.method]
            return [*argv, *(arg for item in self.options()["sets"] for arg in ("--set", item)),
                    "--output-dir", str(self.run_dir)]
        argv = [python, "-m", "wsolbench", "run", "--quiet"]
        if self.resume:
            return [*argv, "--resume", str(self.run_dir)]
        for key, value in self.options().items():
            if key == "sets":
                argv += [arg for item in value for arg in ("--set", item)]
            else:
                argv += ["--" + key.replace("_", "-"), str(value)]
        return argv

    def config(self) -> Any:
        """The :class:`~wsolbench.config.RunConfig` that the cell's command line resolves to."""

        options = self.options()
        if self.source is not None:
            return config.rebase(self.source.config(), self.method, options["sets"])
        method, dataset, profile, sets = (options.pop(key) for key in ("method", "dataset", "profile", "sets"))
        return config.resolve(method, dataset, profile, options=options, sets=sets)

    def matches(self, patterns: Sequence[str]) -> bool:
        names = [self.key, self.dataset, self.name, self.method, f"{self.dataset}/{self.name}"]
        return not patterns or any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


@dataclass
class Suite:
    name: str
    path: Path
    profile: str
    seeds: list[int]
    output_dir: Path
    datasets: list[str]
    cells: list[Cell] = field(default_factory=list)
    slurm: dict[str, Any] = field(default_factory=dict)  #: the ``[slurm]`` table (see :mod:`wsolbench.runs.slurm`)


# -- reading a suite --------------------------------------------------------------
_SUITE_KEYS = ("name", "profile", "seeds", "output_dir", "datasets", "methods", "set")
_DATASET_KEYS = ("data_root", "set")
_RUN_KEYS = ("method", "set", "label", "datasets", "seeds", "weights_from")
#: the ``[slurm]`` table's keys (see :mod:`wsolbench.runs.slurm`)
SLURM_KEYS = ("partition", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "array_parallelism",
              "additional")


def _check_table(table: Any, where: str, known: Sequence[str]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise SuiteError(f"{where} must be a table")
    for key in table:
        if key not in known:
            raise UnknownNameError(f"key in {where}", key, known)
    return table


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SuiteError(f"{where} must be a list of strings, got {value!r}")
    return list(value)


def _seeds(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        raise SuiteError(f"{where} must be a non-empty list of integers, got {value!r}")
    return list(value)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SuiteError(f"{where} must be a non-empty string, got {value!r}")
    return value


def load_suite(
    path: str | Path,
    output_dir: str | Path | None = None,
    data_roots: dict[str, str] | None = None,
    extra_sets: Sequence[str] = (),
) -> Suite:
    """Read and check a suite file; ``output_dir``, ``data_roots`` and ``extra_sets`` come from the command line."""
    path = Path(path)
    doc = load_toml(path)
    _check_table(doc, path.name, ("suite", "datasets", "runs", "slurm"))
    head = _check_table(doc.get("suite", {}), "[suite]", _SUITE_KEYS)
    name = _string(head.get("name", path.stem), "suite.name")
    profile = _string(head.get("profile", "quick"), "suite.profile")
    if profile not in PROFILES:
        raise UnknownNameError("profile", profile, PROFILES)
    seeds = _seeds(head.get("seeds", [0]), "suite.seeds")
    datasets = _strings(head.get("datasets"), "suite.datasets") if "datasets" in head else []
    if not datasets:
        raise SuiteError("suite.datasets must name at least one dataset")
    suite_sets = _strings(head.get("set", []), "suite.set")
    out = Path(output_dir if output_dir is not None else head.get("output_dir", f"runs/{rundir.slug(name)}"))

    per_dataset = _check_table(doc.get("datasets", {}), "[datasets]", datasets)
    roots: dict[str, str | None] = {}
    dataset_sets: dict[str, list[str]] = {}
    for dataset in datasets:
        table = _check_table(per_dataset.get(dataset, {}), f"[datasets.{dataset}]", _DATASET_KEYS)
        roots[dataset] = _string(table["data_root"], f"datasets.{dataset}.data_root") if "data_root" in table else None
        dataset_sets[dataset] = _strings(table.get("set", []), f"datasets.{dataset}.set")
    for dataset, root in (data_roots or {}).items():
        if dataset not in datasets:
            raise UnknownNameError("dataset for --data-root", dataset, datasets)
        roots[dataset] = root

    entries: list[dict[str, Any]] = [{"method": m} for m in _strings(head.get("methods", []), "suite.methods")]
    runs = doc.get("runs", [])
    if not isinstance(runs, list):
        raise SuiteError("[[runs]] must be an array of tables")
    for i, entry in enumerate(runs):
        entry = _check_table(entry, f"[[runs]] #{i + 1}", _RUN_KEYS)
        if "method" not in entry:
            raise SuiteError(f"[[runs]] #{i + 1} names no method")
        entries.append(entry)
    if not entries:
        raise SuiteError("the suite runs nothing: give suite.methods or [[runs]] entries")

    suite = Suite(name, path, profile, list(seeds), out, datasets, slurm=_check_table(doc.get("slurm", {}), "[slurm]",
                                                                                     SLURM_KEYS))
    seen: dict[str, str] = {}
    by_name: dict[str, str] = {}  # label or directory name -> directory name
    sourced: list[tuple[str, str, str]] = []  # (where, directory name, weights_from)
    for i, entry in enumerate(entries):
        where = f"entry {i + 1} ({entry['method']})"
        method = _string(entry["method"], f"{where}: method")
        sets = _strings(entry.get("set", []), f"{where}: set")
        label = _string(entry["label"], f"{where}: label") if "label" in entry else None
        targets = _strings(entry["datasets"], f"{where}: datasets") if "datasets" in entry else datasets
        entry_seeds = _seeds(entry["seeds"], f"{where}: seeds") if "seeds" in entry else seeds
        for dataset in targets:
            if dataset not in datasets:
                raise UnknownNameError(f"dataset in {where}", dataset, datasets)
        dirname = rundir.slug(label) if label else rundir.slug("+".join([method, *sets]))
        if dirname in seen:
            raise SuiteError(f"{where} and {seen[dirname]} share the directory name {dirname!r}: give them labels")
        seen[dirname] = where
        by_name.update({dirname: dirname, **({label: dirname} if label else {})})
        weights_from = _string(entry["weights_from"], f"{where}: weights_from") if "weights_from" in entry else None
        if weights_from is not None:
            sourced.append((where, dirname, weights_from))
        for dataset in datasets:  # the suite's order, whatever the entry's
            if dataset not in targets:
                continue
            inherited = [] if weights_from is not None else suite_sets + dataset_sets[dataset]
            for seed in entry_seeds:
                suite.cells.append(
                    Cell(
                        name=dirname, method=method, dataset=dataset, seed=seed, profile=profile,
                        run_dir=out / rundir.slug(dataset) / dirname / f"seed-{seed}", data_root=roots[dataset],
                        sets=tuple(inherited + sets + list(extra_sets)), label=label,
                    )
                )
    suite.cells = _link_sources(suite.cells, sourced, by_name)
    suite.cells.sort(key=lambda c: datasets.index(c.dataset))
    return suite


def _link_sources(cells: list[Cell], sourced: list[tuple[str, str, str]], by_name: dict[str, str]) -> list[Cell]:
    """The cells with each ``weights_from`` entry's cells given their source: the named entry's cell of the same
    dataset and seed (which must exist and train)."""
    if not sourced:
        return cells
    trained = {(c.name, c.dataset, c.seed): c for c in cells}
    wanted = {}
    for where, dirname, name in sourced:
        if name not in by_name:
            raise UnknownNameError(f"weights_from of {where}", name, sorted(by_name))
        if by_name[name] in {d for _, d, _ in sourced}:
            raise SuiteError(f"{where}: weights_from names {name!r}, an entry that trains nothing itself")
        wanted[dirname] = by_name[name]
    linked = []
    for cell in cells:
        if cell.name in wanted:
            source = trained.get((wanted[cell.name], cell.dataset, cell.seed))
            if source is None:
                raise SuiteError(
                    f"{cell.key} takes its weights from {wanted[cell.name]!r}, which has no cell for dataset "
                    f"{cell.dataset!r} and seed {cell.seed}: give both entries the same datasets and seeds"
                )
            cell = dataclasses.replace(cell, source=source)
        linked.append(cell)
    return linked


def check_cells(cells: Sequence[Cell]) -> None:
    """Refuse, before anything runs, a grid with a cell whose settings do not resolve (:class:`SuiteError`).

    Each cell's command line is resolved as its run would resolve it (method
    and dataset names, every ``--set`` key and value, the checks of
    :func:`wsolbench.config.resolve`); the error names the cells of each
    problem in one paragraph. What only a run can find out (a missing data
    root, a crash) still fails its own cell alone.
    """
    problems: dict[str, list[str]] = {}
    for cell in cells:
        try:
            cell.config()
        except UserError as exc:
            problems.setdefault(str(exc).strip(), []).append(cell.key)
    if not problems:
        return
    parts = []
    for message, keys in problems.items():
        shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        parts.append(f"{shown}: {message}")
    bad = sum(len(keys) for keys in problems.values())
    listed = "; ".join(parts)
    raise SuiteError(
        f"the suite cannot start: the settings of {bad} of its {len(cells)} cells do not resolve. {listed}"
        f"{'' if listed.endswith(('.', '?', '!')) else '.'} Nothing was run: fix the suite file or the --set options."
    )


# -- running ----------------------------------------------------------------------
def _set_aside(run_dir: Path) -> Path:
    """Rename an incomplete run directory out of the way; returns its new path."""
    for k in range(1, 10_000):
        target = run_dir.with_name(f"{run_dir.name}.attempt-{k}")
        if not target.exists():
            run_dir.rename(target)
            return target
    raise UserError(f"too many earlier attempts beside {run_dir}")


def state(cell: Cell) -> str:
    """``complete``, ``running`` (locked by a live process), ``incomplete`` or ``new``."""
    if rundir.is_complete(cell.run_dir):
        return "complete"
    if cell.run_dir.exists():
        return "running" if rundir.lock_holder(cell.run_dir) else "incomplete"
    return "new"


def can_resume(cell: Cell) -> bool:
    """Whether the incomplete run in ``cell.run_dir`` can continue as this cell.

    It must hold a checkpoint of a finished epoch, a resumable status, and the
    settings the cell resolves to now (a suite edited since starts afresh).
    """

    run_dir = rundir.RunDir(cell.run_dir, read_only=True)
    try:
        if run_dir.read_manifest().get("status") not in RESUMABLE:
            return False
        if not (run_dir.path / rundir.LAST).is_file():
            return False
        return as_stored_json(cell.config().to_dict()) == run_dir.read_json(rundir.CONFIG)
    except (OSError, ValueError, AttributeError, UserError):
        return False


def launch_local(cell: Cell, log: Path, threads: int | None = None) -> int:
    """Run one cell in a fresh interpreter, its output in ``log``; returns the exit status.

    ``threads``: the run's CPU threads (``OMP_NUM_THREADS``), unless the
    environment sets them already.
    """
    env = None
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with open_log(cell, log) as stream:
        return subprocess.run(cell.command(), stdout=stream, stderr=subprocess.STDOUT, check=False,
                              env=env).returncode


def open_log(cell: Cell, log: str | Path) -> Any:
    """The cell's log opened for its run's output: appended to when the run resumes, else written afresh."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    return open(log, "a" if cell.resume else "w", encoding="utf-8")


@dataclass
class Outcome:
    cell: Cell
    status: str  #: ``completed``, ``skipped`` (complete before), ``failed``, ``busy`` (another process runs it)
    seconds: float = 0.0
    returncode: int | None = None
    message: str = ""
    log: Path | None = None


def _last_error(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.startswith("Error:")]
    return (errors or lines or [""])[-1]


def run_cell(cell: Cell, launch: Callable[[Cell, Path], int] = launch_local) -> Outcome:
    """Run one cell unless it is complete or running elsewhere."""
    todo = prepare_cell(cell)
    if isinstance(todo, Outcome):
        return todo
    log = log_path(todo)
    start = time.perf_counter()
    code = launch(todo, log)
    return finish_cell(todo, code, time.perf_counter() - start, log)


def prepare_cell(cell: Cell) -> Outcome | Cell:
    """What to do with a cell: its outcome if it must not run (complete, or being written), else the cell to launch.

    An incomplete run that :func:`can_resume` is launched with ``resume``; any
    other incomplete run is set aside first. A cell whose ``source`` is not
    complete fails without running.
    """
    now = state(cell)
    if now == "complete":
        return Outcome(cell, "skipped", message="already complete")
    if cell.source is not None and not rundir.is_complete(cell.source.run_dir):
        return Outcome(cell, "failed", message=f"its weights come from {cell.source.key}, which is not complete "
                                               f"(run that cell first: --only '{cell.source.key}')")
    if now == "running":
        return Outcome(cell, "busy", message=f"being written by {rundir.lock_holder(cell.run_dir)}")
    if now == "incomplete":
        if can_resume(cell):
            return dataclasses.replace(cell, resume=True)
        _set_aside(cell.run_dir)
    return dataclasses.replace(cell, resume=False)


def log_path(cell: Cell) -> Path:
    """Where the output of the cell's run goes: ``seed-<seed>.log`` beside its directory."""
    return cell.run_dir.with_name(f"{cell.run_dir.name}.log")


def finish_cell(cell: Cell, code: int | None, seconds: float, log: Path, message: str = "") -> Outcome:
    """The outcome of a cell whose run ended with exit status ``code`` (``None``: it never ran to an end)."""
    resumed = "resumed from its last finished epoch" if cell.resume else ""
    if code == 0 and rundir.is_complete(cell.run_dir):
        return Outcome(cell, "completed", seconds, code, resumed, log=log)
    message = message or _last_error(log) or (f"exit status {code}" if code else "the run ended without completing")
    return Outcome(cell, "failed", seconds, code, f"{resumed}: {message}" if resumed else message, log)


def run_suite(
    cells: Iterable[Cell],
    launch: Callable[[Cell, Path], int] = launch_local,
    on_start: Callable[[int, int, Cell], None] | None = None,
    on_done: Callable[[Outcome], None] | None = None,
    jobs: int = 1,
) -> list[Outcome]:
    """Run every cell, ``jobs`` at a time, past failures; returns one outcome per cell, in the cells' order.

    Cells that score another cell's weights (``source``) start after every
    cell that trains, each once its source has ended. The callbacks are never
    called concurrently; with ``jobs > 1`` another cell's ``on_start`` may come
    between a cell's ``on_start`` and ``on_done``.
    """
    if jobs < 1:
        raise UserError(f"jobs must be at least 1, got {jobs}")
    given = list(cells)
    order = sorted(range(len(given)), key=lambda i: given[i].source is not None)  # stable: training cells first
    cells = [given[i] for i in order]
    lock = threading.Lock()
    ended = {cell.key: threading.Event() for cell in cells}

    def one(i: int, cell: Cell) -> Outcome:
        if cell.source is not None and cell.source.key in ended:
            ended[cell.source.key].wait()  # started before this cell (training cells come first): no deadlock
        try:
            return _one(i, cell)
        finally:
            ended[cell.key].set()

    def _one(i: int, cell: Cell) -> Outcome:
        with lock:
            if on_start is not None:
                on_start(i, len(cells), cell)
        outcome = run_cell(cell, launch)
        with lock:
            if on_done is not None:
                on_done(outcome)
        return outcome

    if jobs == 1:
        outcomes = [one(i, cell) for i, cell in enumerate(cells)]
    else:
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="bench-cell") as pool:
            outcomes = list(pool.map(one, range(len(cells)), cells))
    by_position = dict(zip(order, outcomes))
    return [by_position[i] for i in range(len(given))]


def threads_per_job(jobs: int) -> int:
    """CPU threads for each of ``jobs`` runs sharing this machine's cores (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // jobs)


def bench_rows(cells: Sequence[Cell], runs: Any) -> list[str]:
    """The report's row labels in the suite's order, each run's CRF row right after it.

    ``runs`` is :attr:`wsolbench.runs.report.Collection.runs` for the cells' directories.
    """

    labels = set(runs["label"])
    plain = runs[~runs["label"].str.endswith(CRF_SUFFIX)]
    by_path = dict(zip(plain["path"], plain["label"]))
    rows: list[str] = []
    for cell in cells:
        label = by_path.get(str(cell.run_dir))
        if label is None:
            continue
        for name in (label, label + CRF_SUFFIX):
            if name in labels and name not in rows:
                rows.append(name)
    return rows
