"""Metrics, paper protocol first.

All localization metrics read maps in [0, 1] and ground-truth masks at the same
resolution; foreground is ``mask >= 0.5``.

``cl_error``
    Classification error, percent of misclassified images.
``f1_pos`` / ``f1_neg`` (the paper's protocol)
    The map is binarised at ``threshold`` (0.5). Per image, Dice of the
    predicted and true foreground (F1+) and of their complements (F1-); then
    the mean over images, x100. Dice of two empty sets is defined as 1 (the
    prediction agrees with the truth): an image without foreground scores
    F1+ = 100 when nothing is predicted and 0 otherwise; likewise F1- for an
    image that is all foreground.
``pxap``
    Pixel average precision (Choe et al., CVPR 2020, "wsolevaluation"): over
    the whole set, histograms of map values at foreground and background
    pixels in fixed bins of width ``1/bins`` (a value of exactly 1 has its own
    bin); each bin's lower edge is a threshold; precision and recall at every
    threshold from the reversed cumulative sums; AP = sum of precision x
    recall increments, x100. O(pixels + bins).
``dice_best`` / ``iou_best`` / ``threshold_best`` (a different protocol)
    Dice and IoU of all pixels of the set pooled together, at the single
    threshold (of the same grid) that maximises pooled Dice. NOT comparable
    with the per-image F1 at 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class Protocol:
    """How a group of metrics is computed: recorded in ``results.json`` and noted under report tables."""

    name: str  #: the key in ``results.json``'s ``protocol`` (when ``record`` is set)
    note: str  #: the report's sentence; ``{metrics}`` becomes the titles of the reported metrics, ``{pct}`` a percent sign
    record: str = ""  #: ``results.json``'s text; ``{threshold}`` and ``{bins}`` are the run's settings


@dataclass(frozen=True)
class Metric:
    """One metric's facts: every table, report and page reads them from :data:`METRICS`."""

    name: str  #: the key in ``results.json``
    title: str  #: the column title in text, Markdown and CSV-free tables
    latex: str  #: the column title in LaTeX
    better: str  #: ``"higher"``, ``"lower"`` or ``"none"`` (a setting, never ranked or set in bold)
    protocol: str  #: a key of :data:`PROTOCOLS`
    description: str
    decimals: int = 2
    default: bool = False  #: shown by ``wsolbench report`` unless ``--metrics`` says otherwise

    def format(self, value: float | None) -> str:
        """``value`` with the metric's decimals; ``-`` for a missing or NaN value."""
        return "-" if value is None or value != value else f"{value:.{self.decimals}f}"  # noqa: PLR0124


#: the protocols of :data:`METRICS`
PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("classification", "{metrics}: classification error on the test set ({pct})."),
        Protocol(
            "f1",
            "{metrics}: per-image Dice of the foreground / background, maps binarised at 0.5, "
            "mean over test images (x100; the paper's protocol).",
            "per-image Dice at threshold {threshold}, mean over images",
        ),
        Protocol(
            "pxap",
            "{metrics}: pixel average precision over the test set, fixed-bin histograms (x100).",
            "pixel AP over the set, {bins} histogram bins",
        ),
        Protocol(
            "best_threshold",
            "{metrics}: all test pixels pooled, at the threshold that maximises Dice: "
            "a different protocol, not comparable with F1 at 0.5.",
            "pooled over the set at the threshold maximising Dice (not comparable with F1)",
        ),
    )
}

#: every metric, in display order; adding one is an entry here plus its computation
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("cl_error", "Err.", "Err.", "lower", "classification", "classification error (%)", default=True),
        Metric("f1_pos", "F1+", "F1$^+$", "higher", "f1",
               "per-image Dice of the foreground at threshold 0.5, mean over images (x100)", default=True),
        Metric("f1_neg", "F1-", "F1$^-$", "higher", "f1",
               "per-image Dice of the background at threshold 0.5, mean over images (x100)", default=True),
        Metric("pxap", "PxAP", "PxAP", "higher", "pxap",
               "pixel average precision over the set, fixed-bin histograms (x100)", default=True),
        Metric("dice_best", "Dice*", "Dice$^*$", "higher", "best_threshold",
               "pooled Dice at the best threshold (x100), a different protocol from F1 at 0.5"),
        Metric("iou_best", "IoU*", "IoU$^*$", "higher", "best_threshold",
               "pooled IoU at the threshold of dice_best (x100)"),
        Metric("threshold_best", "Thr.*", "$\\tau^*$", "none", "best_threshold",
               "the threshold that maximises pooled Dice", decimals=3),
    )
}


def protocol_record(threshold: float, bins: int) -> dict[str, str]:
    """``results.json``'s ``protocol``: how the recorded metrics were computed with these settings."""
    return {p.name: p.record.format(threshold=threshold, bins=bins) for p in PROTOCOLS.values() if p.record}



def classification_error(logits_or_preds: Tensor, labels: Tensor) -> float:
    preds = logits_or_preds.argmax(dim=1) if logits_or_preds.dim() == 2 else logits_or_preds
    return 100.0 * (preds != labels).float().mean().item() if labels.numel() else 0.0


def dice(pred: Tensor, gt: Tensor) -> Tensor:
    """Dice of boolean masks ``(N, ...)`` per sample; 1 where both are empty."""
    inter, n_pred, n_gt = _counts(pred.flatten(1), gt.flatten(1))
    return _dice(inter, n_pred, n_gt)


