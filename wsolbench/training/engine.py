"""The loops: train one epoch, evaluate a split, score a batch.

They report their progress as :class:`Event` values to a listener (a
progress display, a logger) and draw nothing themselves. A whole run (build,
resume, model selection, checkpoints, run files) is :mod:`wsolbench.training.runner`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from wsolbench.config import RunConfig
from wsolbench.data.samples import eval_collate, seed_worker, train_collate
from wsolbench.errors import DataError, TrainingDivergedError, UserError
from wsolbench.interfaces import Event, Method
from wsolbench.scoring.extras import TestExtras
from wsolbench.scoring.metrics import ChosenThresholds, classification_error
from wsolbench.scoring.outputs import Evaluation
from wsolbench.scoring.scorer import Scorer, box_columns, split_metrics
from wsolbench.training.distributed import SINGLE, Context, TrainStep

#: receives the events (``None`` where nobody listens)
Listener = Callable[[Event], None]


def tell(listener: Listener | None, kind: str, **fields: Any) -> None:
    """Send ``Event(kind, **fields)`` to ``listener`` (nothing when nobody listens)."""
    if listener is not None:
        listener(Event(kind, **fields))


# -- batches --------------------------------------------------------------------
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
    listener: Listener | None = None,
    step_fn: TrainStep | None = None,
    dist: Context = SINGLE,
) -> dict[str, float]:
    """One pass over the training split; returns mean loss, training error and the method's logs.

    ``step_fn(batch, backward)`` replaces ``method.training_step`` (under DDP,
    see :func:`wsolbench.training.distributed.training_step`); the returned figures are
    over all processes of ``dist``. ``listener`` hears ``phase_started`` and a
    ``step`` per batch.
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
    if listener is not None:
        listener(Event("phase_started", phase="train", epoch=epoch, total=len(loader)))

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
        tell(listener, "step")
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


def evaluate(
    method: Method,
    loader: torch.utils.data.DataLoader,
    precision: Precision,
    cfg: RunConfig,
    localization: bool = True,
    ids: list[str] | None = None,
    listener: Listener | None = None,
    on_map: Callable[[int, Tensor, Tensor], None] | None = None,
    dist: Context = SINGLE,
    phase: str = "test",
    thresholds: ChosenThresholds | None = None,
) -> Evaluation:
    """Classification error and loss; with ``localization`` also the pixel and box metrics and per-image rows.

    Scores stay on the device until the end; images of a batch that share a
    size are scored together. ``on_map(index, map, mask)`` sees each test
    image's map as it is scored (in [0, 1], at the mask's size): CRF scoring and
    pictures use it. ``listener`` hears ``phase_started`` (``phase``) and a
    ``step`` per batch. With ``dist``, ``loader`` holds this process's share and the
    result covers every process's images, in order (see :mod:`wsolbench.training.distributed`).
    With ``eval.map_class = "ground_truth"`` the maps are those of each image's
    true class (the method localizes again the images it misclassifies).
    ``thresholds`` (the validation split's best, :func:`validation_thresholds`)
    give the ``*_at_val`` metrics and ``top*_loc``'s threshold; the result's
    ``best_thresholds`` are this split's own.
    """
    device = precision.device
    method.eval()
    scorer = Scorer(cfg.eval)
    indices, all_logits, all_labels = [], [], []
    grad = localization and method.needs_grad_at_inference
    if listener is not None:
        listener(Event("phase_started", phase=phase, total=len(loader)))
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(grad), precision.autocast():
            if localization:
                logits, maps = method.infer(images)
                if cfg.eval.map_class == "ground_truth":
                    maps = _true_class_maps(method, images, logits, labels, maps)
            else:
                logits, maps = method.predict(images), None
        all_logits.append(logits.detach().float())
        all_labels.append(labels)
        indices.append(batch["index"])
        if maps is not None:
            maps = maps.detach().float()
            if not bool(torch.isfinite(maps).all()):
                bad = [int(i) for i in batch["index"][~torch.isfinite(maps.cpu()).flatten(1).all(1)]]
                raise UserError(f"method {cfg.method!r} produced NaN or infinite maps for test items {bad}")
            score_batch(scorer, maps, batch, device, on_map)
        tell(listener, "step")
    per_image = {"logits": _cat(all_logits), "label": _cat(all_labels)}
    totals = {}
    if localization:
        per_image.update(scorer.per_image())
        totals = {"fg": scorer.pixels.hist_fg, "bg": scorer.pixels.hist_bg}
    index, scores, hist = dist.collect(_cat(indices), per_image, totals)
    logits, labels = scores["logits"], scores["label"]
    metrics = {
        "cl_error": classification_error(logits, labels),
        "loss": F.cross_entropy(logits, labels).item(),
    }
    rows: list[dict[str, Any]] = []
    acc = best = None
    if localization:
        scored, acc = split_metrics(cfg.eval, scores, hist["fg"], hist["bg"], logits, labels, thresholds)
        metrics.update(scored)
        best = ChosenThresholds.choose(scores["iou_largest"], scores["iou_any"], hist["fg"], hist["bg"])
        columns = zip(index.tolist(), labels.tolist(), logits.argmax(1).tolist(), scores["f1_pos"].tolist(),
                      scores["f1_neg"].tolist(), box_columns(scores, thresholds))
        rows = [
            {"id": ids[i] if ids else str(i), "label": y, "pred": p, "f1_pos": round(pos, 4), "f1_neg": round(neg, 4),
             **boxes}
            for i, y, p, pos, neg, boxes in columns
        ]
    metrics["n_images"] = int(labels.numel())
    return Evaluation(metrics, rows, acc, best)


