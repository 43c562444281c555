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

from wsolbench import RUN_SCHEMA_VERSION
from wsolbench.config import RunConfig
from wsolbench.data import eval_collate, seed_worker, train_collate
from wsolbench.errors import DataError, TrainingDivergedError, UserError
from wsolbench.interfaces import Dataset, Method, ModelSpec
from wsolbench.metrics import LocalizationAccumulator, classification_error
from wsolbench.plugins import get_host, registry
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
        backbone_params=dict(cfg.model.backbone_params),
    )


def build_method(cfg: RunConfig, num_classes: int) -> Method:
    return registry("method").create(cfg.method, num_classes=num_classes, model=model_spec(cfg), **cfg.method_params)


def method_label(cfg: RunConfig) -> str:
    cls = registry("method").resolve(cfg.method)
    return cls.label(cfg.method, {**cls.defaults, **cfg.method_params}) if hasattr(cls, "label") else cfg.method


def make_loader(
    split: torch.utils.data.Dataset, cfg: RunConfig, train: bool, device: torch.device, seed_offset: int = 0
) -> torch.utils.data.DataLoader:
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
        batch_size=batch,
        shuffle=train,
        drop_last=train and len(split) > batch,  # a batch of one breaks batch norm
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


def train_one_epoch(
    method: Method,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    cfg: RunConfig,
    epoch: int,
    on_step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """One pass over the training split; returns mean loss, training error and the method's logs."""
    device = precision.device
    method.train()
    method.on_epoch_start(epoch)
    keys = ("image", "label", "index") + (("mask",) if method.needs_masks else ())
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    wrong = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    extra: dict[str, Tensor] = {}
    check_every = 1 if device.type == "cpu" else 25
    for step, raw in enumerate(loader):
        batch = to_device(raw, device, keys)
        if cfg.train.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)

        def backward(loss: Tensor) -> None:
            if precision.scaler is not None:
                precision.scaler.scale(loss).backward()
            else:
                loss.backward()

        with precision.autocast():
            out = method.training_step(batch, backward)
        loss = out.loss.detach().float()
        if step % check_every == 0 and not bool(torch.isfinite(loss)):
            raise TrainingDivergedError(
                f"the training loss became {loss.item()} at epoch {epoch}, step {step}; "
                f"lower train.lr or check the data. The last good checkpoint is kept."
            )
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
    mean_loss = (total_loss / max(seen, 1)).item()
    if not math.isfinite(mean_loss):
        raise TrainingDivergedError(f"the training loss became {mean_loss} during epoch {epoch}")
    logs = {"train_loss": mean_loss, "train_error": 100.0 * wrong.item() / max(seen, 1)}
    logs.update({f"train_{k}": (v / max(seen, 1)).item() for k, v in extra.items()})
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
) -> Evaluation:
    """Classification error and loss; with ``localization`` also F1+/F1-/PxAP and per-image rows."""
    device = precision.device
    method.eval()
    acc = LocalizationAccumulator(bins=cfg.eval.bins, threshold=cfg.eval.threshold)
    all_logits, all_labels, rows = [], [], []
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
        logits = logits.detach().float()
        all_logits.append(logits)
        all_labels.append(labels)
        if maps is None:
            continue
        maps = maps.detach().float()
        if not bool(torch.isfinite(maps).all()):
            bad = [int(i) for i in batch["index"][~torch.isfinite(maps.cpu()).flatten(1).all(1)]]
            raise UserError(f"method {cfg.method!r} produced NaN or infinite maps for test items {bad}")
        preds = logits.argmax(1)
        for i, ((h, w), mask) in enumerate(zip(batch["sizes"], batch["masks"])):
            m = maps[i, :h, :w]
            mask = mask.to(device).reshape(mask.shape[-2:])
            if tuple(m.shape) != tuple(mask.shape):
                m = F.interpolate(m[None, None], size=mask.shape, mode="bilinear", align_corners=False)[0, 0]
            pos, neg = acc.update(m.clamp(0, 1), mask)
            index = int(batch["index"][i])
            rows.append(
                {
                    "id": ids[index] if ids else str(index),
                    "label": int(labels[i]),
                    "pred": int(preds[i]),
                    "f1_pos": round(float(pos), 4),
                    "f1_neg": round(float(neg), 4),
                }
            )
    logits = torch.cat(all_logits)
    labels = torch.cat(all_labels)
    metrics = {
        "cl_error": classification_error(logits, labels),
        "loss": F.cross_entropy(logits, labels).item(),
    }
    if localization:
        metrics.update(acc.compute())
    metrics["n_images"] = int(labels.numel())
    return Evaluation(metrics, rows, acc if localization else None)


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
    if state.get("schema_version", 0) > RUN_SCHEMA_VERSION:
        raise UserError(
            f"the checkpoint was written by a newer wsolbench (schema {state['schema_version']} > "
            f"{RUN_SCHEMA_VERSION}); upgrade wsolbench to read it"
        )
    if state.get("method") != cfg.method:
        raise UserError(f"the checkpoint is of method {state.get('method')!r}, not {cfg.method!r}")
    method.load_state_dict(state["model"])


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


