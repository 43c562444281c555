"""Suites on a cluster: ``wsolbench bench SUITE.toml --launcher slurm`` makes each cell a Slurm job.

The jobs are submitted through submitit (the ``slurm`` extra: ``pip install
'wsolbench[slurm]'``) as one job array, from a machine where ``sbatch`` works.
Each job runs the cell's ``wsolbench run`` command line, as the local launcher
does, with the same Python and the same paths: the environment, the suite's
output folder and the data must be visible from the nodes (a shared file
system). ``bench`` then waits for the jobs and reports as usual. Cells already
complete are skipped, so after an interruption the same command submits only
what is missing; stopping ``bench`` while it waits does not cancel the jobs
(``scancel`` does).

Settings come from the suite's ``[slurm]`` table, command-line options win::

    [slurm]
    partition = "gpu"
    gpus_per_node = 1          # more than 1: the cell runs on that many GPUs with torchrun
    cpus_per_task = 8
    mem_gb = 32
    timeout_min = 1440
    array_parallelism = 16     # at most this many jobs at a time
    additional = { account = "my-project", qos = "normal" }   # any other sbatch option

submitit's own files (job scripts, pickles, Slurm logs) go to
``<output_dir>/.submitit``; each run's output goes, as with the local launcher,
to ``seed-<seed>.log`` beside its directory. ``--launcher submitit-local``
sends the same jobs to submitit's local executor instead (processes on this
machine), to try a suite's submission without a cluster.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from wsolbench.errors import ConfigError, UnknownNameError, UserError
from wsolbench.runs.suite import (
    Cell,
    Outcome,
    finish_cell,
    log_path,
    open_log,
    prepare_cell,
)

#: ``--launcher`` value -> submitit cluster
CLUSTERS = {"slurm": "slurm", "submitit-local": "local"}
#: seconds between two looks at the jobs' states (Slurm's accounting is asked at most this often)
POLL_SECONDS = {"slurm": 30.0, "submitit-local": 1.0}


@dataclass
class SlurmOptions:
    """One job's resources (see the module docstring)."""

    partition: str | None = None
    gpus_per_node: int = 1
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    timeout_min: int = 24 * 60
    array_parallelism: int | None = None
    additional: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_tables(cls, *tables: dict[str, Any]) -> SlurmOptions:
        """Options from ``[slurm]``-shaped tables, later ones winning (``None`` values are ignored)."""
        known = [f.name for f in fields(cls)]
        merged: dict[str, Any] = {}
        for table in tables:
            for key, value in table.items():
                if key not in known:
                    raise UnknownNameError("key in [slurm]", key, known)
                if value is not None:
                    merged[key] = value
        options = cls(**merged)
        options.check()
        return options

    def check(self) -> None:
        problems = []
        for key in ("gpus_per_node", "cpus_per_task", "timeout_min", "array_parallelism"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                problems.append(f"slurm.{key} must be a whole number >= 0, not {value!r}")
        if self.mem_gb is not None and (not isinstance(self.mem_gb, (int, float)) or self.mem_gb <= 0):
            problems.append(f"slurm.mem_gb must be a number > 0, not {self.mem_gb!r}")
        if self.partition is not None and not isinstance(self.partition, str):
            problems.append(f"slurm.partition must be a string, not {self.partition!r}")
        if not isinstance(self.additional, dict):
            problems.append(f"slurm.additional must be a table of sbatch options, not {self.additional!r}")
        if problems:
            raise ConfigError("; ".join(problems))

    def executor_parameters(self, name: str) -> dict[str, Any]:
        """The keyword arguments of submitit's ``AutoExecutor.update_parameters``."""
        params: dict[str, Any] = {
            "name": name,
            "timeout_min": self.timeout_min,
            "gpus_per_node": self.gpus_per_node,
            "tasks_per_node": 1,  # one torchrun (or one process) per job; it starts the GPU processes
            "nodes": 1,
        }
        if self.cpus_per_task is not None:
            params["cpus_per_task"] = self.cpus_per_task
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.partition is not None:
            params["slurm_partition"] = self.partition
        if self.array_parallelism is not None:
            params["slurm_array_parallelism"] = self.array_parallelism
        if self.additional:
            params["slurm_additional_parameters"] = dict(self.additional)
        return params


def job_command(cell: Cell, processes: int, python: str | None = None) -> list[str]:
    """The cell's command line; with several GPUs, started by torchrun on one node."""
    argv = cell.command(python or sys.executable)
    if processes <= 1:
        return argv
    return [argv[0], "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *argv[1:]]


def run_job(cell: Cell, log: str, processes: int) -> int:
    """What a job does: run the cell, its output in ``log``; returns the exit status."""
    with open_log(cell, log) as stream:
        return subprocess.run(job_command(cell, processes), stdout=stream, stderr=subprocess.STDOUT,
                              check=False).returncode


def make_executor(folder: Path, launcher: str) -> Any:
    """submitit's executor for ``launcher`` (``slurm`` or ``submitit-local``), with clear errors."""
    try:
        import submitit
    except ImportError as exc:
        raise UserError(
            f"--launcher {launcher} needs submitit: pip install 'wsolbench[slurm]' (or pip install submitit)"
        ) from exc
    if launcher not in CLUSTERS:
        raise UnknownNameError("launcher", launcher, ["local", *CLUSTERS])
    if launcher == "slurm" and shutil.which("sbatch") is None:
        raise UserError(
            "--launcher slurm submits jobs with sbatch, which is not on this machine's PATH: run bench on a "
            "machine that submits Slurm jobs (a login node), or use the default --launcher local"
        )
    return submitit.AutoExecutor(folder=str(folder / "%j"), cluster=CLUSTERS[launcher])


def run_suite_as_jobs(
    cells: Sequence[Cell],
    options: SlurmOptions,
    folder: Path,
    launcher: str = "slurm",
    name: str = "wsolbench",
    on_submitted: Callable[[int, int], None] | None = None,
    on_done: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Submit every cell that must run as one job array, wait for them; one outcome per cell, in order."""
    import submitit

    executor = make_executor(folder, launcher)
    executor.update_parameters(**options.executor_parameters(name))
    outcomes: dict[int, Outcome] = {}
    todo: list[tuple[int, Cell, Path]] = []
    for i, cell in enumerate(cells):
        planned = prepare_cell(cell)
        if isinstance(planned, Outcome):
            outcomes[i] = planned
            if on_done is not None:
                on_done(planned)
        else:
            todo.append((i, planned, log_path(planned)))
    jobs: list[Any] = []
    if todo:
        try:
            with executor.batch():
                for _, cell, log in todo:
                    jobs.append(executor.submit(run_job, cell, str(log), options.gpus_per_node))
        except (subprocess.CalledProcessError, OSError, RuntimeError) as exc:
            raise UserError(f"the jobs could not be submitted: {exc}") from exc
    if on_submitted is not None:
        on_submitted(len(jobs), len(cells))
    start = time.perf_counter()
    position = {id(job): k for k, job in enumerate(jobs)}
    for job in submitit.helpers.as_completed(jobs, poll_frequency=POLL_SECONDS[launcher]):
        i, cell, log = todo[position[id(job)]]
        try:
            code, message = job.result(), ""
        except Exception as exc:  # noqa: BLE001 - a job that died (time limit, node failure, ...)
            code, message = None, f"job {job.job_id}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
        outcomes[i] = finish_cell(cell, code, time.perf_counter() - start, log, message)
        outcomes[i].message = outcomes[i].message or f"job {job.job_id}"
        if on_done is not None:
            on_done(outcomes[i])
    return [outcomes[i] for i in range(len(cells))]
