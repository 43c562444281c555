"""Training and evaluation: train one epoch, validate, select, evaluate on test.

One run: configuration -> dataset plug-in -> method plug-in -> training with
model selection on the validation classification error -> evaluation of the
best model on the test split -> metrics -> run directory.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from wsolbench import RUN_SCHEMA_VERSION, distributed
from wsolbench.config import RunConfig
from wsolbench.data import check_split_labels, eval_collate, seed_worker, train_collate
from wsolbench.distributed import SINGLE, Context, TrainStep
from wsolbench.errors import CheckpointError, DataError, RunInterrupted, TrainingDivergedError, UserError
from wsolbench.extras import TestExtras
from wsolbench.interfaces import Dataset, Method, ModelSpec
from wsolbench.metrics import LocalizationAccumulator, classification_error
from wsolbench.plugins import get_host, registry
from wsolbench.resume import ResumePoint, TrainState, check_checkpoint, epoch_seed, restore_training, training_state
from wsolbench.utils import seed_everything


# -- building -------------------------------------------------------------------
def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
    return torch.device(name)


def build_dataset(cfg: RunConfig) -> Dataset:
    cls = registry("dataset").resolve(cfg.dataset)
    if getattr(cls, "needs_root", True):
        from pathlib import Path

        root = cfg.data_root
        hint = f"Expected layout:\n{cls.layout}\n" if getattr(cls, "layout", "") else ""
        where = f"Get the data from {cls.homepage}. " if getattr(cls, "homepage", "") else ""
        if not root:
            raise DataError(f"dataset {cfg.dataset!r} needs --data-root PATH. {hint}{where}".strip())
        if not Path(root).is_dir():
            raise DataError(f"data root {root} for dataset {cfg.dataset!r} does not exist. {hint}{where}".strip())
    return registry("dataset").create(cfg.dataset, root=cfg.data_root, seed=cfg.seed, **cfg.dataset_params)


def model_spec(cfg: RunConfig) -> ModelSpec:
    return ModelSpec(
        backbone=cfg.model.backbone,
        pretrained=cfg.model.pretrained,
        pooling=cfg.model.pooling,
        pooling_params=dict(cfg.pooling_params),
        output_stride=cfg.model.output_stride,
        backbone_params=dict(cfg.model.backbone_params),
    )


def build_method(cfg: RunConfig, num_classes: int) -> Method:
    return registry("method").create(cfg.method, num_classes=num_classes, model=model_spec(cfg), **cfg.method_params)


def method_label(cfg: RunConfig) -> str:
    if cfg.label:
        return cfg.label
    cls = registry("method").resolve(cfg.method)
    return cls.label(cfg.method, {**cls.defaults, **cfg.method_params}) if hasattr(cls, "label") else cfg.method


def make_loader(
    split: torch.utils.data.Dataset,
    cfg: RunConfig,
    train: bool,
    device: torch.device,
    seed_offset: int = 0,
    dist: Context = SINGLE,
) -> torch.utils.data.DataLoader:
    """Training (shuffled) or evaluation (in order) batches; with ``dist``, this process's share of them."""
    if len(split) == 0:
        raise DataError("a split is empty: check the data root and the split files")
    generator = torch.Generator().manual_seed(cfg.seed + seed_offset)
    workers = cfg.train.num_workers
    if train:
        batch = cfg.train.batch_size
        collate: Callable[..., Any] = train_collate
    else:
        batch = cfg.eval.batch_size
        multiple = cfg.eval.pad_multiple

        def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
            return eval_collate(items, multiple)

    return torch.utils.data.DataLoader(
        split,
        **dist.loader_sampling(len(split), batch, train, cfg.seed),  # drop_last: a batch of one breaks batch norm
        collate_fn=collate,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        worker_init_fn=seed_worker if workers > 0 else None,
        generator=generator,
    )


