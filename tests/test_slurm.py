"""``bench --launcher slurm``: the job settings, the clear errors, and a suite through submitit's local executor."""

from __future__ import annotations

import json
import sys
from dataclasses import fields

import pytest
from test_bench import TINY_SETS, write_suite

from wsolbench.cli import main
from wsolbench.errors import ConfigError, UnknownNameError, UserError
from wsolbench.runs import slurm, suite


def test_options_from_the_suite_table_and_the_command_line():
    assert tuple(f.name for f in fields(slurm.SlurmOptions)) == suite.SLURM_KEYS
    options = slurm.SlurmOptions.from_tables(
        {"partition": "gpu", "gpus_per_node": 4, "additional": {"account": "lab"}},
        {"partition": "long", "gpus_per_node": None, "timeout_min": 90},
    )
    params = options.executor_parameters("wsolbench-x")
    assert params == {
        "name": "wsolbench-x", "timeout_min": 90, "gpus_per_node": 4, "tasks_per_node": 1, "nodes": 1,
        "slurm_partition": "long", "slurm_additional_parameters": {"account": "lab"},
    }
    with pytest.raises(UnknownNameError, match="Did you mean 'partition'"):
        slurm.SlurmOptions.from_tables({"partitoin": "gpu"})
    with pytest.raises(ConfigError, match="gpus_per_node"):
        slurm.SlurmOptions.from_tables({"gpus_per_node": "two"})


def test_a_job_with_several_gpus_runs_the_cell_with_torchrun(tmp_path):
    cell = suite.Cell("cam-avg", "cam-avg", "synthetic", 0, "quick", tmp_path / "seed-0")
    assert slurm.job_command(cell, 1, "py") == cell.command("py")
    argv = slurm.job_command(cell, 4, "py")
    assert argv[:5] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert argv[5:] == cell.command("py")[1:]


def test_launcher_errors_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(slurm.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="sbatch.*not on this machine's PATH"):
        slurm.make_executor(tmp_path, "slurm")
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if it were not installed
    with pytest.raises(UserError, match=r"pip install 'wsolbench\[slurm\]'"):
        slurm.make_executor(tmp_path, "slurm")


def test_suite_runs_as_jobs_through_submitits_local_executor(tmp_path, capsys):
    suite_file = write_suite(tmp_path / "jobs.toml", f"""
[suite]
seeds = [0]
datasets = ["synthetic"]
methods = ["cam-avg"]
output_dir = "{tmp_path / 'out'}"
set = {json.dumps(TINY_SETS)}

[[runs]]                 # resolves, then fails when its job builds the dataset
method = "cam-max"
label = "nope"
set = ["dataset.classes=1"]

[slurm]
gpus_per_node = 0
timeout_min = 10
""")
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", str(suite_file), "--launcher", "submitit-local"])
    assert exit_info.value.code == 1  # the bad cell failed, the other cell did not stop
    printed = capsys.readouterr()
    assert "2 job(s) submitted (submitit-local)" in printed.err
    assert "dataset.classes must be at least 2" in printed.err
    run = tmp_path / "out" / "synthetic" / "cam-avg" / "seed-0"
    results = json.loads((run / "results.json").read_text())
    assert results["n_images"] == 8 and results["method"] == "cam-avg"
    assert "--run-name seed-0" in json.loads((run / "manifest.json").read_text())["command"]
    assert any((tmp_path / "out" / ".submitit").iterdir())  # submitit's job files
    assert f"{results['f1_pos']:.2f}" in printed.out  # the report of the finished cell

    main(["bench", str(suite_file), "--launcher", "submitit-local", "--only", "cam-avg"])
    assert "0 job(s) submitted" in capsys.readouterr().err  # complete: skipped, nothing submitted
