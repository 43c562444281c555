"""One run's life: build it, train with model selection, test, and keep its directory consistent.

:func:`run` goes from a configuration to a completed run directory
(:mod:`wsolbench.runs.rundir`): the dataset and method are built
(:mod:`wsolbench.assembly`), the method is trained one epoch at a time
(:mod:`wsolbench.training.engine`), the model with the lowest validation error (ties: the
lower validation loss, or the last such epoch with ``train.select_ties = "last"``; see
:class:`~wsolbench.training.checkpoints.TrainState`) is kept as ``best.pt`` and scored on the test split
(:mod:`wsolbench.scoring.outputs`). :func:`resume` continues a run that was killed,
interrupted or stopped by an error, from its ``last.pt``
(:mod:`wsolbench.training.checkpoints`).

Files are kept consistent across a kill at any point: after each epoch a
metrics row is appended, then ``last.pt`` is replaced, then ``best.pt`` if the
epoch improved. Resuming drops metric rows after the checkpoint's epoch,
rewrites ``best.pt`` from ``last.pt`` when the kill fell between the two, and
deletes the temporary files of interrupted atomic writes.

Started by torchrun, every process runs this same code (see
:mod:`wsolbench.training.distributed`): rank 0 creates and writes the run directory,
the others see it read-only, and progress goes to the listener of rank 0 only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wsolbench import RUN_SCHEMA_VERSION
from wsolbench.assembly import build_dataset, build_method, method_label, provenance
from wsolbench.config import RunConfig
from wsolbench.data.samples import check_split_labels
from wsolbench.errors import RunInterrupted, UserError
from wsolbench.interfaces import Dataset, Method
from wsolbench.runs import rundir
from wsolbench.runs.provenance import data_fingerprint
from wsolbench.runs.rundir import RunDir
from wsolbench.scoring.outputs import results_record, write_outputs
from wsolbench.training import distributed
from wsolbench.training.checkpoints import (
    LOCALIZATION_SELECT,
    TRAINING_KEYS,
    TrainState,
    as_stored_json,
    check_checkpoint,
    epoch_seed,
    load_model_state,
    model_state,
    restore_training,
    training_state,
)
from wsolbench.training.distributed import Context
from wsolbench.training.engine import (
    Listener,
    Precision,
    evaluate,
    make_loader,
    make_optimizer,
    make_scheduler,
    score_split,
    tell,
    train_one_epoch,
)
from wsolbench.training.loggers import LoggerSet, listening, pictures_after_validation
from wsolbench.utils import seed_everything

#: manifest statuses a run can be resumed from ("running": its process was killed)
RESUMABLE = ("running", "interrupted", "failed")


class ResumeError(UserError):
    """A run directory that cannot be continued."""


@dataclass
class RunResult:
    run_dir: RunDir
    results: dict[str, Any]
    config: RunConfig


@dataclass
class ResumePoint:
    """A run directory ready to continue: its configuration and its ``last.pt`` (if any)."""

    run_dir: RunDir
    config: RunConfig
    checkpoint: dict[str, Any] | None
    previous_status: str = ""

    def mark_running(self, argv: list[str] | None = None, device: Any = "cpu", data: dict[str, Any] | None = None,
                     ) -> None:
        """Set the manifest back to ``running`` and record this resume (time, epoch, command, origin, data)."""
        rundir.check_free_space(self.run_dir.path, self.config.train.min_free_mb)
        resumed = self.run_dir.read_manifest().get("resumed", [])
        resumed.append({
            "at": rundir.now(),
            "from_epoch": self.checkpoint["epoch"] + 1 if self.checkpoint else 0,
            "previous_status": self.previous_status,
            "command": " ".join(argv or []),
            **rundir.origin(device),
            "data": data,
        })
        self.run_dir.update_manifest(status="running", finished=None, error=None, resumed=resumed)


# -- starting and continuing ---------------------------------------------------------
def run(
    cfg: RunConfig, argv: list[str] | None = None, listener: Listener | None = None,
    resume_from: ResumePoint | None = None,
) -> RunResult:
    """Train (unless the method has nothing to train), select on validation, evaluate on test.

    ``resume_from`` (see :func:`resume`) continues that run directory from its
    ``last.pt`` instead of creating a new one. ``listener`` hears the loops'
    events (:class:`wsolbench.training.engine.Event`). Started by torchrun, the run is
    shared by its processes.
    """
    with distributed.session(cfg.device) as (dist, device):
        return _run(cfg, dist, device, argv, listener if dist.is_main else None, resume_from)


def resume(path: str | Path, argv: list[str] | None = None, listener: Listener | None = None) -> RunResult:
    """Continue the killed, interrupted or failed run in ``path`` with its own configuration.

    Under torchrun, rank 0 checks, locks and repairs the run directory; the
    other processes read its configuration and ``last.pt`` (so they must see
    the directory too: same machine or a shared file system).
    """
    if not distributed.from_environment().active:
        point = open_run(path)
        try:
            return run(point.config, argv, listener, resume_from=point)
        finally:
            point.run_dir.release()
    try:
        device = RunDir(path, read_only=True).read_config().device
    except UserError:
        device = "auto"  # rank 0's open_run says what is wrong with the directory
    with distributed.session(device) as (dist, _):
        if dist.is_main:
            try:
                point = open_run(path)
            except BaseException as exc:
                dist.broadcast(f"{type(exc).__name__}: {exc}")
                raise
            dist.broadcast(None)
        else:
            failure = dist.broadcast(None)
            if failure is not None:
                raise distributed.DistributedError(f"rank 0 could not resume {path}: {failure}")
            point = _follower_point(path)
        try:
            return run(point.config, argv, listener, resume_from=point)
        finally:
            point.run_dir.release()


def open_run(path: str | Path) -> ResumePoint:
    """Check and lock ``path`` for resuming; repair what a kill can leave behind.

    Raises :class:`ResumeError` (exit status 2) for a directory that is not a
    run, a run written by a newer wsolbench, a completed run, a checkpoint of
    another method or configuration, and :class:`~wsolbench.runs.rundir.RunLockedError`
    while another process writes the run.
    """
    run_dir = RunDir(path)
    try:
        manifest = run_dir.read_manifest()
        config = run_dir.read_json(rundir.CONFIG)
        cfg = run_dir.read_config()
    except rundir.RunDirError as exc:
        raise ResumeError(f"{exc}; the run cannot be resumed") from exc
    schema = manifest.get("schema_version", 0)
    if not isinstance(schema, int) or schema > RUN_SCHEMA_VERSION:
        raise ResumeError(
            f"run {run_dir.path} was written by a newer wsolbench (run schema {schema}, this version reads up "
            f"to {RUN_SCHEMA_VERSION}); upgrade wsolbench to resume it"
        )
    status = manifest.get("status")
    if status not in RESUMABLE:
        raise ResumeError(f"run {run_dir.path} has status {status!r}; only {', '.join(RESUMABLE)} runs resume")

    run_dir.acquire()
    try:
        checkpoint = None
        if (run_dir.path / rundir.LAST).exists():
            checkpoint = run_dir.load_checkpoint(rundir.LAST)
            check_checkpoint(checkpoint, cfg, run_dir.path / rundir.LAST)
            if as_stored_json(checkpoint.get("config")) != config:
                raise ResumeError(
                    f"{run_dir.path / rundir.LAST} was written with another configuration than "
                    f"{run_dir.path / rundir.CONFIG}; the run directory was changed by hand and cannot be resumed"
                )
        run_dir.remove_temporaries()
        last_epoch = checkpoint["epoch"] if checkpoint is not None else -1
        run_dir.truncate_metrics(last_epoch)
        if checkpoint is not None:
            _repair_best(run_dir, checkpoint)
    except BaseException:
        run_dir.release()
        raise
    return ResumePoint(run_dir, cfg, checkpoint, status)


def _repair_best(run_dir: RunDir, checkpoint: dict[str, Any]) -> None:
    """Make ``best.pt`` hold the best epoch that ``last.pt`` records."""
    best_epoch = checkpoint.get("train_state", {}).get("best", {}).get("epoch", -1)
    if best_epoch < 0:
        return
    path = run_dir.path / rundir.BEST
    on_disk = run_dir.load_checkpoint(rundir.BEST).get("epoch") if path.exists() else None
    if on_disk == best_epoch:
        return
    if best_epoch != checkpoint["epoch"]:
        raise ResumeError(
            f"{path} holds epoch {on_disk} but {rundir.LAST} records epoch {best_epoch} as the best; the run "
            f"directory was changed by hand and cannot be resumed"
        )
    run_dir.save_checkpoint(rundir.BEST, {k: v for k, v in checkpoint.items() if k not in TRAINING_KEYS})


def _follower_point(path: str | Path) -> ResumePoint:
    """What a process other than rank 0 needs to resume the run in ``path``: its configuration and ``last.pt``."""
    run_dir = RunDir(path, read_only=True)
    checkpoint = run_dir.load_checkpoint(rundir.LAST) if (run_dir.path / rundir.LAST).exists() else None
    return ResumePoint(run_dir, run_dir.read_config(), checkpoint)


def _shared_run_dir(dist: Context, create: Any) -> RunDir:
    """Rank 0 creates the run directory (``create()``); every process gets it, the others read-only."""
    if not dist.active:
        return create()
    if dist.is_main:
        try:
            run_dir = create()
        except BaseException as exc:
            dist.broadcast((None, f"{type(exc).__name__}: {exc}"))
            raise
        dist.broadcast((str(run_dir.path), None))
        return run_dir
    path, failure = dist.broadcast(None)
    if failure is not None:
        raise distributed.DistributedError(f"rank 0 could not create the run directory: {failure}")
    return RunDir(path, read_only=True)


def _create_run_dir(
    cfg: RunConfig, dataset: Dataset, device: torch.device, argv: list[str] | None, dist: Context
) -> RunDir:
    rundir.check_free_space(cfg.output_dir, cfg.train.min_free_mb)
    name = cfg.run_name or RunDir.default_name(cfg.dataset, cfg.method, cfg.seed)
    run_dir = RunDir.create(cfg.output_dir, name)
    config_dict = cfg.to_dict()
    run_dir.write_config(config_dict)
    manifest = rundir.new_manifest(config_dict, device, argv, data=data_fingerprint(dataset))
    manifest["method_label"] = method_label(cfg)
    manifest["classes"] = list(dataset.classes)  # class k's name: a run's model is usable without its data
    if dist.active:
        manifest["processes"] = dist.world_size
    run_dir.write_manifest(manifest)
    return run_dir


# -- the run ---------------------------------------------------------------------------
def _run(
    cfg: RunConfig, dist: Context, device: torch.device, argv: list[str] | None, listener: Listener | None,
    resume_from: ResumePoint | None,
) -> RunResult:
    seed_everything(cfg.seed)
    dataset = build_dataset(cfg)
    check_split_labels(dataset, cfg.dataset)
    method = distributed.prepare_model(build_method(cfg, dataset.num_classes).to(device), dist, device)
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if resume_from is None:
        run_dir, checkpoint = _shared_run_dir(dist, lambda: _create_run_dir(cfg, dataset, device, argv, dist)), None
    else:
        run_dir, checkpoint = resume_from.run_dir, resume_from.checkpoint
        if dist.is_main:
            resume_from.mark_running(argv, device, data_fingerprint(dataset))
    loggers = LoggerSet(cfg.loggers if dist.is_main else [], run_dir.path, cfg.to_dict())
    try:
        results = _train_and_test(cfg, dataset, method, device, run_dir, listener, loggers, checkpoint, dist)
    except KeyboardInterrupt as exc:
        reason = str(exc) or "interrupted by the user (Ctrl-C)"
        run_dir.stop("interrupted", reason)
        if dist.is_main:
            raise RunInterrupted(
                f"{reason}; finished epochs are kept. Continue with: wsolbench run --resume {run_dir.path}"
            ) from exc
        raise
    except BaseException as exc:
        run_dir.stop("failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        loggers.close()
    run_dir.release()
    return RunResult(run_dir, results, cfg)


def _train_and_test(
    cfg: RunConfig,
    dataset: Dataset,
    method: Method,
    device: torch.device,
    run_dir: RunDir,
    listener: Listener | None,
    loggers: LoggerSet,
    checkpoint: dict[str, Any] | None,
    dist: Context,
) -> dict[str, Any]:
    precision = Precision.choose(device, cfg.train.amp)
    state = TrainState()
    listener = listening(listener, loggers or None)
    if method.trainable and cfg.train.epochs > 0:
        draw = pictures_after_validation(loggers, method, dataset.split("valid"), cfg, precision)
        state = _train(cfg, dataset, method, device, precision, run_dir, listener, checkpoint, dist, draw)
        if dist.is_main:
            load_model_state(method, run_dir.load_checkpoint(rundir.BEST), cfg)
        dist.broadcast_module(method)
    else:
        run_dir.save_checkpoint(rundir.BEST, model_state(method, cfg, -1), reserve_mb=cfg.train.min_free_mb)

    t0 = time.perf_counter()
    test, extras, scored_how = score_split(method, dataset, "test", cfg, precision, dist, listener)
    eval_seconds = time.perf_counter() - t0
    results = results_record(
        cfg, test.metrics, provided_by=provenance(cfg), **scored_how,
        best_epoch=state.best["epoch"], valid_error=None if state.best["epoch"] < 0 else state.best["cl_error"],
        **_selection(cfg, dataset, state),
    )
    write_outputs(run_dir, test, extras, results)
    run_dir.update_manifest(
        status="completed",
        finished=rundir.now(),
        train_seconds=round(state.train_seconds, 3),
        valid_seconds=round(state.valid_seconds, 3),
        eval_seconds=round(eval_seconds, 3),
        peak_memory_mb=rundir.peak_memory_mb(device),
        best_epoch=state.best["epoch"],
    )
    return results


def _selection(cfg: RunConfig, dataset: Dataset, state: TrainState) -> dict[str, Any]:
    """How the kept model was chosen: the validation metric, the epochs tied at its value and the rule that
    broke the tie."""
    if state.best["epoch"] < 0:
        return {}
    return {"selected_on": selection_metric(cfg, dataset), "tied_epochs": state.ties,
            "tie_rule": cfg.train.select_ties}


def selection_metric(cfg: RunConfig, dataset: Dataset) -> str:
    """``eval.select``, with ``localization`` made the dataset's own localization metric."""
    return dataset.localization_metric if cfg.eval.select == "localization" else cfg.eval.select