# -- optimisation ---------------------------------------------------------------
def make_optimizer(method: Method, cfg: RunConfig) -> torch.optim.Optimizer:
    groups = method.parameter_groups() or [{"params": [p for p in method.parameters() if p.requires_grad]}]
    t = cfg.train
    return torch.optim.SGD(
        groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0, weight_decay=t.weight_decay
    )


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig) -> torch.optim.lr_scheduler.LRScheduler:
    t = cfg.train
    floor = t.lr_min / t.lr

    def factor(epoch: int) -> float:
        if t.schedule == "step" and t.lr_step > 0:
            return max(t.lr_gamma ** (epoch // t.lr_step), floor)
        if t.schedule == "cosine" and t.epochs > 0:
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(epoch, t.epochs) / t.epochs))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class Precision:
    """Autocast settings: bf16/fp16 on CUDA when AMP is on, full precision otherwise."""

    device: torch.device
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    @classmethod
    def choose(cls, device: torch.device, amp: bool) -> Precision:
        if device.type != "cuda" or not amp:
            return cls(device, None, None)
        if torch.cuda.is_bf16_supported():
            return cls(device, torch.bfloat16, None)
        return cls(device, torch.float16, torch.amp.GradScaler("cuda"))

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


# -- loops ----------------------------------------------------------------------
def to_device(batch: dict[str, Any], device: torch.device, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: (batch[k].to(device, non_blocking=True) if k in batch else None) for k in keys if k in batch}


def loss_check_interval(device: torch.device) -> int:
    """Steps between two looks at the training loss from the host: every step on the CPU, where a
    look is free; every 25 on a GPU, where it waits for the queued work. Either way the first
    non-finite loss is reported with its own step."""
    return 1 if device.type == "cpu" else 25


def diverged(bad_step: Tensor, bad_loss: Tensor, epoch: int) -> None:
    """Raise :class:`TrainingDivergedError` if a step of this epoch had a non-finite loss."""
    step = int(bad_step)
    if step >= 0:
        raise TrainingDivergedError(
            f"the training loss became {float(bad_loss)} at epoch {epoch}, step {step}; "
            f"lower train.lr or check the data. The last good checkpoint is kept."
        )


def train_one_epoch(
    method: Method,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    cfg: RunConfig,
    epoch: int,
    on_step: Callable[[], None] | None = None,
    step_fn: TrainStep | None = None,
    dist: Context = SINGLE,
) -> dict[str, float]:
    """One pass over the training split; returns mean loss, training error and the method's logs.

    ``step_fn(batch, backward)`` replaces ``method.training_step`` (under DDP,
    see :func:`wsolbench.distributed.training_step`); the returned figures are
    over all processes of ``dist``.
    """
    device = precision.device
    step_fn = step_fn or method.training_step
    method.train()
    method.on_epoch_start(epoch)
    keys = ("image", "label", "index") + (("mask",) if method.needs_masks else ())
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    wrong = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    extra: dict[str, Tensor] = {}
    check_every = loss_check_interval(device)
    # the first non-finite loss (step and value), kept on the device: no host synchronisation per step
    bad_step = torch.full((), -1, device=device, dtype=torch.long)
    bad_loss = torch.zeros((), device=device)
    scaler = precision.scaler

    def backward(loss: Tensor) -> None:
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()

    for step, raw in enumerate(loader):
        batch = to_device(raw, device, keys)
        if cfg.train.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            out = step_fn(batch, backward)
        loss = out.loss.detach().float()
        first = (bad_step < 0) & ~torch.isfinite(loss)
        bad_step = torch.where(first, step, bad_step)
        bad_loss = torch.where(first, loss, bad_loss)
        if step % check_every == 0:
            diverged(bad_step, bad_loss, epoch)
        if cfg.train.grad_clip > 0:
            if precision.scaler is not None:
                precision.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.train.grad_clip)
        if precision.scaler is not None:
            precision.scaler.step(optimizer)
            precision.scaler.update()
        else:
            optimizer.step()
        n = batch["label"].shape[0]
        total_loss += loss.double() * n
        seen += n
        if out.logits is not None:
            wrong += (out.logits.argmax(1) != batch["label"]).sum()
        for k, v in out.logs.items():
            if k == "loss":
                continue
            v = v.detach().double() if isinstance(v, Tensor) else torch.tensor(float(v), dtype=torch.float64)
            extra[k] = extra.get(k, torch.zeros((), dtype=torch.float64, device=v.device)) + v * n
        if on_step is not None:
            on_step()
    diverged(bad_step, bad_loss, epoch)
    sums = dist.sum({"loss": total_loss.item(), "wrong": wrong.item(), "seen": seen,
                     **{f"train_{k}": v.item() for k, v in extra.items()}})
    seen = max(sums.pop("seen"), 1)
    mean_loss = sums.pop("loss") / seen
    if not math.isfinite(mean_loss):  # another process's loss went bad (this one's is caught above)
        raise TrainingDivergedError(f"the training loss became {mean_loss} during epoch {epoch}")
    logs = {"train_loss": mean_loss, "train_error": 100.0 * sums.pop("wrong") / seen}
    logs.update({k: v / seen for k, v in sums.items()})
    return logs