def run(cfg: RunConfig, argv: list[str] | None = None, quiet: bool = False) -> RunResult:
    """Train (unless the method has nothing to train), select on validation, evaluate on test."""
    from wsolbench import runs

    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    dataset = build_dataset(cfg)
    method = build_method(cfg, dataset.num_classes).to(device)
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    train_split, valid_split, test_split = (dataset.split(s) for s in ("train", "valid", "test"))
    name = cfg.run_name or runs.RunDir.default_name(cfg.dataset, cfg.method, cfg.seed)
    run_dir = runs.RunDir.create(cfg.output_dir, name)
    config_dict = cfg.to_dict()
    run_dir.write_config(config_dict)
    manifest = runs.new_manifest(config_dict, str(device), argv)
    manifest["method_label"] = method_label(cfg)
    run_dir.write_manifest(manifest)
    try:
        results = _train_and_test(cfg, dataset, method, device, (train_split, valid_split, test_split), run_dir, quiet)
    except KeyboardInterrupt:
        run_dir.update_manifest(status="interrupted", finished=runs.now(), error="interrupted by the user")
        run_dir.release()
        raise
    except BaseException as exc:
        run_dir.update_manifest(status="failed", finished=runs.now(), error=f"{type(exc).__name__}: {exc}")
        run_dir.release()
        raise
    run_dir.release()
    return RunResult(run_dir, results, cfg)


