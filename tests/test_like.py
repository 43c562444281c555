"""``wsolbench run --like RUN_DIR``: the same settings again, the numbers side by side, the differing origins named."""

from __future__ import annotations

import dataclasses
import json

from test_report import cli
from test_runner import tiny

from wsolbench.runs import rundir
from wsolbench.runs.compare import compare, origin_differences
from wsolbench.training import runner


def test_like_on_a_finished_run_reports_identical_numbers_then_names_a_changed_thread_count(tmp_path, capsys):
    old = runner.run(tiny(tmp_path / "first", 2)).run_dir.path
    code, out, err = cli(capsys, "run", "--like", str(old), "--quiet")
    assert code == 0, err
    again = tmp_path / "runs" / "like" / old.name
    assert rundir.is_complete(again)
    recorded_cfg = rundir.RunDir(old).read_config()
    assert rundir.RunDir(again).read_config() == dataclasses.replace(recorded_cfg, output_dir="runs/like")
    first, second = (json.loads((p / rundir.RESULTS).read_text()) for p in (old, again))
    assert first["pxap"] == second["pxap"] and first["f1_pos"] == second["f1_pos"]  # what "identical" claims
    assert "identical: every test metric" in out and "not identical" not in out
    assert "runtime.torch_threads" not in out

    manifest = json.loads((old / rundir.MANIFEST).read_text())
    recorded = manifest["runtime"]["torch_threads"]
    manifest["runtime"]["torch_threads"] = recorded + 3
    (old / rundir.MANIFEST).write_text(json.dumps(manifest))
    code, out, err = cli(capsys, "run", "--like", str(old), "--quiet", "--run-name", "second")
    assert code == 0, err
    assert f"runtime.torch_threads: {recorded + 3} -> {recorded}" in out


def test_numbers_that_differ_are_marked_and_exit_with_status_1(tmp_path, capsys):
    old = runner.run(tiny(tmp_path / "first", 1)).run_dir.path
    results = json.loads((old / rundir.RESULTS).read_text())
    results["pxap"] += 1e-9  # a difference no rounded display would show
    (old / rundir.RESULTS).write_text(json.dumps(results))
    code, out, _ = cli(capsys, "run", "--like", str(old), "--quiet", "-o", str(tmp_path / "again"))
    assert code == 1
    assert "not identical: 1 of" in out and "differs" in out
    assert (tmp_path / "again" / old.name).is_dir()


def test_like_refuses_an_unfinished_run_and_other_settings(tmp_path, capsys):
    run = rundir.RunDir.create(tmp_path, "unfinished")
    run.write_manifest({"status": "running"})
    code, _, err = cli(capsys, "run", "--like", str(run.path))
    assert code == 2 and "not a completed run" in err
    code, _, err = cli(capsys, "run", "--like", str(run.path), "--seed", "3")
    assert code == 2 and "cannot be combined with --seed" in err
    code, _, err = cli(capsys, "run", "--like", str(run.path), "--resume", str(run.path))
    assert code == 2 and "give one of them" in err


def test_origin_differences_are_dotted_keys_and_absent_fields_count():
    old = {"runtime": {"torch_threads": 2, "cpu": "x"}, "versions": {"torch": "2.5", "hostname": "a"}, "device": "cpu"}
    new = {"runtime": {"torch_threads": 1, "cpu": "x"}, "versions": {"torch": "2.5", "hostname": "b"}, "device": "cpu",
           "data": {"sha256": "f"}}
    assert origin_differences(old, new) == [("runtime.torch_threads", 2, 1), ("data.sha256", None, "f")]


def test_compare_reads_two_run_directories(tmp_path):
    a = runner.run(tiny(tmp_path / "a", 1)).run_dir
    b = runner.run(tiny(tmp_path / "b", 1)).run_dir
    comparison = compare(a, b)
    assert comparison.identical and comparison.epochs == (1, 1)
    assert ("best_epoch", 0, 0) in comparison.rows