@dataclass
class Evaluation:
    metrics: dict[str, float]
    per_image: list[dict[str, Any]] = field(default_factory=list)
    accumulator: LocalizationAccumulator | None = None


def _iterate(loader: Any, on_step: Callable[[], None] | None) -> Iterator[Any]:
    for batch in loader:
        yield batch
        if on_step is not None:
            on_step()


def evaluate(
    method: Method,
    loader: torch.utils.data.DataLoader,
    precision: Precision,
    cfg: RunConfig,
    localization: bool = True,
    ids: list[str] | None = None,
    on_step: Callable[[], None] | None = None,
    on_map: Callable[[int, Tensor, Tensor], None] | None = None,
    dist: Context = SINGLE,
) -> Evaluation:
    """Classification error and loss; with ``localization`` also F1+/F1-/PxAP and per-image rows.

    Scores stay on the device until the end; images of a batch that share a
    size are scored together. ``on_map(index, map, mask)`` sees each test
    image's map as it is scored (in [0, 1], at the mask's size): CRF scoring and
    pictures use it. With ``dist``, ``loader`` holds this process's share and the
    result covers every process's images, in order (see :mod:`wsolbench.distributed`).
    """
    device = precision.device
    method.eval()
    acc = LocalizationAccumulator(bins=cfg.eval.bins, threshold=cfg.eval.threshold)
    indices, all_logits, all_labels = [], [], []
    grad = localization and method.needs_grad_at_inference
    for batch in _iterate(loader, on_step):
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(grad), precision.autocast():
            if localization:
                logits, maps = method.infer(images)
            else:
                logits, maps = method.predict(images), None
        all_logits.append(logits.detach().float())
        all_labels.append(labels)
        indices.append(batch["index"])
        if maps is None:
            continue
        maps = maps.detach().float()
        if not bool(torch.isfinite(maps).all()):
            bad = [int(i) for i in batch["index"][~torch.isfinite(maps.cpu()).flatten(1).all(1)]]
            raise UserError(f"method {cfg.method!r} produced NaN or infinite maps for test items {bad}")
        _score_batch(acc, maps, batch, device, on_map)
    per_image = {"logits": _cat(all_logits), "label": _cat(all_labels)}
    totals = {}
    if localization:
        per_image.update(f1_pos=_cat(acc.f1_pos), f1_neg=_cat(acc.f1_neg))
        totals = {"fg": acc.hist_fg, "bg": acc.hist_bg}
    index, scores, hist = dist.collect(_cat(indices), per_image, totals)
    logits, labels = scores["logits"], scores["label"]
    metrics = {
        "cl_error": classification_error(logits, labels),
        "loss": F.cross_entropy(logits, labels).item(),
    }
    rows: list[dict[str, Any]] = []
    if localization:
        acc = LocalizationAccumulator(bins=cfg.eval.bins, threshold=cfg.eval.threshold, f1_pos=[scores["f1_pos"]],
                                      f1_neg=[scores["f1_neg"]], hist_fg=hist["fg"], hist_bg=hist["bg"])
        metrics.update(acc.compute())
        columns = zip(index.tolist(), labels.tolist(), logits.argmax(1).tolist(), scores["f1_pos"].tolist(),
                      scores["f1_neg"].tolist())
        rows = [
            {"id": ids[i] if ids else str(i), "label": y, "pred": p, "f1_pos": round(pos, 4), "f1_neg": round(neg, 4)}
            for i, y, p, pos, neg in columns
        ]
    metrics["n_images"] = int(labels.numel())
    return Evaluation(metrics, rows, acc if localization else None)


def _cat(tensors: list[Tensor]) -> Tensor:
    return torch.cat(tensors) if tensors else torch.empty(0)