def _train_and_test(
    cfg: RunConfig,
    dataset: Dataset,
    method: Method,
    device: torch.device,
    splits: tuple[Any, Any, Any],
    run_dir: Any,
    quiet: bool,
) -> dict[str, Any]:
    from wsolbench import runs
    from wsolbench.console import err

    train_split, valid_split, test_split = splits
    precision = Precision.choose(device, cfg.train.amp)
    train_loader = make_loader(train_split, cfg, True, device)
    valid_loader = make_loader(valid_split, cfg, False, device, seed_offset=1)
    test_loader = make_loader(test_split, cfg, False, device, seed_offset=2)
    train_seconds = valid_seconds = 0.0
    best = {"epoch": -1, "cl_error": float("inf"), "loss": float("inf")}
    epochs = cfg.train.epochs if method.trainable else 0
    progress = new_progress() if not quiet else None
    ctx = progress if progress is not None else contextlib.nullcontext()
    with ctx:
        if epochs > 0:
            optimizer = make_optimizer(method, cfg)
            scheduler = make_scheduler(optimizer, cfg)
            epoch_task = progress.add_task("epochs", total=epochs, info="") if progress else None
            batch_task = progress.add_task("train", total=len(train_loader), info="") if progress else None
            stale = 0
            for epoch in range(epochs):
                t0 = time.perf_counter()
                if progress:
                    progress.reset(batch_task, total=len(train_loader), description=f"train {epoch + 1}/{epochs}")
                step = (lambda: progress.advance(batch_task)) if progress else None
                logs = train_one_epoch(method, train_loader, optimizer, precision, cfg, epoch, step)
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                train_seconds += time.perf_counter() - t0
                row: dict[str, Any] = {"epoch": epoch, "lr": lr, **logs}
                improved = False
                if (epoch + 1) % cfg.eval.every == 0 or epoch == epochs - 1:
                    t1 = time.perf_counter()
                    if progress:
                        progress.reset(batch_task, total=len(valid_loader), description="valid")
                    val = evaluate(method, valid_loader, precision, cfg, localization=False, on_step=step)
                    valid_seconds += time.perf_counter() - t1
                    row.update(valid_error=val.metrics["cl_error"], valid_loss=val.metrics["loss"])
                    key = (val.metrics["cl_error"], val.metrics["loss"])
                    if key < (best["cl_error"], best["loss"]):
                        best = {"epoch": epoch, "cl_error": key[0], "loss": key[1]}
                        improved = True
                        run_dir.save_checkpoint(runs.BEST, checkpoint_state(method, cfg, epoch))
                row["best_epoch"] = best["epoch"]
                row["seconds"] = round(time.perf_counter() - t0, 3)
                run_dir.append_metrics(row)
                run_dir.save_checkpoint(
                    runs.LAST,
                    checkpoint_state(
                        method, cfg, epoch, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        best=best, rng=_rng_state(),
                    ),
                )
                run_dir.update_manifest(train_seconds=round(train_seconds, 3), valid_seconds=round(valid_seconds, 3),
                                        epochs_done=epoch + 1)
                info = (
                    f"loss {logs['train_loss']:.4f}  valid err {row.get('valid_error', float('nan')):.2f}%"
                    + ("  *" if improved else "")
                )
                if progress:
                    progress.update(epoch_task, advance=1, info=info)
                stale = 0 if improved else stale + 1
                if cfg.train.patience and stale >= cfg.train.patience:
                    if not quiet:
                        err.print(f"early stop at epoch {epoch + 1}: no better validation error for {stale} epochs")
                    break
            load_model_state(method, run_dir.load_checkpoint(runs.BEST), cfg)
        else:
            run_dir.save_checkpoint(runs.BEST, checkpoint_state(method, cfg, -1))
        t2 = time.perf_counter()
        if progress:
            task = progress.add_task("test", total=len(test_loader), info="")
            step = lambda: progress.advance(task)  # noqa: E731
        else:
            step = None
        ids = getattr(test_split, "ids", None)
        test = evaluate(method, test_loader, precision, cfg, localization=True, ids=ids, on_step=step)
        eval_seconds = time.perf_counter() - t2
    results = {
        "schema_version": RUN_SCHEMA_VERSION,
        "method": cfg.method,
        "method_label": method_label(cfg),
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "profile": cfg.profile,
        "best_epoch": best["epoch"],
        "valid_error": None if best["epoch"] < 0 else best["cl_error"],
        **{k: v for k, v in test.metrics.items() if k != "loss"},
        "protocol": {
            "f1": f"per-image Dice at threshold {cfg.eval.threshold}, mean over images",
            "pxap": f"pixel AP over the set, {cfg.eval.bins} histogram bins",
            "best_threshold": "pooled over the set at the threshold maximising Dice (not comparable with F1)",
        },
    }
    if test.accumulator is not None and test.accumulator.hist_fg is not None:
        import numpy as np

        np.savez_compressed(
            run_dir.path / "histograms.npz",
            fg=test.accumulator.hist_fg.cpu().numpy(),
            bg=test.accumulator.hist_bg.cpu().numpy(),
        )
    run_dir.write_per_image(test.per_image)
    run_dir.write_results(results)
    run_dir.update_manifest(
        status="completed",
        finished=runs.now(),
        train_seconds=round(train_seconds, 3),
        valid_seconds=round(valid_seconds, 3),
        eval_seconds=round(eval_seconds, 3),
        peak_memory_mb=runs.peak_memory_mb(device),
        best_epoch=best["epoch"],
    )
    return results


def _rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1].tolist(),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def plugin_versions() -> dict[str, str]:
    return get_host().loaded_versions()
