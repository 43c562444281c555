"""A scored split and its outputs: ``results.json``, ``per_image.csv``, histograms and pictures.

A run's test evaluation, ``wsolbench evaluate-run`` and ``wsolbench evaluate
--scoremaps`` score a split in their own way (a model's maps or files of
maps) into one :class:`Evaluation`, then describe it with
:func:`results_record` and write it with :func:`write_outputs`, so the three
give the same files with the same fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from wsolbench import RUN_SCHEMA_VERSION
from wsolbench.assembly import method_label
from wsolbench.config import RunConfig
from wsolbench.runs.rundir import RunDir
from wsolbench.scoring.extras import TestExtras
from wsolbench.scoring.metrics import (
    ChosenThresholds,
    LocalizationAccumulator,
    protocol_record,
)


@dataclass
class Evaluation:
    """A scored split: its metrics, one row per image and the accumulator behind the set-level metrics."""

    metrics: dict[str, float]
    per_image: list[dict[str, Any]] = field(default_factory=list)
    accumulator: LocalizationAccumulator | None = None
    #: the split's own best thresholds, to score another split at (a validation split's, for the test split)
    best_thresholds: ChosenThresholds | None = None


def _number(value: Any) -> Any:
    """JSON has no NaN: a metric that does not exist (no foreground pixel, no image) is ``null``."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def results_record(
    cfg: RunConfig,
    metrics: dict[str, Any],
    *,
    method: str | None = None,
    label: str | None = None,
    provided_by: dict[str, Any] | None = None,
    classifies: bool = True,
    thresholds_from: str = "valid",
    dataset: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """``results.json``: the identity of what was scored, ``fields``, the metrics and how they were computed.

    ``method`` and ``label`` default to ``cfg``'s method and its report label, ``dataset`` to ``cfg``'s
    (a plug-in serving several datasets names the one scored: :attr:`Dataset.report_name`);
    ``cl_error``, ``top1_loc`` and ``top5_loc`` are null for methods that make no class prediction
    (``classifies = False``). ``thresholds_from`` names the split whose best thresholds the
    ``*_at_val`` metrics and ``top*_loc`` use (recorded as ``thresholds_from`` and in ``protocol``).
    """
    return {
        "schema_version": RUN_SCHEMA_VERSION,
        "method": method or cfg.method,
        "method_label": label or method_label(cfg),
        "dataset": dataset or cfg.dataset,
        "seed": cfg.seed,
        "profile": cfg.profile,
        **({"provided_by": provided_by} if provided_by is not None else {}),
        **fields,
        **{k: _number(v) for k, v in metrics.items() if k != "loss"},
        **({} if classifies else {"cl_error": None, "top1_loc": None, "top5_loc": None}),
        "eval_protocol": cfg.eval.protocol,
        "thresholds_from": thresholds_from,
        "protocol": protocol_record(cfg.eval, thresholds_from),
    }


def write_outputs(
    target: RunDir | None, evaluation: Evaluation, extras: TestExtras, results: dict[str, Any]
) -> dict[str, Any]:
    """Finish ``results`` with the CRF metrics (``eval.crf``) and write the split's files into ``target``.

    ``target`` ``None`` or read-only: nothing is written (the CRF metrics are
    still added). Returns ``results``.
    """
    writes = target is not None and not target.read_only
    acc = evaluation.accumulator
    if writes and acc is not None and acc.hist_fg is not None:
        target.write_histograms(fg=acc.hist_fg.cpu().numpy(), bg=acc.hist_bg.cpu().numpy())
    results.update(extras.finish(target if writes else None, evaluation))
    if writes:
        target.write_per_image(evaluation.per_image)
        target.write_results(results)
    return results