def _train(
    cfg: RunConfig,
    dataset: Dataset,
    method: Method,
    device: torch.device,
    precision: Precision,
    run_dir: RunDir,
    listener: Listener | None,
    checkpoint: dict[str, Any] | None,
    dist: Context,
    draw: Callable[[int], None] | None = None,
) -> TrainState:
    """Train up to ``train.epochs``, validating every ``eval.every`` epochs; ``best.pt`` holds the selected model.

    ``draw(epoch)``, when given, runs after each validation (the loggers' pictures).
    """
    train_loader = make_loader(dataset.split("train"), cfg, True, device, dist=dist)
    valid_loader = make_loader(dataset.split("valid"), cfg, False, device, seed_offset=1, dist=dist)
    epochs, reserve = cfg.train.epochs, cfg.train.min_free_mb
    optimizer = make_optimizer(method, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    state = TrainState()
    if checkpoint is not None:
        load_model_state(method, checkpoint, cfg)
        state = restore_training(checkpoint, optimizer, scheduler, precision.scaler)
    step_fn = distributed.training_step(method, dist, device)
    tell(listener, "training_started", epoch=state.next_epoch, total=epochs)
    for epoch in range(state.next_epoch, epochs):
        if state.stopped_early(cfg.train.patience):  # a run resumed after its early stop
            break
        t0 = time.perf_counter()
        train_loader.generator.manual_seed(epoch_seed(cfg.seed, epoch))
        dist.start_epoch(train_loader, cfg.seed, epoch)
        logs = train_one_epoch(method, train_loader, optimizer, precision, cfg, epoch, listener, step_fn, dist)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        epoch_train_seconds = time.perf_counter() - t0
        state.train_seconds += epoch_train_seconds
        row: dict[str, Any] = {"epoch": epoch, "lr": lr, **logs}
        improved = False
        validates = (epoch + 1) % cfg.eval.every == 0 or epoch == epochs - 1
        if validates:
            t1 = time.perf_counter()
            select = selection_metric(cfg, dataset)
            val = evaluate(method, valid_loader, precision, cfg, localization=select in LOCALIZATION_SELECT,
                           listener=listener, dist=dist, phase="valid")
            state.valid_seconds += time.perf_counter() - t1
            row.update(valid_error=val.metrics["cl_error"], valid_loss=val.metrics["loss"])
            if select in LOCALIZATION_SELECT:
                row[f"valid_{select}"] = val.metrics[select]
            improved = state.consider(epoch, val.metrics, select, cfg.train.select_ties)
            if draw is not None:
                draw(epoch)
        if validates:  # patience counts validations, so an epoch without one never stops the run
            state.stale = 0 if improved else state.stale + 1
        row["best_epoch"] = state.best["epoch"]
        row["seconds"] = round(time.perf_counter() - t0, 3)
        state.next_epoch = epoch + 1
        # this order keeps the files consistent whenever a kill falls (see the module docstring)
        run_dir.append_metrics(row)
        run_dir.save_checkpoint(
            rundir.LAST,
            model_state(method, cfg, epoch, **training_state(optimizer, scheduler, precision.scaler, state)),
            reserve_mb=reserve,
        )
        if improved:
            run_dir.save_checkpoint(rundir.BEST, model_state(method, cfg, epoch), reserve_mb=reserve)
        run_dir.update_manifest(train_seconds=round(state.train_seconds, 3),
                                valid_seconds=round(state.valid_seconds, 3), epochs_done=epoch + 1)
        speed = _images_trained(train_loader, dist) / max(epoch_train_seconds, 1e-9)
        tell(listener, "epoch_ended", epoch=epoch, total=epochs,
              logs={**row, "improved": improved, "images_per_s": speed})
        if state.stopped_early(cfg.train.patience):
            tell(listener, "stopped_early", epoch=epoch, logs={"stale": state.stale})
            break
    return state


def _images_trained(loader: Any, dist: Context) -> int:
    """Training images in one epoch over all processes (full batches only when the loader drops the last)."""
    per_process = len(loader) * loader.batch_size if loader.drop_last else len(loader.sampler)
    return per_process * dist.world_size

