"""Experiment loggers: the built-in CSV and TensorBoard ones, and a failing one that changes nothing."""

from __future__ import annotations

import csv
import json
import warnings

import pytest
from conftest import TINY

from wsolbench import config
from wsolbench.errors import UnknownNameError
from wsolbench.interfaces import Logger
from wsolbench.plugin_host import PluginWarning, get_host
from wsolbench.registry import Entry
from wsolbench.runs import rundir
from wsolbench.training import runner

SETS = [TINY[i + 1] for i in range(0, len(TINY) - 2, 2) if TINY[i] == "--set"]


def tiny(tmp_path, name: str, *extra: str) -> config.RunConfig:
    return config.resolve(
        "cam-avg", "synthetic", "quick",
        options={"output_dir": str(tmp_path), "run_name": name, "device": "cpu", "train": {"epochs": 2}},
        sets=SETS + ["eval.pictures=2", *extra],
    )


def metrics_rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / rundir.METRICS).read_text().splitlines()]


def test_csv_logger_writes_one_row_per_epoch(tmp_path):
    result = runner.run(tiny(tmp_path, "csv", 'loggers=["csv"]'))
    with open(result.run_dir.path / "log.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    recorded = metrics_rows(result.run_dir.path)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert [float(r["train_loss"]) for r in rows] == [r["train_loss"] for r in recorded]
    assert [float(r["valid_error"]) for r in rows] == [r["valid_error"] for r in recorded]
    assert all(float(r["images_per_s"]) > 0 for r in rows)
    assert json.loads((result.run_dir.path / rundir.CONFIG).read_text())["loggers"] == ["csv"]


def test_tensorboard_logger_writes_scalars_and_the_validation_overlays(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = runner.run(tiny(tmp_path, "tb", 'loggers=["tensorboard"]'))
    events = EventAccumulator(str(result.run_dir.path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    recorded = metrics_rows(result.run_dir.path)
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [0, 1]
    assert [e.value for e in losses] == pytest.approx([r["train_loss"] for r in recorded], rel=1e-6)
    assert [e.value for e in events.Scalars("valid/error")] == pytest.approx([r["valid_error"] for r in recorded])
    assert [e.step for e in events.Scalars("run/lr")] == [0, 1]
    images = events.Images("valid/overlays")
    assert [e.step for e in images] == [0, 1] and images[0].width > 0


class Exploding(Logger):
    summary = "raises at every call"
    calls = 0

    def log(self, event):
        type(self).calls += 1
        raise RuntimeError("the logging service is down")


@pytest.fixture
def exploding_logger():
    host = get_host()
    host.registry("logger").add(Entry("exploding", Exploding, plugin="test", distribution="tests"))
    yield
    get_host(reload=True)


def test_a_failing_logger_is_reported_once_and_changes_nothing(tmp_path, exploding_logger):
    plain = runner.run(tiny(tmp_path, "plain"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logged = runner.run(tiny(tmp_path, "logged", 'loggers=["exploding", "csv"]'))
    reports = [w for w in caught if issubclass(w.category, PluginWarning)]
    assert len(reports) == 1 and "exploding" in str(reports[0].message)
    assert Exploding.calls == 1  # left out after its first failure
    assert (logged.run_dir.path / "log.csv").exists()  # the other logger went on
    for name in (rundir.RESULTS, rundir.PER_IMAGE):
        assert (plain.run_dir.path / name).read_text() == (logged.run_dir.path / name).read_text()
    assert [r["train_loss"] for r in metrics_rows(plain.run_dir.path)] == [
        r["train_loss"] for r in metrics_rows(logged.run_dir.path)]


def test_an_unknown_logger_is_refused_with_a_suggestion(tmp_path):
    with pytest.raises(UnknownNameError, match="Did you mean 'tensorboard'"):
        tiny(tmp_path, "x", 'loggers=["tensorbord"]')
