"""Reports from run directories: statistics, best cells, skipped runs and every output format."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wsolbench.runs import report as rep


def fake_run(root: Path, name: str, label: str, dataset: str, seed: int, status: str = "completed",
             finished: str = "2025-01-01T00:00:00+00:00", **results) -> Path:
    """A run directory as the engine writes it, with chosen numbers."""
    path = root / name
    path.mkdir(parents=True)
    manifest = {"schema_version": 1, "status": status, "finished": finished,
                "error": None if status == "completed" else "RuntimeError: boom",
                "versions": {"plugins": {"wsolbench": "0.1.0"}}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    body = {"schema_version": 1, "method": label.split()[0], "method_label": label, "dataset": dataset,
            "seed": seed, "n_images": 8, **results}
    (path / "results.json").write_text(json.dumps(body))
    return path


#: (label, dataset, seed) -> cl_error, f1_pos, pxap
VALUES = {
    ("cam-avg", "glas", 0): (10.0, 60.0, 50.0),
    ("cam-avg", "glas", 1): (20.0, 64.0, 54.0),
    ("minmax (u=4)", "glas", 0): (5.0, 70.0, 40.0),
    ("minmax (u=4)", "glas", 1): (15.0, 74.0, 48.0),
    ("cam-avg", "cub5", 0): (30.0, 40.0, 30.0),
    ("minmax (u=4)", "cub5", 0): (35.0, 40.0, 20.0),
}


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    for i, ((label, dataset, seed), (err, f1, pxap)) in enumerate(VALUES.items()):
        fake_run(root / dataset, f"r{i}", label, dataset, seed, cl_error=err, f1_pos=f1, f1_neg=100 - f1, pxap=pxap,
                 dice_best=f1 + 1, iou_best=f1 / 2, threshold_best=0.25 + seed / 10)
    return root


def test_summary_is_mean_and_sample_std_of_the_runs(runs_root):
    collection = rep.collect([runs_root])
    assert collection.skipped == [] and len(collection.runs) == len(VALUES)
    summary = rep.summarize(collection.runs, rep.METRICS)
    for label in ("cam-avg", "minmax (u=4)"):
        for dataset in ("glas", "cub5"):
            rows = np.array([v for k, v in VALUES.items() if k[:2] == (label, dataset)])
            assert summary.at[(label, dataset), "n_runs"] == len(rows)
            assert summary.at[(label, dataset), "cl_error_mean"] == pytest.approx(rows[:, 0].mean())
            assert summary.at[(label, dataset), "pxap_mean"] == pytest.approx(rows[:, 2].mean())
            std = summary.at[(label, dataset), "f1_pos_std"]
            if len(rows) > 1:
                assert std == pytest.approx(np.std(rows[:, 1], ddof=1))
            else:
                assert np.isnan(std)


def test_cells_show_mean_pm_std_and_bold_the_best(runs_root):
    summary = rep.summarize(rep.collect([runs_root]).runs, ["cl_error", "f1_pos", "pxap", "threshold_best"],
                            datasets=["glas", "cub5"])
    grid = rep.cells(summary)
    assert grid.columns[0] == ("glas", "cl_error")  # the order asked for
    assert grid.text["cam-avg"][("glas", "cl_error")] == "15.00 ± 7.07"
    assert grid.text["cam-avg"][("cub5", "f1_pos")] == "40.00"  # one seed: the mean only
    assert ("glas", "cl_error") in grid.best["minmax (u=4)"]  # 10 < 15: lowest error wins
    assert ("glas", "f1_pos") in grid.best["minmax (u=4)"]  # 72 > 62
    assert ("glas", "pxap") in grid.best["cam-avg"]  # 52 > 44
    assert ("cub5", "f1_pos") in grid.best["cam-avg"] and ("cub5", "f1_pos") in grid.best["minmax (u=4)"]  # a tie
    assert not any(("glas", "threshold_best") in b for b in grid.best.values())  # a setting, not a score
    markdown = rep.to_markdown(summary)
    assert "| minmax (u=4) | **10.00 ± 7.07** | **72.00 ± 2.83** |" in markdown.replace("  ", " ")


def test_not_applicable_metric_shows_a_dash_and_is_never_best(tmp_path):
    fake_run(tmp_path, "a", "allones", "glas", 0, cl_error=None, f1_pos=66.0, f1_neg=0.0, pxap=30.0)
    fake_run(tmp_path, "b", "cam-avg", "glas", 0, cl_error=1.25, f1_pos=60.0, f1_neg=20.0, pxap=40.0)
    grid = rep.cells(rep.summarize(rep.collect([tmp_path]).runs))
    assert grid.text["allones"][("glas", "cl_error")] == "-"
    assert ("glas", "cl_error") in grid.best["cam-avg"]


def test_incomplete_or_unreadable_runs_are_skipped_with_the_reason(tmp_path):
    fake_run(tmp_path, "good", "cam-avg", "glas", 0, cl_error=1.0, f1_pos=50.0, f1_neg=50.0, pxap=50.0)
    fake_run(tmp_path, "failed", "cam-avg", "glas", 1, status="failed", cl_error=0.0)
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / "manifest.json").write_text(json.dumps({"status": "running"}))
    fake_run(tmp_path, "garbled", "cam-avg", "glas", 2).joinpath("results.json").write_text("{not json")
    fake_run(tmp_path, "future", "cam-avg", "glas", 3, schema_version=99)
    fake_run(tmp_path, "nomanifest", "cam-avg", "glas", 4).joinpath("manifest.json").unlink()
    (tmp_path / "empty").mkdir()
    collection = rep.collect([tmp_path, tmp_path / "empty", tmp_path / "absent"])
    reasons = {Path(s.path).name: s.reason for s in collection.skipped}
    assert list(collection.runs["path"]) == [str(tmp_path / "good")]
    assert reasons["failed"] == "status 'failed': RuntimeError: boom"
    assert reasons["running"] == "status 'running'"
    assert reasons["garbled"].startswith("results.json is unreadable")
    assert "newer wsolbench" in reasons["future"]
    assert reasons["nomanifest"] == "no manifest.json"
    assert reasons["empty"].startswith("no run directory")
    assert reasons["absent"] == "does not exist"


def test_a_rerun_replaces_the_older_run_of_the_same_seed(tmp_path):
    fake_run(tmp_path, "old", "cam-avg", "glas", 0, finished="2025-01-01T00:00:00+00:00", f1_pos=10.0,
             crf={"f1_pos": 11.0})
    fake_run(tmp_path, "new", "cam-avg", "glas", 0, finished="2025-02-01T00:00:00+00:00", f1_pos=90.0)
    collection = rep.collect([tmp_path])
    assert list(collection.runs["f1_pos"]) == [90.0]  # the old run's CRF row goes with it
    assert [Path(s.path).name for s in collection.skipped] == ["old"]


def test_crf_scores_become_their_own_row(tmp_path):
    crf = {"f1_pos": 70.0, "f1_neg": 30.0, "pxap": 45.0, "cl_error": 99.0}
    fake_run(tmp_path, "a", "cam-avg", "glas", 0, cl_error=2.0, f1_pos=60.0, f1_neg=40.0, pxap=50.0, crf=crf)
    runs = rep.collect([tmp_path]).runs.set_index("label")
    assert list(runs.index) == ["cam-avg", "cam-avg + CRF"]
    assert runs.at["cam-avg + CRF", "f1_pos"] == 70.0 and runs.at["cam-avg + CRF", "pxap"] == 45.0
    assert runs.at["cam-avg + CRF", "cl_error"] == 2.0  # the classes are the run's


def test_csv_reads_back_with_pandas(runs_root):
    summary = rep.summarize(rep.collect([runs_root]).runs, ["cl_error", "f1_pos"])
    back = pd.read_csv(io.StringIO(rep.to_csv(summary)), dtype={"seeds": str})
    assert list(back.columns) == ["label", "dataset", "n_runs", "seeds", "eval_protocol", "cl_error_mean",
                                  "cl_error_std", "f1_pos_mean", "f1_pos_std"]
    assert set(back["eval_protocol"]) == {"native"}
    row = back[(back["label"] == "cam-avg") & (back["dataset"] == "glas")].iloc[0]
    assert row["seeds"] == "0 1" and row["n_runs"] == 2
    assert row["cl_error_mean"] == pytest.approx(15.0) and row["cl_error_std"] == pytest.approx(np.sqrt(50))
    one_seed = back[(back["label"] == "cam-avg") & (back["dataset"] == "cub5")].iloc[0]
    assert np.isnan(one_seed["f1_pos_std"])


def test_latex_is_booktabs_with_escaped_names(tmp_path):
    fake_run(tmp_path, "a", "my_method 50%", "glas", 0, cl_error=1.0, f1_pos=50.0, f1_neg=50.0, pxap=50.0)
    fake_run(tmp_path, "b", "my_method 50%", "glas", 1, cl_error=3.0, f1_pos=52.0, f1_neg=40.0, pxap=52.0)
    fake_run(tmp_path, "c", "cam-avg", "glas", 0, cl_error=0.0, f1_pos=40.0, f1_neg=60.0, pxap=30.0)
    box = ("box", "box_at_valid", "box_localization", "pixel_at_valid")
    pixel_metrics = [m for m in rep.METRICS if rep.METRICS[m].protocol not in box]
    latex = rep.to_latex(rep.summarize(rep.collect([tmp_path]).runs, pixel_metrics), caption="GlaS & co")
    for rule in ("\\toprule", "\\cmidrule(lr){2-8}", "\\midrule", "\\bottomrule"):
        assert rule in latex
    assert "my\\_method 50\\%" in latex and "GlaS \\& co" in latex
    assert "\\textbf{0.00}" in latex and "51.00 $\\pm$ 1.41" in latex
    body = latex[latex.index("\\midrule"):]
    assert body.count("\\textbf{") == 4  # Err. and F1- of cam-avg, F1+ and PxAP of the other
    assert "cam-avg & \\textbf{0.00} & 40.00 & \\textbf{60.00} & 30.00 & - & - & - \\\\" in body


def test_latex_compiles(tmp_path, runs_root):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed")
    table = rep.to_latex(rep.summarize(rep.collect([runs_root]).runs, rep.METRICS), caption="Results")
    (tmp_path / "table.tex").write_text(table)
    (tmp_path / "doc.tex").write_text(
        "\\documentclass{article}\\usepackage{booktabs}\\begin{document}\\input{table.tex}\\end{document}\n"
    )
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``wsolbench ARGS`` in this interpreter: (exit status, stdout, stderr)."""
    from wsolbench.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_report_command_formats_files_and_skips(runs_root, tmp_path, capsys):
    fake_run(runs_root, "broken", "cam-avg", "glas", 5, status="interrupted")
    code, _, err = cli(capsys, "report", str(runs_root), "--output", str(tmp_path / "t.csv"), "--metrics", "all")
    assert code == 0, err
    assert "broken: status 'interrupted'" in err
    assert len(pd.read_csv(tmp_path / "t.csv")) == 4  # 2 labels x 2 datasets
    code, out, err = cli(capsys, "report", str(runs_root), "--format", "markdown", "--rows", "minmax (u=4),cam-avg")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| method") and "minmax" in lines[1] and "cam-avg" in lines[2]
    code, _, err = cli(capsys, "report", str(runs_root), "--metrics", "f1")
    assert code == 2 and "Unknown metric 'f1'" in err and "Traceback" not in err