def _score_batch(
    acc: LocalizationAccumulator,
    maps: Tensor,
    batch: dict[str, Any],
    device: torch.device,
    on_map: Callable[[int, Tensor, Tensor], None] | None,
) -> None:
    """Score a batch's maps against its masks, images of one size and mask size together, in batch order."""
    sizes = [(tuple(hw), tuple(mask.shape[-2:])) for hw, mask in zip(batch["sizes"], batch["masks"])]
    start = 0
    while start < len(sizes):  # runs of equal sizes keep the images in order
        end = start + 1
        while end < len(sizes) and sizes[end] == sizes[start]:
            end += 1
        (h, w), mask_size = sizes[start]
        m = maps[start:end, :h, :w]
        masks = torch.stack([mk.reshape(mask_size) for mk in batch["masks"][start:end]]).to(device, non_blocking=True)
        if (h, w) != mask_size:
            m = F.interpolate(m[:, None], size=mask_size, mode="bilinear", align_corners=False)[:, 0]
        m = m.clamp(0, 1)
        acc.update(m, masks)
        if on_map is not None:
            for j in range(end - start):
                on_map(int(batch["index"][start + j]), m[j], masks[j])
        start = end


# -- checkpoints ----------------------------------------------------------------
def checkpoint_state(method: Method, cfg: RunConfig, epoch: int, **extra: Any) -> dict[str, Any]:
    return {
        "schema_version": RUN_SCHEMA_VERSION,
        "method": cfg.method,
        "config": cfg.to_dict(),
        "epoch": epoch,
        "model": method.state_dict(),
        **extra,
    }


def load_model_state(method: Method, state: dict[str, Any], cfg: RunConfig) -> None:
    check_checkpoint(state, cfg)
    try:
        method.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"the checkpoint does not fit the model of method {cfg.method!r} with backbone "
            f"{cfg.model.backbone!r}: {str(exc).splitlines()[0]}"
        ) from exc


# -- one run --------------------------------------------------------------------
def new_progress() -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from wsolbench.console import err

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err,
        transient=False,
    )


@dataclass
class RunResult:
    run_dir: Any
    results: dict[str, Any]
    config: RunConfig


def run(
    cfg: RunConfig, argv: list[str] | None = None, quiet: bool = False, resume_from: ResumePoint | None = None
) -> RunResult:
    """Train (unless the method has nothing to train), select on validation, evaluate on test.

    ``resume_from`` (see :func:`resume`) continues that run directory from its
    ``last.pt`` instead of creating a new one. Started by torchrun, the run is
    shared by its processes (see :mod:`wsolbench.distributed`).
    """
    with distributed.session(cfg.device) as (dist, device):
        return _run(cfg, dist, device, argv, quiet or not dist.is_main, resume_from)


def _run(
    cfg: RunConfig, dist: Context, device: torch.device, argv: list[str] | None, quiet: bool,
    resume_from: ResumePoint | None,
) -> RunResult:
    seed_everything(cfg.seed)
    dataset = build_dataset(cfg)
    check_split_labels(dataset, cfg.dataset)
    method = distributed.prepare_model(build_method(cfg, dataset.num_classes).to(device), dist, device)
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    train_split, valid_split, test_split = (dataset.split(s) for s in ("train", "valid", "test"))
    if resume_from is None:
        run_dir, checkpoint = distributed.run_dir_for(dist, lambda: _create_run_dir(cfg, device, argv, dist)), None
    else:
        run_dir, checkpoint = resume_from.run_dir, resume_from.checkpoint
        if dist.is_main:
            resume_from.mark_running(argv)
    try:
        results = _train_and_test(
            cfg, dataset, method, device, (train_split, valid_split, test_split), run_dir, quiet, checkpoint, dist
        )
    except KeyboardInterrupt as exc:
        _mark_stopped(run_dir, "interrupted", str(exc) or "interrupted by the user (Ctrl-C)", dist.is_main)
        if dist.is_main:  # the user has been told how to continue: the command line adds nothing
            raise RunInterrupted(str(exc)) from exc
        raise
    except BaseException as exc:
        _mark_stopped(run_dir, "failed", f"{type(exc).__name__}: {exc}", dist.is_main)
        raise
    run_dir.release()
    return RunResult(run_dir, results, cfg)


def _create_run_dir(cfg: RunConfig, device: torch.device, argv: list[str] | None, dist: Context = SINGLE) -> Any:
    from wsolbench import runs

    runs.check_free_space(cfg.output_dir, cfg.train.min_free_mb)
    name = cfg.run_name or runs.RunDir.default_name(cfg.dataset, cfg.method, cfg.seed)
    run_dir = runs.RunDir.create(cfg.output_dir, name)
    config_dict = cfg.to_dict()
    run_dir.write_config(config_dict)
    manifest = runs.new_manifest(config_dict, str(device), argv)
    manifest["method_label"] = method_label(cfg)
    if dist.active:
        manifest["processes"] = dist.world_size
    run_dir.write_manifest(manifest)
    return run_dir