def _counts(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of boolean ``(N, P)``: ``|pred & gt|``, ``|pred|``, ``|gt|`` (summed as bytes: much faster than bools)."""

    def count(x: Tensor) -> Tensor:
        return x.contiguous().view(torch.uint8).sum(1, dtype=torch.int32).long()

    return count(pred & gt), count(pred), count(gt)


def _dice(inter: Tensor, n_pred: Tensor, n_gt: Tensor) -> Tensor:
    total = n_pred.double() + n_gt.double()
    return torch.where(total > 0, 2 * inter.double() / total.clamp_min(1), torch.ones_like(total))


@dataclass
class LocalizationAccumulator:
    """Accumulates per-image F1 and set-level histograms; ``compute()`` gives the metrics.

    ``update`` takes maps and masks of one image or a batch of equal size;
    everything stays on the maps' device until ``compute``.
    """

    bins: int = 1000
    threshold: float = 0.5
    f1_pos: list[Tensor] = field(default_factory=list)
    f1_neg: list[Tensor] = field(default_factory=list)
    hist_fg: Tensor | None = None
    hist_bg: Tensor | None = None

    def update(self, maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """Add images; returns their per-image ``(f1_pos, f1_neg)`` in percent."""
        if maps.dim() == 2:
            maps, masks = maps.unsqueeze(0), masks.unsqueeze(0)
        masks = masks.reshape(maps.shape)
        maps = maps.float().flatten(1)
        gt = masks.flatten(1) >= 0.5
        inter, n_pred, n_gt = _counts(maps >= self.threshold, gt)
        pixels = gt.shape[1]
        pos = 100.0 * _dice(inter, n_pred, n_gt)
        # the complements: |~pred & ~gt| = P - |pred| - |gt| + |pred & gt|
        neg = 100.0 * _dice(pixels - n_pred - n_gt + inter, pixels - n_pred, pixels - n_gt)
        self.f1_pos.append(pos)
        self.f1_neg.append(neg)
        # one bincount for both histograms: background bins 0..B, foreground bins B+1..2B+1;
        # truncation is the floor on [0, bins]; int16 indices are the fastest to convert and to count
        index_type = torch.int16 if 2 * (self.bins + 1) <= torch.iinfo(torch.int16).max else torch.int64
        index = (maps * self.bins).clamp_(0, self.bins).to(index_type)
        index.add_(gt, alpha=self.bins + 1)
        both = torch.bincount(index.flatten(), minlength=2 * (self.bins + 1))
        bg, fg = both[: self.bins + 1], both[self.bins + 1 :]
        self.hist_fg = fg if self.hist_fg is None else self.hist_fg + fg
        self.hist_bg = bg if self.hist_bg is None else self.hist_bg + bg
        return pos, neg

    def merge(self, other: LocalizationAccumulator) -> None:
        self.f1_pos += other.f1_pos
        self.f1_neg += other.f1_neg
        for name in ("hist_fg", "hist_bg"):
            mine, theirs = getattr(self, name), getattr(other, name)
            setattr(self, name, theirs if mine is None else (mine if theirs is None else mine + theirs.to(mine)))

    @property
    def n_images(self) -> int:
        return sum(len(x) for x in self.f1_pos)

    def compute(self) -> dict[str, float]:
        if self.hist_fg is None:
            return {"f1_pos": float("nan"), "f1_neg": float("nan"), "pxap": float("nan"), "n_images": 0}
        out = {
            "f1_pos": torch.cat(self.f1_pos).mean().item(),
            "f1_neg": torch.cat(self.f1_neg).mean().item(),
        }
        out.update(histogram_metrics(self.hist_fg, self.hist_bg))
        out["n_images"] = self.n_images
        return out


def histogram_metrics(hist_fg: Tensor, hist_bg: Tensor) -> dict[str, float]:
    """PxAP and best-threshold pooled Dice/IoU from fixed-bin histograms.

    ``hist_*[j]`` counts pixels whose bin index is ``j`` (value in
    ``[j/B, (j+1)/B)``, ``j = B`` for a value of 1). Threshold ``j/B`` calls
    positive every pixel with bin index ``>= j``.
    """
    bins = hist_fg.numel() - 1
    fg = hist_fg.double().cpu()
    bg = hist_bg.double().cpu()
    tp = fg.flip(0).cumsum(0)  # thresholds from high (index B) to low (index 0)
    fp = bg.flip(0).cumsum(0)
    n_fg = fg.sum()
    predicted = tp + fp
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    if n_fg > 0:
        recall = tp / n_fg
        steps = torch.diff(recall, prepend=recall.new_zeros(1))
        pxap = 100.0 * torch.cumsum(precision * steps, 0)[-1].item()  # summed in order: reproducible to the bit
    else:
        pxap = float("nan")
    fn = n_fg - tp
    denom = 2 * tp + fp + fn
    dices = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.ones_like(tp))
    best = int(torch.argmax(dices).item())
    union = tp + fp + fn
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.ones_like(tp))
    return {
        "pxap": pxap,
        "dice_best": 100.0 * dices[best].item(),
        "iou_best": 100.0 * iou[best].item(),
        "threshold_best": (bins - best) / bins,
    }


def precision_recall_curve(hist_fg: Tensor, hist_bg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(thresholds, precision, recall)`` from high to low threshold, for plots."""
    bins = hist_fg.numel() - 1
    fg, bg = hist_fg.double().cpu(), hist_bg.double().cpu()
    tp, fp = fg.flip(0).cumsum(0), bg.flip(0).cumsum(0)
    predicted = tp + fp
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.ones_like(tp))
    recall = tp / fg.sum().clamp_min(1)
    thresholds = torch.arange(bins, -1, -1, dtype=torch.float64) / bins
    return thresholds, precision, recall
