"""Model selection on a validation split where several epochs tie at the lowest error (``train.select_ties``)."""

from __future__ import annotations

import pytest
from test_runner import tiny

from wsolbench.errors import ConfigError, RunInterrupted
from wsolbench.runs import rundir
from wsolbench.scoring.outputs import Evaluation
from wsolbench.training import runner

#: (validation error, validation loss) of epochs 0..6: four epochs at the lowest error 5.0, two of them at loss 0.5
HISTORY = [(10.0, 1.0), (5.0, 0.9), (5.0, 0.5), (7.0, 0.4), (5.0, 0.7), (5.0, 0.5), (6.0, 0.3)]


def expected(rule: str) -> tuple[int, int]:
    """(kept epoch, tied epochs), written from the rules' definitions."""
    lowest = min(error for error, _ in HISTORY)
    tied = [epoch for epoch, (error, _) in enumerate(HISTORY) if error == lowest]
    if rule == "last":
        return tied[-1], len(tied)
    return min(tied, key=lambda epoch: (HISTORY[epoch][1], epoch)), len(tied)


@pytest.fixture
def scripted(monkeypatch):
    """Validation returns HISTORY, one entry per call; the test split is scored for real."""
    scored = runner.evaluate
    calls = []

    def validation(method, loader, precision, cfg, localization=True, **kwargs):
        if localization:
            return scored(method, loader, precision, cfg, localization, **kwargs)
        error, loss = HISTORY[len(calls)]
        calls.append(error)
        return Evaluation({"cl_error": error, "loss": loss})

    monkeypatch.setattr(runner, "evaluate", validation)
    return calls


@pytest.mark.parametrize("rule", ["loss", "last"])
def test_each_rule_keeps_its_epoch_and_counts_the_ties(tmp_path, scripted, rule):
    result = runner.run(tiny(tmp_path, len(HISTORY), f"train.select_ties={rule}"))
    kept, tied = expected(rule)
    assert (kept, tied) == ((2, 4) if rule == "loss" else (5, 4))  # the fixture is the case it means to be
    assert result.results["best_epoch"] == kept
    assert result.results["tied_epochs"] == tied and result.results["tie_rule"] == rule
    assert result.results["valid_error"] == 5.0
    assert result.run_dir.load_checkpoint(rundir.BEST)["epoch"] == kept
    assert [row["best_epoch"] for row in result.run_dir.read_metrics()][-1] == kept


def test_the_tie_count_restarts_at_a_lower_error(tmp_path, scripted):
    result = runner.run(tiny(tmp_path, 3))  # 10, 5, 5: the first epoch's error is beaten, then tied once
    assert result.results["tied_epochs"] == 2 and result.results["best_epoch"] == 2  # loss 0.5 < 0.9


def test_a_resumed_run_keeps_counting_ties_exactly(tmp_path, scripted):
    def stop_after_epoch_2(event):
        if event.kind == "epoch_ended" and event.epoch == 2:
            raise KeyboardInterrupt("stopped for the test")

    cfg = tiny(tmp_path, len(HISTORY), "train.select_ties=last")
    with pytest.raises(RunInterrupted):
        runner.run(cfg, listener=stop_after_epoch_2)
    path = tmp_path / "r"
    assert runner.RunDir(path).load_checkpoint(rundir.LAST)["train_state"]["ties"] == 2
    result = runner.resume(path)
    assert (result.results["best_epoch"], result.results["tied_epochs"]) == expected("last")
    assert len(scripted) == len(HISTORY)  # every epoch validated once


def test_an_unknown_tie_rule_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="train.select_ties must be loss or last, not 'first'"):
        tiny(tmp_path, 1, "train.select_ties=first")


def test_the_result_table_names_the_ties_and_the_rule():
    from wsolbench.cli.run import selection_note

    note = selection_note({"best_epoch": 36, "valid_error": 0.0, "tied_epochs": 41, "tie_rule": "loss"})
    assert "best_epoch 36" in note and "41 validated epochs tied" in note and "lower validation loss" in note
    single = selection_note({"best_epoch": 3, "valid_error": 2.5, "tied_epochs": 1, "tie_rule": "last"})
    assert "no other validated epoch" in single
    assert selection_note({"best_epoch": -1}) is None  # nothing was trained
