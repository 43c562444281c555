"""The command line, end to end, in fresh interpreters like a user's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, run_cli

from wsolbench.cli import COMMANDS


def test_list_and_help_pages_do_not_import_torch():
    calls = [["list"], ["--help"], *([name, "--help"] for name in COMMANDS)]
    code = (
        "import sys; from wsolbench.cli import main\n"
        f"for argv in {calls!r}:\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "    assert 'torch' not in sys.modules, f'{argv} imported torch'\n"
        "assert 'timm' not in sys.modules\n"
        "print('OK-NO-TORCH')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "OK-NO-TORCH" in proc.stdout
    assert "cam-avg" in proc.stdout and "synthetic" in proc.stdout
    for name in COMMANDS:  # every help page was printed
        assert f"Usage: wsolbench {name}" in proc.stdout, name


def test_list_filters_with_globs():
    proc = run_cli("list", "methods", "cam-*")
    assert proc.returncode == 0
    assert "cam-avg" in proc.stdout and "datasets" not in proc.stdout


def test_unknown_method_exits_2_with_suggestion():
    proc = run_cli("run", "--method", "cam_avg")
    assert proc.returncode == 2
    assert "Did you mean 'cam-avg'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("run", "--method", "nope")
    assert proc.returncode == 2 and "Unknown method 'nope'" in proc.stderr


def test_bad_set_key_exits_2():
    proc = run_cli("run", "--method", "cam-avg", "--set", "train.lrr=1")
    assert proc.returncode == 2 and "Did you mean 'train.lr'" in proc.stderr


def test_show_config_prints_resolved_settings():
    proc = run_cli("run", "--method", "cam-avg", "--epochs", "3", "--show-config")
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert cfg["train"]["epochs"] == 3 and cfg["method"]["name"] == "cam-avg"


def _tiny_run(out: Path, name: str) -> dict:
    proc = run_cli("run", "--method", "cam-avg", "-q", "--output-dir", str(out), "--run-name", name, *TINY)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / name / "results.json").read_text())


def test_run_writes_the_run_directory_and_is_reproducible(tmp_path):
    first = _tiny_run(tmp_path, "a")
    run = tmp_path / "a"
    for name in ("config.json", "manifest.json", "metrics.jsonl", "results.json", "per_image.csv", "best.pt"):
        assert (run / name).is_file(), name
    assert not (run / "lock").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["seed"] == 0
    assert manifest["versions"]["torch"] and "wsolbench" in manifest["versions"]["plugins"]
    assert manifest["train_seconds"] > 0 and manifest["eval_seconds"] > 0
    for key in ("cl_error", "f1_pos", "f1_neg", "pxap"):
        assert 0 <= first[key] <= 100, key
    assert first["n_images"] == 8
    rows = (run / "per_image.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 8 and rows[0].startswith("id,label,pred,f1_pos,f1_neg")
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0]

    second = _tiny_run(tmp_path, "b")
    metrics = ("cl_error", "f1_pos", "f1_neg", "pxap", "dice_best")
    assert {k: first[k] for k in metrics} == {k: second[k] for k in metrics}


def test_runs_never_overwrite(tmp_path):
    _tiny_run(tmp_path, "same")
    proc = run_cli("run", "--method", "cam-avg", "-q", "--output-dir", str(tmp_path), "--run-name", "same", *TINY)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "same-2" / "results.json").is_file()


@pytest.mark.parametrize("args", [["--device", "tpu"], ["--epochs", "-1"], ["--profile", "fast"]])
def test_bad_options_exit_2(args):
    proc = run_cli("run", "--method", "cam-avg", *args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
