"""Benchmark suites: the grid, skipping, failures, and the report of real runs."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, run_cli
from PIL import Image

from wsolbench.cli import main
from wsolbench.errors import UnknownNameError, UserError
from wsolbench.runs import report as rep
from wsolbench.runs import suite as bench
from wsolbench.runs.rundir import RunDir

#: TINY's settings as suite lines, without training (the grid checks bookkeeping, not learning)
TINY_SETS = [TINY[i + 1] for i in range(0, len(TINY), 2) if TINY[i] == "--set"] + ["train.epochs=0"]


def write_suite(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def in_process(cell: bench.Cell, log: Path) -> int:
    """A launcher that runs the cell's command line in this interpreter (no start-up cost)."""
    try:
        main(cell.command()[3:])  # drop "python -m wsolbench"
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_suite_grid_names_and_settings(tmp_path):
    suite_file = write_suite(tmp_path / "s.toml", """
[suite]
name = "demo"
seeds = [0, 3]
datasets = ["glas", "synthetic"]
methods = ["cam-avg"]
set = ["train.epochs=2"]

[datasets.glas]
data_root = "data/glas"
set = ["eval.crf=true"]

[[runs]]
method = "minmax"
set = ["method.u=0"]
datasets = ["glas"]

[[runs]]
method = "cam-avg"
label = "CAM (lr 0.1)"
set = ["train.lr=0.1"]

[[runs]]
method = "cam-max"
seeds = [5]
""")
    suite = bench.load_suite(suite_file, output_dir=tmp_path / "out", data_roots={"glas": "/d/glas"},
                             extra_sets=["eval.bins=10"])
    keys = [c.key for c in suite.cells]
    assert keys == [
        "glas/cam-avg/seed-0", "glas/cam-avg/seed-3", "glas/minmax+method.u-0/seed-0", "glas/minmax+method.u-0/seed-3",
        "glas/CAM-lr-0.1/seed-0", "glas/CAM-lr-0.1/seed-3", "glas/cam-max/seed-5",
        "synthetic/cam-avg/seed-0", "synthetic/cam-avg/seed-3", "synthetic/CAM-lr-0.1/seed-0",
        "synthetic/CAM-lr-0.1/seed-3", "synthetic/cam-max/seed-5",
    ]
    cell = suite.cells[4]
    assert cell.run_dir == tmp_path / "out" / "glas" / "CAM-lr-0.1" / "seed-0"
    assert cell.sets == ("train.epochs=2", "eval.crf=true", "train.lr=0.1", "eval.bins=10")
    argv = cell.command("py")
    assert argv[:4] == ["py", "-m", "wsolbench", "run"]
    assert argv[argv.index("--data-root") + 1] == "/d/glas"
    assert argv[-2:] == ["--set", 'label="CAM (lr 0.1)"']
    assert "--data-root" not in suite.cells[-1].command("py")
    assert suite.cells[-1].seed == 5 and "--seed 5" in " ".join(suite.cells[-1].command("py"))
    assert [c.key for c in suite.cells if c.matches(["synthetic/*/seed-3"])] == [
        "synthetic/cam-avg/seed-3", "synthetic/CAM-lr-0.1/seed-3"]
    assert len([c for c in suite.cells if c.matches(["minmax"])]) == 2


CELLS = [
    bench.Cell("cam-avg", "cam-avg", "synthetic", 0, "quick", Path("runs/s/synthetic/cam-avg/seed-0")),
    bench.Cell("CAM-lr-0.1", "cam-avg", "glas", 3, "paper", Path("/abs/out/glas/CAM-lr-0.1/seed-3"),
               data_root="/d/glas", sets=("train.epochs=2", "train.lr=0.1"), label='CAM "lr" 0.1 ±'),
    bench.Cell("minmax+method.u-0", "minmax", "cub5", 1, "paper", Path("o/cub5/minmax+method.u-0/seed-1"),
               data_root="data/CUB", sets=("method.u=0", "dataset.class_subset=[3, 5]")),
]


