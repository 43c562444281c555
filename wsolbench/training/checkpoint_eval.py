"""Score a run's checkpoint again: ``wsolbench evaluate-run RUN_DIR``.

The run's dataset and method are rebuilt from its ``config.json``, its
``best.pt`` (or ``last.pt``) is loaded and a split is scored exactly as the run
scored its test split at the end. Started by torchrun, the processes share the
split and give the numbers of one process (see :mod:`wsolbench.training.distributed`).
With an output folder, ``results.json``, ``per_image.csv``,
``histograms.npz`` and the pictures are written there, with the
``config.json`` of the scoring and a ``manifest.json`` (code, runtime, data,
``evaluated``: the run and checkpoint scored; status ``completed`` at the
end, ``failed`` with the error otherwise): a run directory that ``wsolbench
report`` reads as a row.

``method`` loads the weights into another method that shares the run's
network (a post-hoc map of a CAM run: ``--method posthoc --set
method.cam=scorecam``), without training; ``sets`` change settings that do not
change the network (``eval.map_class``, the method's own settings). Weights
that do not fit the other method's network are refused with the reason.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from wsolbench.assembly import build_dataset, build_method, method_label, provenance
from wsolbench.config import rebase
from wsolbench.errors import UnknownNameError, UserError
from wsolbench.runs import rundir
from wsolbench.runs.provenance import data_fingerprint
from wsolbench.runs.rundir import RunDir
from wsolbench.scoring.outputs import results_record, write_outputs
from wsolbench.training import distributed
from wsolbench.training.checkpoints import load_model_state
from wsolbench.training.engine import Listener, Precision, score_split
from wsolbench.utils import seed_everything


def evaluate_checkpoint(
    path: str | Path,
    checkpoint: str = "best",
    split: str = "test",
    device: str | None = None,
    output_dir: str | Path | None = None,
    listener: Listener | None = None,
    method: str | None = None,
    sets: list[str] | None = None,
) -> dict[str, Any]:
    """Score ``checkpoint`` (``best`` or ``last``) of the run in ``path`` on ``split``; returns the results.

    ``method`` and ``sets``: another method on the run's weights, other settings (see the module's text).
    """
    if checkpoint not in rundir.CHECKPOINTS:
        raise UnknownNameError("checkpoint", checkpoint, rundir.CHECKPOINTS)
    run = RunDir(path, read_only=True)
    run_cfg = run.read_config()
    cfg = rebase(run_cfg, method, sets) if method is not None or sets else run_cfg
    if device is not None:
        cfg.device = device
    file = run.path / rundir.CHECKPOINTS[checkpoint]
    if not file.is_file():
        raise UserError(f"run {run.path} has no {file.name}")
    out = Path(output_dir) if output_dir is not None else None
    if out is not None and (out / rundir.RESULTS).exists():
        raise UserError(f"{out} already holds {rundir.RESULTS}; choose another --output-dir")

    with distributed.session(cfg.device) as (dist, dev):
        seed_everything(cfg.seed)
        dataset = build_dataset(cfg)
        if split not in dataset.split_names:
            raise UnknownNameError("split", split, dataset.split_names)
        model = build_method(cfg, dataset.num_classes).to(dev)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        epoch = None
        if dist.is_main:
            state = run.load_checkpoint(file.name)
            load_model_state(model, state, run_cfg, into=cfg.method)
            epoch = state.get("epoch")
        epoch = dist.broadcast(epoch)
        dist.broadcast_module(model)
        precision = Precision.choose(dev, cfg.train.amp)
        evaluated = {"run": str(run.path), "checkpoint": file.name, "epoch": epoch, "split": split}
        target = _output_dir(out, cfg, dataset, dev, evaluated, dist.is_main) if out is not None else None
        try:
            t0 = time.perf_counter()
            scored, extras, scored_how = score_split(model, dataset, split, cfg, precision, dist,
                                                     listener if dist.is_main else None)
            results = results_record(cfg, scored.metrics, provided_by=provenance(cfg), **scored_how, **evaluated)
            write_outputs(target, scored, extras, results)
        except BaseException as exc:
            if target is not None:
                target.stop("failed", f"{type(exc).__name__}: {exc}")
            raise
        if target is not None:
            target.update_manifest(status="completed", finished=rundir.now(),
                                   eval_seconds=round(time.perf_counter() - t0, 3),
                                   peak_memory_mb=rundir.peak_memory_mb(dev))
            target.release()
    return results


def _output_dir(out: Path, cfg: Any, dataset: Any, device: Any, evaluated: dict[str, Any], main: bool) -> RunDir:
    """The output folder as a run directory (locked, with its configuration and a running manifest); read-only
    on the processes other than the first."""
    target = RunDir(out, read_only=not main)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        target.acquire()
        config_dict = cfg.to_dict()
        target.write_config(config_dict)
        manifest = rundir.new_manifest(config_dict, device, data=data_fingerprint(dataset))
        target.write_manifest({**manifest, "method_label": method_label(cfg), "evaluated": evaluated})
    return target