def test_columns_scored_under_wsolevaluations_geometry_name_it(tmp_path):
    box = {"maxboxaccv2": 60.0, "cl_error": 10.0}
    fake_run(tmp_path, "a", "cam-avg", "wsoleval/CUB", 0, eval_protocol="wsoleval", **box)
    # a run written before eval_protocol was recorded: the box protocol's text names the geometry
    fake_run(tmp_path, "b", "cam-avg", "wsoleval/CUB", 1, protocol={"box": "contour boxes; geometry wsoleval"}, **box)
    fake_run(tmp_path, "c", "cam-avg", "glas", 0, eval_protocol="native", **box)
    summary = rep.summarize(rep.collect([tmp_path]).runs, ["cl_error", "maxboxaccv2"])
    assert summary.at[("cam-avg", "wsoleval/CUB"), "n_runs"] == 2
    for text in (rep.to_text(summary), rep.to_markdown(summary), rep.to_latex(summary)):
        assert text.count("MaxBoxAccV2 (wsoleval)") == 1, text  # the CUB column, not GlaS's
        assert "Err. (wsoleval)" not in text  # classification has no geometry
        assert "224 x 224" in text
    back = pd.read_csv(io.StringIO(rep.to_csv(summary)))
    assert dict(zip(back["dataset"], back["eval_protocol"])) == {"wsoleval/CUB": "wsoleval", "glas": "native"}


def test_one_dataset_under_two_geometries_is_two_column_groups(tmp_path):
    fake_run(tmp_path, "a", "cam-avg", "synthetic", 0, eval_protocol="wsoleval", maxboxaccv2=60.0)
    fake_run(tmp_path, "b", "cam-avg", "synthetic", 1, eval_protocol="native", maxboxaccv2=20.0)
    summary = rep.summarize(rep.collect([tmp_path]).runs, ["maxboxaccv2"])
    assert summary.at[("cam-avg", "synthetic (wsoleval)"), "maxboxaccv2_mean"] == 60.0
    assert summary.at[("cam-avg", "synthetic"), "maxboxaccv2_mean"] == 20.0