@pytest.mark.parametrize("cell", CELLS, ids=lambda cell: cell.key)
def test_a_cells_command_line_is_its_options_and_resolves_to_its_config(cell, capsys):
    from wsolbench.cli.run import run

    argv = cell.command("py")
    assert argv[:5] == ["py", "-m", "wsolbench", "run", "--quiet"]
    parsed = run.make_context("run", argv[4:]).params  # the real command's parser
    assert {key: parsed[key] for key in cell.options()} == {**cell.options(), "sets": tuple(cell.options()["sets"])}
    main([*argv[3:], "--show-config"])  # the real command's resolution
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(cell.config().to_dict()))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[suite]\ndatasets = ["a"]\nmethods = ["m"]\nseed = [0]\n', "Did you mean 'seeds'"),
        ('[suite]\nmethods = ["m"]\n', "at least one dataset"),
        ('[suite]\ndatasets = ["a"]\n', "runs nothing"),
        ('[suite]\ndatasets = ["a"]\nmethods = ["m"]\n[datasets.b]\ndata_root = "x"\n', "Unknown key in [datasets]"),
        ('[suite]\ndatasets = ["a"]\n[[runs]]\nmethod = "m"\n[[runs]]\nmethod = "m"\n', "give them labels"),
        ('[suite]\ndatasets = ["a"]\nmethods = ["m"]\nprofile = "fast"\n', "Unknown profile"),
        ('[suite]\ndatasets = ["a"]\nmethods = ["m"]\nseeds = 0\n', "list of integers"),
        ('[suite]\ndatasets = ["a"]\n[[runs]]\nmethod = "m"\nseeds = []\n', "seeds must be a non-empty list"),
    ],
)
def test_bad_suites_are_user_errors(tmp_path, body, message):
    with pytest.raises(bench.SuiteError if "Unknown" not in message and "Did" not in message else UnknownNameError,
                       match=message.replace("[", r"\[")):
        bench.load_suite(write_suite(tmp_path / "s.toml", body))


def test_complete_cells_are_skipped_incomplete_ones_set_aside(tmp_path):
    cell = bench.Cell("x", "cam-avg", "synthetic", 0, "quick", tmp_path / "synthetic" / "x" / "seed-0")
    calls = []

    def fake(c: bench.Cell, log: Path) -> int:
        calls.append(c.key)
        c.run_dir.mkdir(parents=True)
        (c.run_dir / "manifest.json").write_text(json.dumps({"status": "completed"}))
        (c.run_dir / "results.json").write_text("{}")
        return 0

    cell.run_dir.mkdir(parents=True)
    (cell.run_dir / "manifest.json").write_text(json.dumps({"status": "failed"}))
    assert bench.state(cell) == "incomplete"
    assert bench.run_cell(cell, fake).status == "completed"
    assert (cell.run_dir.parent / "seed-0.attempt-1" / "manifest.json").is_file()  # kept, out of the way
    assert bench.run_cell(cell, fake).status == "skipped" and calls == [cell.key]

    busy = bench.Cell("y", "cam-avg", "synthetic", 0, "quick", tmp_path / "y" / "seed-0")
    busy.run_dir.mkdir(parents=True)
    (busy.run_dir / "lock").write_text(f"{os.getpid()}\nhost\n")  # a lock file nobody holds
    assert bench.state(busy) == "incomplete"
    holder = RunDir(busy.run_dir)
    holder.acquire()  # a live writer holds the run's flock
    try:
        assert bench.run_cell(busy, fake).status == "busy" and calls == [cell.key]
    finally:
        holder.release()


def test_report_rows_follow_the_suite_with_crf_rows_after_their_run(tmp_path):
    cells = [bench.Cell(n, "m", "d", 0, "quick", tmp_path / n / "seed-0") for n in ("z", "a")]
    runs = pd.DataFrame({
        "path": [str(tmp_path / "a" / "seed-0"), str(tmp_path / "z" / "seed-0"), str(tmp_path / "z" / "seed-0")],
        "label": ["A", "Z", "Z + CRF"],
    })
    assert bench.bench_rows(cells, runs) == ["Z", "Z + CRF", "A"]


