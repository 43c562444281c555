"""Maps of a split scored against its masks and boxes, under the run's geometry.

A run's evaluation (:mod:`wsolbench.training.engine`) and ``evaluate
--scoremaps`` (:mod:`wsolbench.scoring.scoremaps`) give each image's map at
its mask's size; :class:`Scorer` applies ``eval.protocol`` (``native``: as
given; ``wsoleval``: maps resized bilinearly, masks and ignore regions by
nearest neighbour, boxes by ``int(x * 224 / width)``, all to 224 x 224 as
clovaai/wsolevaluation does), takes the true boxes from the item or from the
mask's components, and feeds the pixel and box accumulators.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from wsolbench.data.boxes import boxes_from_mask
from wsolbench.scoring.metrics import (
    WSOLEVAL_SIZE,
    BoxAccumulator,
    ChosenThresholds,
    LocalizationAccumulator,
    box_metrics,
    maxboxacc_index,
    scale_boxes,
    wsoleval_edges,
)


def pixel_accumulator(settings: Any) -> LocalizationAccumulator:
    """The pixel metrics' accumulator of the ``eval`` settings: ``eval.bins`` bins of equal width, or under
    ``eval.protocol = "wsoleval"`` wsolevaluation's PxAP bins (the grid of ``eval.cam_curve_interval``)."""
    if settings.protocol == "wsoleval":
        edges = wsoleval_edges(settings.cam_curve_interval)
        return LocalizationAccumulator(bins=len(edges) - 1, threshold=settings.threshold, edges=edges)
    return LocalizationAccumulator(bins=settings.bins, threshold=settings.threshold)


@dataclass
class Scorer:
    """The pixel and box accumulators of one split, with the run's ``eval`` settings."""

    settings: Any  #: the run's ``eval`` section (:class:`wsolbench.config.EvalConfig`)
    pixels: LocalizationAccumulator = field(init=False)
    boxes: BoxAccumulator = field(init=False)

    def __post_init__(self) -> None:
        self.pixels = pixel_accumulator(self.settings)
        self.boxes = BoxAccumulator(interval=self.settings.cam_curve_interval)

    def update(
        self,
        maps: Tensor,
        masks: Tensor,
        boxes: Sequence[Tensor | None] | None = None,
        ignore: Sequence[Tensor | None] | None = None,
    ) -> dict[str, Tensor]:
        """Score maps ``(n, H, W)`` at their masks' size ``(n, H, W)`` (or, under ``wsoleval``, at 224 x 224);
        ``boxes`` and ``ignore`` per image,
        ``None`` where an image has none (its boxes then come from its mask). Returns per-image scores."""
        n = maps.shape[0]
        boxes = list(boxes) if boxes is not None else [None] * n
        truth = [boxes_from_mask(m) if b is None else b.reshape(-1, 4).long().cpu() for b, m in zip(boxes, masks)]
        ignored = None
        if ignore is not None and any(i is not None for i in ignore):
            ignored = torch.stack([torch.zeros(masks.shape[-2:], dtype=torch.bool) if i is None
                                   else i.reshape(masks.shape[-2:]).bool() for i in ignore]).to(masks.device)
        if self.settings.protocol == "wsoleval":
            size = (WSOLEVAL_SIZE, WSOLEVAL_SIZE)
            truth = [scale_boxes(b, tuple(masks.shape[-2:]), size) for b in truth]
            if tuple(maps.shape[-2:]) != size:  # maps of 224 x 224 (wsolevaluation's own files) are kept as given
                maps = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
                maps = maps.clamp(0, 1)
            masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0]
            if ignored is not None:
                ignored = F.interpolate(ignored[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
        pos, neg = self.pixels.update(maps, masks, ignored)
        largest, anyone = self.boxes.update(maps, truth)
        return {"f1_pos": pos, "f1_neg": neg, "iou_largest": largest, "iou_any": anyone}

    def per_image(self) -> dict[str, Tensor]:
        """Every image's scores so far, in order (what processes gather before :func:`split_metrics`)."""
        def cat(parts: list[Tensor], columns: int = 0) -> Tensor:
            return torch.cat(parts) if parts else torch.empty((0, columns) if columns else (0,))

        columns = len(self.boxes.thresholds)
        return {"f1_pos": cat(self.pixels.f1_pos), "f1_neg": cat(self.pixels.f1_neg),
                "iou_largest": cat(self.boxes.iou_largest, columns), "iou_any": cat(self.boxes.iou_any, columns)}


def split_metrics(
    settings: Any, scores: dict[str, Tensor], hist_fg: Tensor | None, hist_bg: Tensor | None,
    logits: Tensor | None = None, labels: Tensor | None = None, chosen: ChosenThresholds | None = None,
) -> tuple[dict[str, float], LocalizationAccumulator]:
    """The pixel and box metrics of a split from its per-image scores and histograms (of every process);
    with ``chosen`` (the validation split's thresholds) also the metrics at those thresholds."""
    pixels = pixel_accumulator(settings)
    pixels.f1_pos, pixels.f1_neg, pixels.hist_fg, pixels.hist_bg = [scores["f1_pos"]], [scores["f1_neg"]], hist_fg, hist_bg
    metrics = pixels.compute(None if chosen is None else chosen.pixel_bin)
    thresholds = BoxAccumulator(interval=settings.cam_curve_interval).thresholds
    metrics.update(box_metrics(scores["iou_largest"], scores["iou_any"], thresholds, logits, labels, chosen))
    return metrics, pixels


def box_columns(scores: dict[str, Tensor], chosen: ChosenThresholds | None = None) -> list[dict[str, float]]:
    """``per_image.csv``'s box columns: each image's best IoU (x100) of the largest contour's box at the
    threshold of ``top1_loc`` (``chosen``'s, else MaxBoxAcc's on this split) (``box_iou``), and of any
    contour's box there (``box_iou_any``)."""
    if scores["iou_largest"].shape[0] == 0:
        return []
    at = maxboxacc_index(scores["iou_largest"]) if chosen is None else chosen.box
    return [{"box_iou": round(100.0 * float(a), 4), "box_iou_any": round(100.0 * float(b), 4)}
            for a, b in zip(scores["iou_largest"][:, at].tolist(), scores["iou_any"][:, at].tolist())]
