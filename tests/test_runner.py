"""A run's life: the events it reports, the run directory it keeps, one reader of its configuration."""

from __future__ import annotations

import json

import pytest
from conftest import TINY

from wsolbench import config
from wsolbench.interfaces import EVENTS, Event
from wsolbench.runs import rundir
from wsolbench.scoring.outputs import Evaluation
from wsolbench.training import runner

SETS = [TINY[i + 1] for i in range(0, len(TINY) - 2, 2) if TINY[i] == "--set"]


def tiny(tmp_path, epochs: int, *extra: str) -> config.RunConfig:
    return config.resolve(
        "cam-avg", "synthetic", "quick",
        options={"output_dir": str(tmp_path), "run_name": "r", "device": "cpu", "train": {"epochs": epochs}},
        sets=SETS + list(extra),
    )


def test_a_run_reports_its_progress_as_events_in_order(tmp_path):
    heard: list[Event] = []
    cfg = tiny(tmp_path, 2, "dataset.n_train=24")
    result = runner.run(cfg, listener=heard.append)
    kinds = [e.kind for e in heard]
    assert set(kinds) <= set(EVENTS)
    assert kinds[0] == "training_started" and heard[0].total == 2 and heard[0].epoch == 0
    # each phase announces its batches, then sends one step per batch
    phases = [(i, e) for i, e in enumerate(heard) if e.kind == "phase_started"]
    # the last validation pass scores the kept model's maps for the test's thresholds
    assert [e.phase for _, e in phases] == ["train", "valid", "train", "valid", "valid", "test"]
    for (i, e), (j, _) in zip(phases, [*phases[1:], (len(heard), None)]):
        steps = [k for k in kinds[i + 1 : j] if k == "step"]
        assert len(steps) == e.total, e.phase
    assert [e.phase for _, e in phases][-1] == "test"
    ended = [e for e in heard if e.kind == "epoch_ended"]
    rows = [json.loads(line) for line in (result.run_dir.path / rundir.METRICS).read_text().splitlines()]
    assert [e.logs["train_loss"] for e in ended] == [r["train_loss"] for r in rows]  # what the file records
    assert ended[0].logs["improved"] is True  # the first validation is always a new best


def test_early_stop_counts_validations_and_is_an_event(tmp_path, monkeypatch):
    scored = runner.evaluate

    def flat_validation(method, loader, precision, cfg, localization=True, **kwargs):
        if localization:
            return scored(method, loader, precision, cfg, localization, **kwargs)
        return Evaluation({"cl_error": 50.0, "loss": 1.0})  # never better than the first validation

    monkeypatch.setattr(runner, "evaluate", flat_validation)
    heard: list[Event] = []
    # validation after epochs 1, 3, 5: the first is a new best, the second is not and stops the run
    cfg = tiny(tmp_path, 6, "train.patience=1", "eval.every=2")
    result = runner.run(cfg, listener=heard.append)
    stops = [e for e in heard if e.kind == "stopped_early"]
    assert len(stops) == 1 and stops[0].epoch == 3 and stops[0].logs["stale"] == 1
    assert [e.epoch for e in heard if e.kind == "epoch_ended"] == [0, 1, 2, 3]
    assert result.results["best_epoch"] == 1


def test_a_read_only_run_directory_writes_nothing(tmp_path):
    writer = rundir.RunDir.create(tmp_path, "r")
    writer.write_config({"seed": 3})
    writer.release()
    before = sorted(p.name for p in writer.path.iterdir())
    reader = rundir.RunDir(writer.path, read_only=True)
    reader.write_config({"seed": 4})
    reader.write_manifest({"status": "running"})
    reader.update_manifest(status="completed")
    reader.append_metrics({"epoch": 0})
    reader.write_results({"f1_pos": 1.0})
    reader.write_per_image([{"id": "a"}])
    reader.write_histograms(fg=[1], bg=[2])
    reader.save_checkpoint(rundir.LAST, {"epoch": 0})
    assert sorted(p.name for p in writer.path.iterdir()) == before
    assert reader.read_json(rundir.CONFIG) == {"seed": 3}


def test_one_reader_of_a_run_configuration_with_one_error(tmp_path):
    cfg = tiny(tmp_path, 1)
    run_dir = rundir.RunDir.create(tmp_path, "r")
    run_dir.write_config(cfg.to_dict())
    assert run_dir.read_config() == cfg
    (run_dir.path / rundir.CONFIG).write_text("{ not json")
    with pytest.raises(rundir.RunDirError, match="cannot be read"):
        run_dir.read_config()
    (run_dir.path / rundir.CONFIG).write_text(json.dumps({"train": {"no_such_key": 1}}))
    with pytest.raises(rundir.RunDirError, match="not a valid run configuration"):
        run_dir.read_config()
    with pytest.raises(rundir.RunDirError, match="has no config.json"):
        rundir.RunDir(tmp_path).read_config()
    with pytest.raises(rundir.RunDirError, match="not a directory"):
        rundir.RunDir(tmp_path / "absent").read_config()


def test_slug_makes_one_safe_name():
    assert rundir.slug("cam avg/u=4 (paper)") == "cam-avg-u-4-paper"
    assert rundir.slug("..hidden.") == "hidden"
    assert rundir.slug("///") == "run"


def test_the_progress_display_follows_a_run(tmp_path):
    from wsolbench.cli.run import ProgressDisplay

    display = ProgressDisplay()
    display.progress.disable = True  # nothing on the terminal; the tasks still count
    with display.progress:
        runner.run(tiny(tmp_path, 2), listener=display)
    tasks = {task.description: task for task in display.progress.tasks}
    assert tasks["epochs"].completed == tasks["epochs"].total == 2
    assert tasks["epochs"].fields["info"].startswith("loss ")
    assert tasks["valid"].completed == tasks["valid"].total == 1  # the last pass of the shared batch bar
    assert tasks["test"].completed == tasks["test"].total == 1  # 8 test images, batches of 8