def test_launch_local_reports_a_failed_run(tmp_path):
    cell = bench.Cell("nope", "nope", "synthetic", 0, "quick", tmp_path / "synthetic" / "nope" / "seed-0")
    outcome = bench.run_cell(cell)  # a real subprocess; an unknown method fails before torch is imported
    assert outcome.status == "failed" and outcome.returncode == 2
    assert outcome.message.startswith("Error: Unknown method 'nope'")
    assert outcome.log == tmp_path / "synthetic" / "nope" / "seed-0.log"


# -- two labels x two seeds on the synthetic set, run for real (in this process) --
@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    suite_file = write_suite(root / "two.toml", f"""
[suite]
name = "two"
seeds = [0, 1]
datasets = ["synthetic"]
methods = ["cam-avg"]
set = {json.dumps(TINY_SETS + ["eval.pictures=3"])}

[[runs]]
method = "cam-avg"
label = "CAM-Avg at 0.4"
set = ["eval.threshold=0.4"]
""")
    suite = bench.load_suite(suite_file, output_dir=root / "out")
    outcomes = bench.run_suite(suite.cells, launch=in_process)
    return root, suite, outcomes


def test_the_grid_runs_and_a_second_pass_skips_it(grid):
    _, suite, outcomes = grid
    assert [o.status for o in outcomes] == ["completed"] * 4
    again = bench.run_suite(suite.cells, launch=lambda c, log: pytest.fail(f"{c.key} ran again"))
    assert [o.status for o in again] == ["skipped"] * 4


def test_report_of_the_grid_matches_the_runs(grid, tmp_path):
    root, suite, _ = grid
    results = {}
    for cell in suite.cells:
        data = json.loads((cell.run_dir / "results.json").read_text())
        results.setdefault(data["method_label"], []).append(data)
    assert sorted(results) == ["CAM-Avg at 0.4", "cam-avg"] and all(len(v) == 2 for v in results.values())
    assert results["cam-avg"][0]["f1_pos"] != results["CAM-Avg at 0.4"][0]["f1_pos"]
    summary = rep.summarize(rep.collect([root / "out"]).runs, ["cl_error", "f1_pos", "f1_neg", "pxap"])
    grid_cells = rep.cells(summary)
    for label, runs in results.items():
        for metric in ("f1_pos", "pxap"):
            values = np.array([r[metric] for r in runs])
            assert summary.at[(label, "synthetic"), f"{metric}_mean"] == pytest.approx(values.mean())
            assert summary.at[(label, "synthetic"), f"{metric}_std"] == pytest.approx(values.std(ddof=1))
            expected = f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"
            assert grid_cells.text[label][("synthetic", metric)] == expected
    back = pd.read_csv(io.StringIO(rep.to_csv(summary)))
    assert back.set_index("label").loc["cam-avg", "f1_neg_mean"] == pytest.approx(
        np.mean([r["f1_neg"] for r in results["cam-avg"]]), rel=1e-5)
    if shutil.which("pdflatex"):
        (tmp_path / "t.tex").write_text(rep.to_latex(summary))
        (tmp_path / "d.tex").write_text(
            "\\documentclass{article}\\usepackage{booktabs}\\begin{document}\\input{t.tex}\\end{document}\n")
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "d.tex"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-2000:]


def test_each_run_has_its_pictures(grid):
    _, suite, _ = grid
    for cell in suite.cells:
        with Image.open(cell.run_dir / "overlays.png") as im:
            assert im.size[1] == 3 * (160 + 14 + 4) + 4  # eval.pictures = 3 rows of 160-pixel tiles
        assert (cell.run_dir / "pr_curve.png").stat().st_size > 1000