def resume(path: str, argv: list[str] | None = None, quiet: bool = False) -> RunResult:
    """Continue the killed, interrupted or failed run in ``path`` with its own configuration.

    Under torchrun, rank 0 checks, locks and repairs the run directory; the
    other processes read its configuration and ``last.pt`` (so they must see
    the directory too: same machine or a shared file system).
    """
    from wsolbench.resume import open_run

    if not distributed.from_environment().active:
        point = open_run(path)
        try:
            return run(point.config, argv, quiet, resume_from=point)
        finally:
            point.run_dir.release()
    try:
        device = distributed.follower_point(path, with_checkpoint=False).config.device
    except UserError:
        device = "auto"  # rank 0's open_run says what is wrong with the directory
    with distributed.session(device) as (dist, _):
        point = None
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
            point = distributed.follower_point(path)
        try:
            return run(point.config, argv, quiet, resume_from=point)
        finally:
            point.run_dir.release()


def _mark_stopped(run_dir: Any, status: str, reason: str, tell: bool = True) -> None:
    """Record why the run stopped, keep its files, release its lock; never masks the original error."""
    from wsolbench import runs

    with contextlib.suppress(Exception):
        run_dir.update_manifest(status=status, finished=runs.now(), error=reason)
    run_dir.release()
    if status == "interrupted" and tell:
        from wsolbench.console import err

        err.print(f"{reason}; finished epochs are kept. Continue with: wsolbench run --resume {run_dir.path}",
                  soft_wrap=True)