def validation_thresholds(
    method: Method, dataset: Any, cfg: RunConfig, precision: Precision, dist: Context = SINGLE,
    listener: Listener | None = None,
) -> ChosenThresholds | None:
    """The CVPR 2020 protocol's thresholds: the best of the validation split's maps, scored once with the
    model as it is (the kept one); ``None`` when the dataset has no validation split, or an empty one."""
    if "valid" not in dataset.split_names:
        return None
    split = dataset.split("valid", train=False)
    if len(split) == 0:
        return None
    loader = make_loader(split, cfg, False, precision.device, seed_offset=1, dist=dist)
    return evaluate(method, loader, precision, cfg, localization=True, listener=listener, dist=dist,
                    phase="valid").best_thresholds


def score_split(
    method: Method, dataset: Any, split: str, cfg: RunConfig, precision: Precision, dist: Context = SINGLE,
    listener: Listener | None = None,
) -> tuple[Evaluation, TestExtras, dict[str, Any]]:
    """Score ``split`` as a run scores its test split: thresholds chosen on the validation split (the split's
    own when it is ``valid``), every map scored, CRF and pictures collected from every process.

    Returns the evaluation, its extras (for :func:`wsolbench.scoring.outputs.write_outputs`) and the
    ``results.json`` fields that say how it was scored.
    """
    chosen = None if split == "valid" else validation_thresholds(method, dataset, cfg, precision, dist, listener)
    items = dataset.split(split, train=False)
    extras = TestExtras(cfg, dataset, items)
    scored = evaluate(
        method, make_loader(items, cfg, False, precision.device, seed_offset=2, dist=dist), precision, cfg,
        localization=True, ids=getattr(items, "ids", None), listener=listener, on_map=extras.update, dist=dist,
        phase=split, thresholds=chosen,
    )
    extras.gather(dist)
    fields = {"classifies": method.classifies, "thresholds_from": split if chosen is None else "valid",
              "dataset": dataset.report_name or cfg.dataset}
    return scored, extras, fields


def _cat(tensors: list[Tensor]) -> Tensor:
    return torch.cat(tensors) if tensors else torch.empty(0)


def _true_class_maps(method: Method, images: Tensor, logits: Tensor, labels: Tensor, maps: Tensor) -> Tensor:
    """``maps`` with the misclassified images' maps drawn again for their true class
    (:meth:`Method.localize_class`, which every method answers for any class)."""
    wrong = logits.argmax(1) != labels
    if not bool(wrong.any()):
        return maps
    maps = maps.clone()
    maps[wrong] = method.localize_class(images[wrong], labels[wrong]).to(maps.dtype)
    return maps


def fit_maps(maps: Tensor, image_size: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Maps ``(n, H, W)`` of a padded batch cropped to their images' ``image_size``, resized (bilinear) to
    ``size`` when it differs, clamped to [0, 1]: what evaluation scores and ``predict`` writes."""
    m = maps[:, : image_size[0], : image_size[1]]
    if tuple(image_size) != tuple(size):
        m = F.interpolate(m[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return m.clamp(0, 1)


def score_batch(
    scorer: Scorer,
    maps: Tensor,
    batch: dict[str, Any],
    device: torch.device,
    on_map: Callable[[int, Tensor, Tensor], None] | None,
) -> None:
    """Score a batch's maps against its masks (and boxes, ignore regions), images of one size and mask size
    together, in batch order."""
    sizes = [(tuple(hw), tuple(mask.shape[-2:])) for hw, mask in zip(batch["sizes"], batch["masks"])]
    start = 0
    while start < len(sizes):  # runs of equal sizes keep the images in order
        end = start + 1
        while end < len(sizes) and sizes[end] == sizes[start]:
            end += 1
        (h, w), mask_size = sizes[start]
        m = fit_maps(maps[start:end], (h, w), mask_size)
        masks = torch.stack([mk.reshape(mask_size) for mk in batch["masks"][start:end]]).to(device, non_blocking=True)
        part = slice(start, end)
        scorer.update(m, masks, batch.get("boxes", [None] * len(sizes))[part],
                      batch.get("ignore", [None] * len(sizes))[part])
        if on_map is not None:
            for j in range(end - start):
                on_map(int(batch["index"][start + j]), m[j], masks[j])
        start = end


