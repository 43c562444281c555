"""Score a run's checkpoint again: ``wsolbench evaluate-run RUN_DIR``.

The run's dataset and method are rebuilt from its ``config.json``, its
``best.pt`` (or ``last.pt``) is loaded and a split is scored exactly as the run
scored its test split at the end. Started by torchrun, the processes share the
split and give the numbers of one process (see :mod:`wsolbench.distributed`).
With an output folder, ``results.json``, ``per_image.csv``,
``histograms.npz`` and the pictures are written there.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from wsolbench.errors import UserError

CHECKPOINTS = {"best": "best.pt", "last": "last.pt"}


def read_run_config(path: str | Path) -> Any:
    """The :class:`~wsolbench.config.RunConfig` a run directory was made with."""
    from wsolbench import runs
    from wsolbench.config import RunConfig
    from wsolbench.utils import read_json

    file = Path(path) / runs.CONFIG
    if not file.is_file():
        raise UserError(f"{path} is not a wsolbench run directory: it has no {runs.CONFIG}")
    try:
        return RunConfig.from_dict(read_json(file))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{file} is not a valid run configuration: {exc}") from exc


def evaluate_checkpoint(
    path: str | Path,
    checkpoint: str = "best",
    split: str = "test",
    device: str | None = None,
    output_dir: str | Path | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Score ``checkpoint`` (``best`` or ``last``) of the run in ``path`` on ``split``; returns the results."""
    import torch

    from wsolbench import distributed, engine, runs
    from wsolbench.errors import UnknownNameError
    from wsolbench.extras import TestExtras
    from wsolbench.utils import seed_everything

    if checkpoint not in CHECKPOINTS:
        raise UnknownNameError("checkpoint", checkpoint, CHECKPOINTS)
    run = runs.RunDir(path)
    cfg = read_run_config(path)
    if device is not None:
        cfg.device = device
    file = run.path / CHECKPOINTS[checkpoint]
    if not file.is_file():
        raise UserError(f"run {run.path} has no {file.name}")
    out = Path(output_dir) if output_dir is not None else None
    if out is not None and (out / runs.RESULTS).exists():
        raise UserError(f"{out} already holds {runs.RESULTS}; choose another --output-dir")

    with distributed.session(cfg.device) as (dist, dev):
        seed_everything(cfg.seed)
        dataset = engine.build_dataset(cfg)
        if split not in dataset.split_names:
            raise UnknownNameError("split", split, dataset.split_names)
        method = engine.build_method(cfg, dataset.num_classes).to(dev)
        if cfg.train.channels_last:
            method = method.to(memory_format=torch.channels_last)
        epoch = None
        if dist.is_main:
            state = run.load_checkpoint(file.name)
            engine.load_model_state(method, state, cfg)
            epoch = state.get("epoch")
        epoch = dist.broadcast(epoch)
        dist.broadcast_module(method)
        items = dataset.split(split, train=False)
        loader = engine.make_loader(items, cfg, False, dev, seed_offset=2, dist=dist)
        extras = TestExtras(cfg, dataset, items)
        progress = engine.new_progress() if not quiet and dist.is_main else None
        with progress if progress is not None else contextlib.nullcontext():
            step = None
            if progress is not None:
                task = progress.add_task(split, total=len(loader), info="")
                step = lambda: progress.advance(task)  # noqa: E731
            test = engine.evaluate(
                method, loader, engine.Precision.choose(dev, cfg.train.amp), cfg, localization=True,
                ids=getattr(items, "ids", None), on_step=step, on_map=extras.update, dist=dist,
            )
        extras.gather(dist)
        results = engine.test_results(cfg, test.metrics, classifies=method.classifies, run=str(run.path),
                                      checkpoint=file.name, epoch=epoch, split=split)
        target = out if dist.is_main else None
        if target is not None:
            target.mkdir(parents=True, exist_ok=True)
        results.update(extras.finish(target, test))
        if target is not None:
            writer = runs.RunDir(target)
            if test.accumulator is not None and test.accumulator.hist_fg is not None:
                writer.write_histograms(fg=test.accumulator.hist_fg.numpy(), bg=test.accumulator.hist_bg.numpy())
            writer.write_per_image(test.per_image)
            writer.write_results(results)
    return results