def _train_and_test(
    cfg: RunConfig,
    dataset: Dataset,
    method: Method,
    device: torch.device,
    splits: tuple[Any, Any, Any],
    run_dir: Any,
    quiet: bool,
    checkpoint: dict[str, Any] | None = None,
    dist: Context = SINGLE,
) -> dict[str, Any]:
    from wsolbench import runs
    from wsolbench.console import err

    train_split, valid_split, test_split = splits
    precision = Precision.choose(device, cfg.train.amp)
    train_loader = make_loader(train_split, cfg, True, device, dist=dist)
    valid_loader = make_loader(valid_split, cfg, False, device, seed_offset=1, dist=dist)
    test_loader = make_loader(test_split, cfg, False, device, seed_offset=2, dist=dist)
    state = TrainState()
    reserve = cfg.train.min_free_mb
    epochs = cfg.train.epochs if method.trainable else 0
    progress = new_progress() if not quiet else None
    ctx = progress if progress is not None else contextlib.nullcontext()
    with ctx:
        if epochs > 0:
            optimizer = make_optimizer(method, cfg)
            scheduler = make_scheduler(optimizer, cfg)
            if checkpoint is not None:
                load_model_state(method, checkpoint, cfg)
                state = restore_training(checkpoint, optimizer, scheduler, precision.scaler)
            step_fn = distributed.training_step(method, dist, device)
            epoch_task = (
                progress.add_task("epochs", total=epochs, completed=state.next_epoch, info="") if progress else None
            )
            batch_task = progress.add_task("train", total=len(train_loader), info="") if progress else None
            for epoch in range(state.next_epoch, epochs):
                if state.stopped_early(cfg.train.patience):  # a run resumed after its early stop
                    break
                t0 = time.perf_counter()
                train_loader.generator.manual_seed(epoch_seed(cfg.seed, epoch))
                dist.start_epoch(train_loader, cfg.seed, epoch)
                if progress:
                    progress.reset(batch_task, total=len(train_loader), description=f"train {epoch + 1}/{epochs}")
                step = (lambda: progress.advance(batch_task)) if progress else None
                logs = train_one_epoch(method, train_loader, optimizer, precision, cfg, epoch, step, step_fn, dist)
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                state.train_seconds += time.perf_counter() - t0
                row: dict[str, Any] = {"epoch": epoch, "lr": lr, **logs}
                improved = False
                if (epoch + 1) % cfg.eval.every == 0 or epoch == epochs - 1:
                    t1 = time.perf_counter()
                    if progress:
                        progress.reset(batch_task, total=len(valid_loader), description="valid")
                    val = evaluate(method, valid_loader, precision, cfg, localization=False, on_step=step, dist=dist)
                    state.valid_seconds += time.perf_counter() - t1
                    row.update(valid_error=val.metrics["cl_error"], valid_loss=val.metrics["loss"])
                    key = (val.metrics["cl_error"], val.metrics["loss"])
                    improved = key < (state.best["cl_error"], state.best["loss"])
                    if improved:
                        state.best = {"epoch": epoch, "cl_error": key[0], "loss": key[1]}
                state.stale = 0 if improved else state.stale + 1
                row["best_epoch"] = state.best["epoch"]
                row["seconds"] = round(time.perf_counter() - t0, 3)
                state.next_epoch = epoch + 1
                # this order keeps the files consistent whenever a kill falls (see wsolbench.resume)
                run_dir.append_metrics(row)
                run_dir.save_checkpoint(
                    runs.LAST,
                    checkpoint_state(
                        method, cfg, epoch, **training_state(optimizer, scheduler, precision.scaler, state)
                    ),
                    reserve_mb=reserve,
                )
                if improved:
                    run_dir.save_checkpoint(runs.BEST, checkpoint_state(method, cfg, epoch), reserve_mb=reserve)
                run_dir.update_manifest(train_seconds=round(state.train_seconds, 3),
                                        valid_seconds=round(state.valid_seconds, 3), epochs_done=epoch + 1)
                info = (
                    f"loss {logs['train_loss']:.4f}  valid err {row.get('valid_error', float('nan')):.2f}%"
                    + ("  *" if improved else "")
                )
                if progress:
                    progress.update(epoch_task, advance=1, info=info)
                if state.stopped_early(cfg.train.patience):
                    if not quiet:
                        err.print(
                            f"early stop at epoch {epoch + 1}: no better validation error for {state.stale} epochs"
                        )
                    break
            if dist.is_main:
                load_model_state(method, run_dir.load_checkpoint(runs.BEST), cfg)
            dist.broadcast_module(method)
        else:
            run_dir.save_checkpoint(runs.BEST, checkpoint_state(method, cfg, -1), reserve_mb=reserve)
        t2 = time.perf_counter()
        if progress:
            task = progress.add_task("test", total=len(test_loader), info="")
            step = lambda: progress.advance(task)  # noqa: E731
        else:
            step = None
        ids = getattr(test_split, "ids", None)
        extras = TestExtras(cfg, dataset, test_split)
        test = evaluate(
            method, test_loader, precision, cfg, localization=True, ids=ids, on_step=step, on_map=extras.update,
            dist=dist,
        )
        extras.gather(dist)
        eval_seconds = time.perf_counter() - t2
    results = test_results(
        cfg, test.metrics, classifies=method.classifies, best_epoch=state.best["epoch"],
        valid_error=None if state.best["epoch"] < 0 else state.best["cl_error"],
    )
    if test.accumulator is not None and test.accumulator.hist_fg is not None:
        run_dir.write_histograms(fg=test.accumulator.hist_fg.cpu().numpy(), bg=test.accumulator.hist_bg.cpu().numpy())
    results.update(extras.finish(run_dir.path if dist.is_main else None, test))
    run_dir.write_per_image(test.per_image)
    run_dir.write_results(results)
    run_dir.update_manifest(
        status="completed",
        finished=runs.now(),
        train_seconds=round(state.train_seconds, 3),
        valid_seconds=round(state.valid_seconds, 3),
        eval_seconds=round(eval_seconds, 3),
        peak_memory_mb=runs.peak_memory_mb(device),
        best_epoch=state.best["epoch"],
    )
    return results


def test_results(cfg: RunConfig, metrics: dict[str, Any], classifies: bool = True, **fields: Any) -> dict[str, Any]:
    """``results.json``: the run's identity, ``fields``, the test metrics and the protocol.

    ``cl_error`` is null for methods that make no class prediction (``classifies = False``).
    """
    return {
        "schema_version": RUN_SCHEMA_VERSION,
        "method": cfg.method,
        "method_label": method_label(cfg),
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "profile": cfg.profile,
        "provided_by": get_host().provenance(
            method=cfg.method,
            pooling=cfg.model.pooling or registry("method").resolve(cfg.method).default_pooling,
            dataset=cfg.dataset,
        ),
        **fields,
        **{k: v for k, v in metrics.items() if k != "loss"},
        **({} if classifies else {"cl_error": None}),
        "protocol": {
            "f1": f"per-image Dice at threshold {cfg.eval.threshold}, mean over images",
            "pxap": f"pixel AP over the set, {cfg.eval.bins} histogram bins",
            "best_threshold": "pooled over the set at the threshold maximising Dice (not comparable with F1)",
        },
    }

