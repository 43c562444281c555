"""Model selection on a chosen validation metric (eval.select)."""

from __future__ import annotations

import math

import pytest

from wsolbench import config
from wsolbench.errors import ConfigError
from wsolbench.training.checkpoints import selection_key

#: epoch 1 classifies best, epoch 2 localizes best (boxes and background), epoch 3 has the lowest loss
#: and the best PxAP; the ties on cl_error at epochs 0 and 1 are broken by the loss
HISTORY = [
    {"cl_error": 10.0, "loss": 0.9, "maxboxaccv2": 50.0, "pxap": 40.0, "f1_neg": 70.0},
    {"cl_error": 10.0, "loss": 0.5, "maxboxaccv2": 55.0, "pxap": 45.0, "f1_neg": 72.0},
    {"cl_error": 20.0, "loss": 0.7, "maxboxaccv2": 70.0, "pxap": 50.0, "f1_neg": 80.0},
    {"cl_error": 30.0, "loss": 0.4, "maxboxaccv2": 60.0, "pxap": 60.0, "f1_neg": 75.0},
]


def replay(select: str) -> int:
    """The runner's rule over the history: a new best when the key is strictly lower."""
    best = {"epoch": -1, "cl_error": math.inf, "loss": math.inf}
    for epoch, metrics in enumerate(HISTORY):
        if selection_key(metrics, select) < selection_key(best, select):
            best = {"epoch": epoch, **metrics}
    return best["epoch"]


@pytest.mark.parametrize(("select", "epoch"), [("cl_error", 1), ("loss", 3), ("maxboxaccv2", 2), ("pxap", 3),
                                               ("f1_neg", 2)])
def test_each_selection_metric_picks_its_own_best_epoch(select, epoch):
    expected = min(range(len(HISTORY)), key=lambda e: (
        (HISTORY[e]["cl_error"], HISTORY[e]["loss"]) if select == "cl_error" else
        (HISTORY[e]["loss"],) if select == "loss" else (-HISTORY[e][select],)))
    assert replay(select) == expected == epoch


def test_a_missing_localization_score_never_wins():
    assert selection_key({"cl_error": 0.0, "loss": 0.0, "pxap": float("nan")}, "pxap") > \
        selection_key({"cl_error": 50.0, "loss": 9.0, "pxap": 1.0}, "pxap")


def test_an_unknown_selection_metric_is_refused():
    with pytest.raises(ConfigError, match="eval.select"):
        config.resolve(None, "synthetic", sets=["eval.select=dice"])