def test_an_interrupted_cell_resumes_when_its_settings_are_unchanged(tmp_path):
    sets = tuple(TINY_SETS[:-1]) + ("train.epochs=2", "eval.pictures=0")
    cell = bench.Cell("cam-avg", "cam-avg", "synthetic", 0, "quick", tmp_path / "synthetic" / "cam-avg" / "seed-0",
                      sets=sets)
    assert bench.run_cell(cell, in_process).status == "completed"
    expected = json.loads((cell.run_dir / "results.json").read_text())
    # as a kill after epoch 1 of 2 leaves it: no results, status "running", epoch 1's checkpoint
    manifest = json.loads((cell.run_dir / "manifest.json").read_text())
    (cell.run_dir / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    (cell.run_dir / "results.json").unlink()
    assert bench.state(cell) == "incomplete" and bench.can_resume(cell)
    commands = []

    def recording(c: bench.Cell, log: Path) -> int:
        commands.append(c.command("py"))
        return in_process(c, log)

    outcome = bench.run_cell(cell, recording)
    assert outcome.status == "completed" and "resumed" in outcome.message
    assert commands == [["py", "-m", "wsolbench", "run", "--quiet", "--resume", str(cell.run_dir)]]
    assert not list(cell.run_dir.parent.glob("*.attempt-*"))  # continued in place, nothing set aside
    again = json.loads((cell.run_dir / "results.json").read_text())
    assert {k: again[k] for k in ("f1_pos", "pxap", "cl_error")} == {k: expected[k] for k in ("f1_pos", "pxap",
                                                                                              "cl_error")}
    # the suite changed since: the old run is set aside and the cell starts afresh
    (cell.run_dir / "manifest.json").write_text(json.dumps({**manifest, "status": "failed"}))
    edited = dataclasses.replace(cell, sets=(*sets, "eval.threshold=0.4"))
    assert not bench.can_resume(edited)
    commands.clear()
    assert bench.run_cell(edited, recording).status == "completed"
    assert "--resume" not in commands[0] and (cell.run_dir.parent / "seed-0.attempt-1").is_dir()


def test_cells_run_several_at_a_time_in_order_with_their_threads(tmp_path, monkeypatch):
    cells = [bench.Cell(f"c{i}", "cam-avg", "synthetic", 0, "quick", tmp_path / f"c{i}" / "seed-0") for i in range(5)]
    running, most, lock = [0], [0], threading.Lock()

    def slow(c: bench.Cell, log: Path) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return 3

    events = []
    outcomes = bench.run_suite(cells, slow, on_start=lambda i, n, c: events.append(("start", c.name)),
                               on_done=lambda o: events.append(("done", o.cell.name)), jobs=2)
    assert most[0] == 2  # two at a time, never more
    assert [o.cell.name for o in outcomes] == [c.name for c in cells]  # the cells' order, whatever the finish order
    assert all(o.status == "failed" and o.returncode == 3 for o in outcomes)
    assert sorted(events) == sorted([("start", c.name) for c in cells] + [("done", c.name) for c in cells])
    with pytest.raises(UserError):
        bench.run_suite(cells, slow, jobs=0)
    seen = {}

    def fake_run(argv, **kwargs):
        seen.update(kwargs.get("env") or {})
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    bench.launch_local(cells[0], tmp_path / "log", threads=1)
    assert seen["OMP_NUM_THREADS"] == "1"
    assert bench.threads_per_job(1) >= bench.threads_per_job(2) >= 1 and bench.threads_per_job(10_000) == 1


def test_bench_command_continues_past_failures_and_reports(grid, tmp_path):
    root, suite, _ = grid
    out = tmp_path / "out"
    shutil.copytree(suite.cells[0].run_dir, out / "synthetic" / "cam-avg" / "seed-0")
    suite_file = write_suite(tmp_path / "s.toml", f"""
[suite]
seeds = [0]
datasets = ["synthetic"]
methods = ["cam-avg"]
output_dir = "{out}"

[[runs]]                 # resolves, then fails when its run builds the dataset
method = "cam-max"
label = "nope"
set = ["dataset.classes=1"]
""")
    proc = run_cli("bench", str(suite_file), "--dry-run")
    assert proc.returncode == 0
    assert "synthetic/nope/seed-0" in proc.stdout and "complete" in proc.stdout and "new" in proc.stdout
    proc = run_cli("bench", str(suite_file))
    assert proc.returncode == 1
    assert "1 already complete, 1 failed" in proc.stderr
    assert "dataset.classes must be at least 2" in proc.stderr
    first = json.loads((suite.cells[0].run_dir / "results.json").read_text())
    assert "cam-avg" in proc.stdout and f"{first['f1_pos']:.2f}" in proc.stdout  # the report table
    proc = run_cli("bench", str(suite_file), "--jobs", "2")
    assert proc.returncode == 1 and "2 cells at a time" in proc.stderr
    assert "synthetic/nope/seed-0 (cam-max) failed" in proc.stderr and "1 already complete, 1 failed" in proc.stderr
    proc = run_cli("bench", str(suite_file), "--jobs", "2", "--launcher", "slurm")
    assert proc.returncode == 2 and "--jobs is for the local launcher" in proc.stderr


@pytest.mark.parametrize("suite_file", sorted((Path(__file__).parents[1] / "benchmarks").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_shipped_suite_resolves_cell_by_cell(suite_file):
    """Each cell of the suites in benchmarks/ is a valid run configuration (names, keys, values)."""
    from wsolbench import config

    # without the crf extra, eval.crf=true is refused at resolve time; every other key is still checked
    no_crf = ["eval.crf=false"] if importlib.util.find_spec("pydensecrf") is None else []
    suite = bench.load_suite(suite_file)
    assert suite.cells
    for cell in suite.cells:
        cfg = config.resolve(cell.method, cell.dataset, cell.profile, sets=[*cell.sets, *no_crf])
        assert cfg.method == cell.method and cfg.dataset == cell.dataset


def test_bench_refuses_a_bad_set_or_suite_before_any_cell_runs(tmp_path, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(bench, "launch_local", lambda cell, log, threads=None: started.append(cell) or 0)
    suite_file = write_suite(tmp_path / "s.toml", f"""
[suite]
seeds = [0, 1]
datasets = ["synthetic"]
methods = ["cam-avg", "cam-max"]
set = {json.dumps(TINY_SETS)}
output_dir = "{tmp_path / 'out'}"

[[runs]]
method = "minmax"
set = ["method.no_such_parameter=1"]
""")

    def bench_cli(*args: str) -> tuple[int, str]:
        try:
            main(["bench", str(suite_file), *args])
        except SystemExit as exc:
            return int(exc.code or 0), capsys.readouterr().err
        return 0, capsys.readouterr().err

    code, err = bench_cli("--set", "train.lrr=0.1", "--only", "cam-avg")
    assert code == 2 and started == [] and not (tmp_path / "out").exists()
    text = " ".join(err.split())
    assert "the settings of 6 of its 6 cells do not resolve" in text and "Nothing was run" in text
    assert "synthetic/cam-avg/seed-0, synthetic/cam-avg/seed-1, synthetic/cam-max/seed-0 and 1 more: " in text
    assert "'train.lrr'. Did you mean 'train.lr'" in text and "no_such_parameter" in text
    code, err = bench_cli("--dry-run")  # the suite's own minmax entry names an unknown parameter
    text = " ".join(err.split())
    assert code == 2 and "2 of its 6 cells" in text and "synthetic/minmax+method.no_such_parameter-1/seed-0" in text
    assert "no_such_parameter" in text and started == []


# -- cells that score another cell's weights (weights_from) -------------------------
def test_weights_from_cells_score_their_sources_best_checkpoint_without_training(grid, tmp_path):
    root, _, _ = grid
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    suite_file = write_suite(tmp_path / "s.toml", f"""
[suite]
seeds = [0, 1]
datasets = ["synthetic"]
set = {json.dumps(TINY_SETS + ["eval.pictures=3"])}

[[runs]]
method = "posthoc"
label = "Grad-CAM++ on CAM"
set = ["method.cam=gradcam++"]
weights_from = "cam-avg"

[[runs]]
method = "cam-avg"
""")
    suite = bench.load_suite(suite_file, output_dir=out)
    scoring = [c for c in suite.cells if c.source is not None]
    assert [(c.key, c.source.key) for c in scoring] == [
        ("synthetic/Grad-CAM++-on-CAM/seed-0", "synthetic/cam-avg/seed-0"),
        ("synthetic/Grad-CAM++-on-CAM/seed-1", "synthetic/cam-avg/seed-1")]
    argv = scoring[0].command("py")
    assert argv[:6] == ["py", "-m", "wsolbench", "evaluate-run", str(scoring[0].source.run_dir), "--quiet"]
    assert argv[argv.index("--method") + 1] == "posthoc" and argv[-2:] == ["--output-dir", str(scoring[0].run_dir)]
    assert "model.backbone" not in " ".join(argv)  # the network is the source's
    cfg = scoring[0].config()
    assert (cfg.method, cfg.method_params["cam"], cfg.label) == ("posthoc", "gradcam++", "Grad-CAM++ on CAM")
    assert cfg.model.backbone == scoring[0].source.config().model.backbone

    started = []
    outcomes = bench.run_suite(suite.cells, lambda c, log: started.append(c.key) or in_process(c, log), jobs=2)
    assert [o.status for o in outcomes] == ["completed", "completed", "skipped", "skipped"]  # the file's order
    assert sorted(started) == [c.key for c in scoring]  # the trained cells were complete: nothing trained
    for cell in scoring:
        results = json.loads((cell.run_dir / "results.json").read_text())
        manifest = json.loads((cell.run_dir / "manifest.json").read_text())
        source = json.loads((cell.source.run_dir / "results.json").read_text())
        assert (results["method"], results["method_label"], results["seed"]) == ("posthoc", cfg.label, cell.seed)
        assert results["cl_error"] == source["cl_error"]  # the source's classifier, unchanged
        assert results["pxap"] != source["pxap"]  # Grad-CAM++'s maps, not CAM's
        assert manifest["status"] == "completed" and manifest["evaluated"]["run"] == str(cell.source.run_dir)
        assert manifest["evaluated"]["checkpoint"] == "best.pt" and not (cell.run_dir / "best.pt").exists()
    collected = rep.collect([out]).runs
    rows = collected[collected["label"] == cfg.label]
    assert sorted(rows["seed"]) == [0, 1] and rows["pxap"].tolist() == [
        json.loads((c.run_dir / "results.json").read_text())["pxap"] for c in sorted(scoring, key=lambda c: c.seed)]


def test_weights_from_cells_wait_for_their_source_and_fail_without_it(tmp_path):
    suite_file = write_suite(tmp_path / "s.toml", """
[suite]
datasets = ["synthetic"]
[[runs]]
method = "posthoc"
label = "p"
weights_from = "trained"
[[runs]]
method = "cam-avg"
label = "trained"
[[runs]]
method = "cam-max"
""")
    cells = bench.load_suite(suite_file, output_dir=tmp_path / "out").cells
    order = []

    def fake(c: bench.Cell, log: Path) -> int:
        order.append(c.name)
        if c.name == "trained":
            time.sleep(0.3)  # the scoring cell must wait for it, not start beside it
            c.run_dir.mkdir(parents=True)
            (c.run_dir / "manifest.json").write_text(json.dumps({"status": "completed"}))
            (c.run_dir / "results.json").write_text("{}")
        return 3 if c.name == "cam-max" else 0

    outcomes = bench.run_suite(cells, fake, jobs=3)
    assert order.index("p") > order.index("trained")
    assert [o.cell.name for o in outcomes] == ["p", "trained", "cam-max"]
    assert [o.status for o in outcomes] == ["failed", "completed", "failed"]  # p: the fake wrote nothing
    shutil.rmtree(tmp_path / "out")
    alone = bench.run_suite([cells[0]], lambda c, log: pytest.fail("ran without its source"))
    assert alone[0].status == "failed" and "synthetic/trained/seed-0, which is not complete" in alone[0].message


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        ('[[runs]]\nmethod = "posthoc"\nweights_from = "nope"\n[[runs]]\nmethod = "cam-avg"\n', "Unknown weights_from"),
        ('[[runs]]\nmethod = "posthoc"\nlabel = "a"\nweights_from = "b"\n'
         '[[runs]]\nmethod = "posthoc"\nlabel = "b"\nweights_from = "c"\n[[runs]]\nmethod = "cam-avg"\nlabel = "c"\n',
         "trains nothing itself"),
        ('[[runs]]\nmethod = "posthoc"\nseeds = [4]\nweights_from = "cam-avg"\n[[runs]]\nmethod = "cam-avg"\n',
         "no cell for dataset 'synthetic' and seed 4"),
    ],
)
def test_bad_weights_from_is_a_user_error(tmp_path, runs, message):
    with pytest.raises(UserError, match=message):
        bench.load_suite(write_suite(tmp_path / "s.toml", '[suite]\ndatasets = ["synthetic"]\n' + runs))
