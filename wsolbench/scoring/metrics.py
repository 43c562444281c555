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
    bin; under ``eval.protocol = "wsoleval"``, wsolevaluation's bins instead:
    lower edges ``np.arange(0, 1, eval.cam_curve_interval)``, compared in
    float64); each bin's lower edge is a threshold; precision and recall at every
    threshold from the reversed cumulative sums; AP = sum of precision x
    recall increments, x100, summed as wsolevaluation's ``MaskEvaluator`` sums
    them (NumPy's pairwise sum), so its number is reproduced to the last bit.
    O(pixels + bins).
``dice_best`` / ``iou_best`` / ``threshold_best`` (a different protocol)
    Dice and IoU of all pixels of the set pooled together, at the single
    threshold (of the same grid) that maximises pooled Dice. NOT comparable
    with the per-image F1 at 0.5.
``maxboxacc`` / ``maxboxaccv2`` / ``boxacc_30|50|70`` / ``box_threshold*`` (Choe et al., CVPR 2020, wsolevaluation's ``BoxEvaluator``)
    At every threshold ``t`` of ``np.arange(0, 1, eval.cam_curve_interval)``
    the map, taken as 8-bit (``uint8(map * 255)``), is binarised where it is
    greater than ``int(t * max)``; each contour of the binary image (OpenCV's
    ``RETR_TREE``: components and their holes) gives the box
    ``(x, y, x + w, y + h)`` of its bounding rectangle, ``x1, y1`` clipped to
    the last column and row; no contour gives ``[0, 0, 0, 0]``. IoU is the
    inclusive pixel IoU (``x1 - x0 + 1``), 0 for a degenerate union; an image
    is correct at ``(t, delta)`` when a predicted box has IoU ``>= delta``
    with a true box. ``maxboxacc`` keeps the contour of largest
    ``cv2.contourArea`` and ``delta = 0.5``; ``boxacc_30|50|70`` keep every
    contour, each at its own best ``t`` (``box_threshold_30|50|70``), and
    ``maxboxaccv2`` is their mean. True boxes are the dataset's, or one per
    8-connected component of the mask.
    These are test-optimal: each threshold is the best one for the scored
    split itself.
``boxacc_at_val`` / ``boxaccv2_at_val`` / ``boxacc_30|50|70_at_val`` / ``box_threshold_val*`` (the CVPR 2020 protocol)
    The same boxes and IoUs at thresholds chosen on the validation split
    (:class:`ChosenThresholds`): a run scores the validation split's maps once
    with the kept model (``evaluate --scoremaps`` the maps of
    ``--valid-scoremaps``), takes the threshold of ``maxboxacc`` there
    (``box_threshold_val``) and of each ``boxacc_30|50|70``
    (``box_threshold_val_30|50|70``), and applies them to the test maps.
    ``boxaccv2_at_val`` is the mean of the three. Never larger than their
    test-optimal counterparts.
``dice_at_val`` / ``iou_at_val`` / ``threshold_val``
    Pooled Dice and IoU of the test pixels at the threshold that maximises
    pooled Dice on the validation split (``threshold_val``).
``top1_loc`` / ``top5_loc`` / ``gt_known_loc``
    The largest contour's box at the validation split's threshold of
    ``maxboxacc`` (``box_threshold_val``), IoU ``>= 0.5``; with the true class
    first among the predictions (top-1), among the first five (top-5), or
    whatever the prediction (GT-known). Where no validation split was scored
    (``evaluate --scoremaps`` without ``--valid-scoremaps``), the scored split's
    own threshold of ``maxboxacc`` is used and ``results.json``'s ``protocol`` says so.
    ``eval.map_class`` says whose class map is drawn for every metric:
    ``ground_truth`` is the GT-known setting of wsolevaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Protocol:
    """How a group of metrics is computed: recorded in ``results.json`` and noted under report tables."""

    name: str  #: the key in ``results.json``'s ``protocol`` (when ``record`` is set)
    note: str  #: the report's sentence; ``{metrics}`` becomes the titles of the reported metrics, ``{pct}`` a percent sign
    record: str = ""  #: ``results.json``'s text; ``{name}`` is the run's ``eval.name`` setting


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
    headline: bool = False  #: in the result table ``run``, ``evaluate`` and ``evaluate-run`` print (all: results.json)

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
            "pixel AP over the set; bins: {bins} of equal width (geometry native) or wsolevaluation's "
            "np.arange(0, 1, {cam_curve_interval}) (geometry wsoleval); geometry {protocol}",
        ),
        Protocol(
            "box",
            "{metrics}: boxes from the maps' contours at every threshold of the grid, the share of images "
            "with a box of IoU >= 0.5 (MaxBoxAcc, largest contour) or >= 0.3/0.5/0.7 (MaxBoxAccV2, every "
            "contour, mean of the three) at the best threshold ({pct}; Choe et al., CVPR 2020).",
            "wsolevaluation's boxes: thresholds np.arange(0, 1, {cam_curve_interval}) on the 8-bit map, "
            "contour boxes, inclusive IoU; maps of the {map_class} class; geometry {protocol}",
        ),
        Protocol(
            "box_at_valid",
            "{metrics}: the same boxes at the thresholds chosen on the validation split's maps with the kept "
            "model, applied to test (CVPR 2020 protocol), beside the test-optimal MaxBoxAcc columns ({pct}).",
            "test maps at the thresholds that are best on the {thresholds_from} split",
        ),
        Protocol(
            "box_localization",
            "{metrics}: the largest contour's box at the validation split's threshold of MaxBoxAcc, IoU >= 0.5, "
            "and the true class among the top-1 / top-5 predictions (GT-known: the box alone) ({pct}).",
            "IoU >= 0.5 at the threshold of maxboxacc on the {thresholds_from} split; maps of the {map_class} class",
        ),
        Protocol(
            "best_threshold",
            "{metrics}: all test pixels pooled, at the threshold that maximises Dice: "
            "a different protocol, not comparable with F1 at 0.5.",
            "pooled over the set at the threshold maximising Dice (not comparable with F1)",
        ),
        Protocol(
            "pixel_at_valid",
            "{metrics}: all test pixels pooled, at the threshold that maximises pooled Dice on the validation "
            "split: not comparable with F1 at 0.5.",
            "pooled over the set at the threshold maximising Dice on the {thresholds_from} split",
        ),
    )
}

#: every metric, in display order; adding one is an entry here plus its computation
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("cl_error", "Err.", "Err.", "lower", "classification", "classification error (%)", default=True, headline=True),
        Metric("f1_pos", "F1+", "F1$^+$", "higher", "f1",
               "per-image Dice of the foreground at threshold 0.5, mean over images (x100)", default=True, headline=True),
        Metric("f1_neg", "F1-", "F1$^-$", "higher", "f1",
               "per-image Dice of the background at threshold 0.5, mean over images (x100)", default=True, headline=True),
        Metric("pxap", "PxAP", "PxAP", "higher", "pxap",
               "pixel average precision over the set, fixed-bin histograms (x100)", default=True, headline=True),
        Metric("maxboxacc", "MaxBoxAcc", "MaxBoxAcc", "higher", "box",
               "share of images whose largest contour's box has IoU >= 0.5 with a true box, at the test-optimal "
               "threshold (%; CVPR 2020 v1)", headline=True),
        Metric("maxboxaccv2", "MaxBoxAccV2", "MaxBoxAccV2", "higher", "box",
               "mean over IoU 0.3/0.5/0.7 of the test-optimal-threshold share of images with any contour's box "
               "matching a true box (%)", headline=True),
        *(Metric(f"boxacc_{iou}", f"BoxAcc@{iou}", f"BoxAcc@{iou}", "higher", "box",
                 f"test-optimal-threshold share of images with any contour's box of IoU >= 0.{iou // 10} "
                 f"(%; a term of MaxBoxAccV2)") for iou in (30, 50, 70)),
        Metric("box_threshold", "Thr.box", "$\\tau_{box}$", "none", "box",
               "the map threshold of maxboxacc (test-optimal)", decimals=3),
        *(Metric(f"box_threshold_{iou}", f"Thr.box@{iou}", f"$\\tau_{{{iou}}}$", "none", "box",
                 f"the map threshold of boxacc_{iou} (test-optimal)", decimals=3) for iou in (30, 50, 70)),
        Metric("boxacc_at_val", "BoxAcc (val thr.)", "BoxAcc$_{val}$", "higher", "box_at_valid",
               "share of images whose largest contour's box has IoU >= 0.5, at the threshold of maxboxacc on "
               "the validation split (%; the CVPR 2020 protocol's operating point)"),
        Metric("boxaccv2_at_val", "BoxAccV2 (val thr.)", "BoxAccV2$_{val}$", "higher", "box_at_valid",
               "mean of boxacc_30|50|70_at_val (%)"),
        *(Metric(f"boxacc_{iou}_at_val", f"BoxAcc@{iou} (val thr.)", f"BoxAcc@{iou}$_{{val}}$", "higher",
                 "box_at_valid", f"share of images with any contour's box of IoU >= 0.{iou // 10}, at the "
                 f"threshold of boxacc_{iou} on the validation split (%)") for iou in (30, 50, 70)),
        Metric("box_threshold_val", "Thr.box (val)", "$\\tau_{box}^{val}$", "none", "box_at_valid",
               "the map threshold of maxboxacc on the validation split", decimals=3),
        *(Metric(f"box_threshold_val_{iou}", f"Thr.box@{iou} (val)", f"$\\tau_{{{iou}}}^{{val}}$", "none",
                 "box_at_valid", f"the map threshold of boxacc_{iou} on the validation split", decimals=3)
          for iou in (30, 50, 70)),
        Metric("top1_loc", "Top-1 Loc", "Top-1 Loc", "higher", "box_localization",
               "true class predicted first and box IoU >= 0.5 at box_threshold_val (%)", headline=True),
        Metric("top5_loc", "Top-5 Loc", "Top-5 Loc", "higher", "box_localization",
               "true class among the top 5 predictions and box IoU >= 0.5 at box_threshold_val (%)", headline=True),
        Metric("gt_known_loc", "GT-known Loc", "GT-known Loc", "higher", "box_localization",
               "box IoU >= 0.5 at box_threshold_val whatever the prediction (%)", headline=True),
        Metric("dice_best", "Dice*", "Dice$^*$", "higher", "best_threshold",
               "pooled Dice at the test-optimal threshold (x100), a different protocol from F1 at 0.5", headline=True),
        Metric("iou_best", "IoU*", "IoU$^*$", "higher", "best_threshold",
               "pooled IoU at the threshold of dice_best (x100)"),
        Metric("threshold_best", "Thr.*", "$\\tau^*$", "none", "best_threshold",
               "the threshold that maximises pooled Dice on the test split (test-optimal)", decimals=3),
        Metric("dice_at_val", "Dice (val thr.)", "Dice$_{val}$", "higher", "pixel_at_valid",
               "pooled Dice at the threshold that maximises pooled Dice on the validation split (x100)"),
        Metric("iou_at_val", "IoU (val thr.)", "IoU$_{val}$", "higher", "pixel_at_valid",
               "pooled IoU at threshold_val (x100)"),
        Metric("threshold_val", "Thr. (val)", "$\\tau_{val}$", "none", "pixel_at_valid",
               "the threshold that maximises pooled Dice on the validation split", decimals=3),
    )
}


def protocol_record(settings: object, thresholds_from: str = "valid") -> dict[str, str]:
    """``results.json``'s ``protocol``: how the recorded metrics were computed with these ``eval`` settings,
    the thresholds of the ``*_at_val`` metrics and of ``top*_loc`` chosen on the ``thresholds_from`` split."""
    return {p.name: p.record.format(**vars(settings), thresholds_from=thresholds_from)
            for p in PROTOCOLS.values() if p.record}



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
    #: the bins' lower edges, float64 ``(bins + 1,)``, in place of ``j / bins``: wsolevaluation's grid
    #: (:func:`wsoleval_edges`), a value counted in the last edge at or below it (``np.histogram``'s rule)
    edges: Tensor | None = None
    f1_pos: list[Tensor] = field(default_factory=list)
    f1_neg: list[Tensor] = field(default_factory=list)
    hist_fg: Tensor | None = None
    hist_bg: Tensor | None = None

    def update(self, maps: Tensor, masks: Tensor, ignore: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Add images; returns their per-image ``(f1_pos, f1_neg)`` in percent.

        ``ignore`` (boolean, the masks' shape) marks pixels left out of both
        histograms (OpenImages' ignore regions, as wsolevaluation's ``get_mask``);
        the per-image F1 scores still count every pixel.
        """
        if maps.dim() == 2:
            maps, masks = maps.unsqueeze(0), masks.unsqueeze(0)
            ignore = None if ignore is None else ignore.unsqueeze(0)
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
        if self.edges is None:
            index = (maps * self.bins).clamp_(0, self.bins).to(index_type)
        else:  # compared in float64, as NumPy compares float32 maps with float64 edges
            edges = self.edges.to(maps.device)
            index = (torch.bucketize(maps.double(), edges, right=True) - 1).clamp_(0, self.bins).to(index_type)
        index.add_(gt, alpha=self.bins + 1)
        if ignore is not None:
            index = index[~ignore.reshape(index.shape).bool()]
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

    def compute(self, pixel_bin: int | None = None) -> dict[str, float]:
        """The metrics; ``pixel_bin`` (a threshold chosen on another split) adds them at that bin
        (see :func:`histogram_metrics`)."""
        if self.hist_fg is None:
            return {"f1_pos": float("nan"), "f1_neg": float("nan"), "pxap": float("nan"), "n_images": 0}
        out = {
            "f1_pos": torch.cat(self.f1_pos).mean().item(),
            "f1_neg": torch.cat(self.f1_neg).mean().item(),
        }
        out.update(histogram_metrics(self.hist_fg, self.hist_bg, pixel_bin))
        out["n_images"] = self.n_images
        return out


def histogram_metrics(hist_fg: Tensor, hist_bg: Tensor, pixel_bin: int | None = None) -> dict[str, float]:
    """PxAP and best-threshold pooled Dice/IoU from fixed-bin histograms.

    ``hist_*[j]`` counts pixels whose bin index is ``j`` (value in
    ``[j/B, (j+1)/B)``, ``j = B`` for a value of 1). Threshold ``j/B`` calls
    positive every pixel with bin index ``>= j``. ``pixel_bin``, a bin index
    chosen elsewhere (:attr:`ChosenThresholds.pixel_bin`), adds
    ``dice_at_val``, ``iou_at_val`` and ``threshold_val`` at threshold ``pixel_bin / B``.
    """
    bins = hist_fg.numel() - 1
    fg = hist_fg.double().cpu()
    bg = hist_bg.double().cpu()
    tp = fg.flip(0).cumsum(0)  # thresholds from high (index B) to low (index 0)
    fp = bg.flip(0).cumsum(0)
    n_fg = fg.sum()
    pxap = average_precision(fg, bg)
    fn = n_fg - tp
    denom = 2 * tp + fp + fn
    dices = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.ones_like(tp))
    best = int(torch.argmax(dices).item())
    union = tp + fp + fn
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.ones_like(tp))
    at = None if pixel_bin is None else bins - pixel_bin  # the position of bin ``pixel_bin`` in the flipped sums
    return {
        "pxap": pxap,
        "dice_best": 100.0 * dices[best].item(),
        "iou_best": 100.0 * iou[best].item(),
        "threshold_best": (bins - best) / bins,
        "dice_at_val": float("nan") if at is None else 100.0 * dices[at].item(),
        "iou_at_val": float("nan") if at is None else 100.0 * iou[at].item(),
        "threshold_val": float("nan") if at is None else pixel_bin / bins,
    }


def average_precision(hist_fg: Tensor, hist_bg: Tensor) -> float:
    """PxAP (x100) from histograms, in wsolevaluation's arithmetic to the last bit (``MaskEvaluator.compute``).

    From the highest bin down: ``tp`` and ``fp`` are the reversed cumulative
    sums, precision ``tp / (tp + fp)``, recall ``tp / (tp + fn)``; the
    products of precision and recall increments at the thresholds that
    predict something are summed by ``np.sum`` (NumPy's pairwise summation:
    its order decides the last bits). NaN without a foreground pixel.
    """
    fg = hist_fg.double().cpu().numpy()
    bg = hist_bg.double().cpu().numpy()
    n_fg = fg.sum()
    if n_fg <= 0:
        return float("nan")
    tp, fp = fg[::-1].cumsum(), bg[::-1].cumsum()
    fn = n_fg - tp
    predicted = tp + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / predicted
    recall = tp / (tp + fn)
    steps = np.diff(recall, prepend=0.0)
    return float(np.sum((precision * steps)[predicted != 0]) * 100)


def wsoleval_edges(interval: float) -> Tensor:
    """The lower edges of wsolevaluation's PxAP bins: ``np.arange(0, 1, interval)`` and 1 (the bin of a value
    of exactly 1; its bin ``[2, 3)`` is always empty for maps in [0, 1] and is left out)."""
    return torch.from_numpy(np.append(cam_thresholds(interval), 1.0))


def best_dice_bin(hist_fg: Tensor, hist_bg: Tensor) -> int:
    """The bin index ``j`` whose threshold ``j / B`` maximises pooled Dice (that of ``threshold_best``)."""
    bins = hist_fg.numel() - 1
    return round(histogram_metrics(hist_fg, hist_bg)["threshold_best"] * bins)


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


# -- boxes ------------------------------------------------------------------------
#: the IoU thresholds of MaxBoxAccV2, in percent (wsolevaluation compares with ``iou / 100``)
BOX_IOUS = (30, 50, 70)
#: the side of wsolevaluation's geometry (``eval.protocol = "wsoleval"``)
WSOLEVAL_SIZE = 224


def cam_thresholds(interval: float) -> np.ndarray:
    """The map thresholds of the box metrics: ``np.arange(0, 1, interval)``, as wsolevaluation's grid."""
    return np.arange(0, 1, interval)


def to_uint8(maps: Tensor) -> Tensor:
    """Maps in [0, 1] as 8-bit images: ``uint8(float32(map) * 255)``, truncated as NumPy's ``astype``."""
    return (maps.float() * 255).to(torch.uint8)


def contour_boxes(image: np.ndarray, cuts: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Boxes of a ``uint8`` map binarised at each integer cut (pixels ``> cut``).

    Returns, per distinct binary image, the boxes ``(n, 4)`` of every contour
    (``[[0, 0, 0, 0]]`` when there is none) with the row of the largest one
    first, and for each cut the position of its binary image in that list.

    OpenCV traces the contours: MaxBoxAcc keeps the contour of largest
    ``cv2.contourArea`` (the polygon through the traced pixel centres, first
    contour on ties), which depends on OpenCV's tracing and contour order; a
    hand-written tracer would have to reproduce both to give the reference's
    numbers, so the well-kept implementation is used. The speed comes from
    around it: a cut between two values the map does not take gives the same
    binary image as the value below it, so each distinct binary image is
    traced once; and each is traced within the rectangle of its foreground
    (the raster order, hence the contours and their order, is that of the
    whole image; the boxes are shifted back).
    """
    height, width = image.shape
    values = np.flatnonzero(np.bincount(image.ravel(), minlength=256))  # the values the map takes, ascending
    # the binary image of cut c is that of the largest map value <= c (or of -1: every pixel set)
    below = np.searchsorted(values, cuts, side="right") - 1
    keys, position = np.unique(below, return_inverse=True)
    row_top, column_top = image.max(1), image.max(0)
    found = []
    for key in keys:
        cut = -1 if key < 0 else int(values[key])
        rows, columns = np.flatnonzero(row_top > cut), np.flatnonzero(column_top > cut)
        if len(rows) == 0:
            found.append(np.zeros((1, 4), dtype=np.int64))
            continue
        y0, x0 = int(rows[0]), int(columns[0])
        crop = np.ascontiguousarray(image[y0 : rows[-1] + 1, x0 : columns[-1] + 1])
        binary = cv2.threshold(crop, cut, 1, cv2.THRESH_BINARY)[1] if cut >= 0 else np.ones_like(crop)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        areas = [cv2.contourArea(c) for c in contours]
        largest = int(np.argmax(areas))  # the first of equal areas, as Python's max
        order = [largest, *(i for i in range(len(contours)) if i != largest)]
        rects = np.array([cv2.boundingRect(contours[i]) for i in order], dtype=np.int64)
        boxes = np.empty_like(rects)
        boxes[:, 0] = rects[:, 0] + x0
        boxes[:, 1] = rects[:, 1] + y0
        boxes[:, 2] = np.minimum(boxes[:, 0] + rects[:, 2], width - 1)
        boxes[:, 3] = np.minimum(boxes[:, 1] + rects[:, 3], height - 1)
        found.append(boxes)
    return found, position.reshape(-1)


def box_iou(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Inclusive pixel IoU of boxes ``(a, 4)`` and ``(b, 4)`` -> ``(a, b)``; a degenerate union gives 0."""
    p, t = pred[:, None, :], true[None, :, :]
    inter_w = np.maximum(0, np.minimum(p[..., 2], t[..., 2]) - np.maximum(p[..., 0], t[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(p[..., 3], t[..., 3]) - np.maximum(p[..., 1], t[..., 1]) + 1)
    inter = inter_w * inter_h
    area_p = (p[..., 2] - p[..., 0] + 1) * (p[..., 3] - p[..., 1] + 1)
    area_t = (t[..., 2] - t[..., 0] + 1) * (t[..., 3] - t[..., 1] + 1)
    union = area_p + area_t - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def threshold_ious(image: np.ndarray, cuts: np.ndarray, true_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cut, the best IoU with a true box of the largest contour's box and of any contour's box."""
    found, position = contour_boxes(image, cuts)
    if len(true_boxes) == 0:  # nothing to find: no box is correct
        zeros = np.zeros(len(cuts))
        return zeros, zeros.copy()
    sizes = [len(b) for b in found]
    best = box_iou(np.concatenate(found), true_boxes).max(1)
    starts = np.cumsum([0, *sizes[:-1]])
    largest = best[starts]
    anyone = np.maximum.reduceat(best, starts)
    return largest[position], anyone[position]


def scale_boxes(boxes: Tensor, size: tuple[int, int], new_size: tuple[int, int]) -> Tensor:
    """Boxes of an image of ``size`` ``(h, w)`` in an image of ``new_size``: ``int(x * new_w / w)`` per coordinate."""
    (h, w), (nh, nw) = size, new_size
    new = torch.tensor([nw, nh, nw, nh], dtype=torch.float64)
    old = torch.tensor([w, h, w, h], dtype=torch.float64)
    return (boxes.double().cpu() * new / old).to(torch.int64)  # x * new / old, truncated: wsolevaluation's order


@dataclass
class BoxAccumulator:
    """Per image and threshold, the best IoU of the predicted boxes; ``compute()`` gives the box metrics.

    ``update`` takes maps ``(N, H, W)`` in [0, 1] and each image's true boxes
    (inclusive pixel coordinates in the maps' frame); the 8-bit maps and their
    cuts are made on the maps' device in one pass, the contours per image.
    """

    interval: float = 0.01
    iou_largest: list[Tensor] = field(default_factory=list)  #: ``(n, T)`` per update: MaxBoxAcc's box
    iou_any: list[Tensor] = field(default_factory=list)  #: ``(n, T)`` per update: every contour's boxes

    @property
    def thresholds(self) -> np.ndarray:
        return cam_thresholds(self.interval)

    def update(self, maps: Tensor, boxes: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Add images; returns their ``(n, T)`` IoUs of the largest contour's box and of any box.

        One map ``(H, W)`` takes its boxes ``(K, 4)`` alone.
        """
        if maps.dim() == 2:
            maps, boxes = maps.unsqueeze(0), [boxes]
        images = to_uint8(maps)
        tops = images.flatten(1).amax(1).cpu().numpy().astype(np.float64)
        cuts = (self.thresholds[None, :] * tops[:, None]).astype(np.int64)  # int(t * max) per image
        images = images.cpu().numpy()
        largest, anyone = zip(*(threshold_ious(image, c, b.reshape(-1, 4).cpu().numpy().astype(np.int64))
                                for image, c, b in zip(images, cuts, boxes)))
        out = torch.from_numpy(np.stack(largest)), torch.from_numpy(np.stack(anyone))
        self.iou_largest.append(out[0])
        self.iou_any.append(out[1])
        return out

    def compute(
        self, logits: Tensor | None = None, labels: Tensor | None = None, chosen: ChosenThresholds | None = None
    ) -> dict[str, float]:
        """The box metrics; ``top*_loc`` with ``logits`` and ``labels``; the ``*_at_val`` metrics, and
        ``top*_loc``'s threshold, from ``chosen`` (thresholds of the validation split; see :func:`box_metrics`)."""
        return box_metrics(torch.cat(self.iou_largest) if self.iou_largest else torch.empty(0, len(self.thresholds)),
                           torch.cat(self.iou_any) if self.iou_any else torch.empty(0, len(self.thresholds)),
                           self.thresholds, logits, labels, chosen)


def maxboxacc_index(iou_largest: Tensor) -> int:
    """The threshold index of MaxBoxAcc (the first of equal accuracies) from ``(N, T)`` IoUs."""
    return int(np.argmax((iou_largest.numpy() >= 0.5).sum(0)))


@dataclass(frozen=True)
class ChosenThresholds:
    """Thresholds chosen on one split (the validation split) to score another at (the CVPR 2020 protocol).

    ``box`` and ``box_iou`` index the grid of :func:`cam_thresholds`;
    ``pixel_bin`` is a histogram bin (threshold ``pixel_bin / eval.bins``), ``None`` without foreground.
    """

    box: int  #: the threshold of ``maxboxacc`` (largest contour, IoU 0.5)
    box_iou: tuple[int, ...]  #: the threshold of each ``boxacc_30|50|70`` (every contour), in :data:`BOX_IOUS` order
    pixel_bin: int | None = None  #: the threshold of ``dice_best``

    @classmethod
    def choose(cls, iou_largest: Tensor, iou_any: Tensor, hist_fg: Tensor | None = None,
               hist_bg: Tensor | None = None) -> ChosenThresholds | None:
        """The best thresholds of a split from its per-image IoUs ``(N, T)`` and histograms; ``None`` for no image."""
        if iou_largest.shape[0] == 0:
            return None
        anyone = iou_any.numpy()
        per_iou = tuple(int(np.argmax((anyone >= iou / 100).sum(0))) for iou in BOX_IOUS)
        pixel = None
        if hist_fg is not None and hist_bg is not None and float(hist_fg.sum()) > 0:
            pixel = best_dice_bin(hist_fg, hist_bg)
        return cls(maxboxacc_index(iou_largest), per_iou, pixel)


def box_metrics(
    iou_largest: Tensor,
    iou_any: Tensor,
    thresholds: np.ndarray,
    logits: Tensor | None = None,
    labels: Tensor | None = None,
    chosen: ChosenThresholds | None = None,
) -> dict[str, float]:
    """The box metrics from per-image, per-threshold best IoUs ``(N, T)`` (see :class:`BoxAccumulator`).

    ``chosen`` (thresholds of another split, the validation split) gives the
    ``*_at_val`` metrics and the threshold of ``top*_loc``; without it the
    ``*_at_val`` metrics are NaN and ``top*_loc`` take ``maxboxacc``'s own threshold.
    """
    n = iou_largest.shape[0]
    at_valid = [name for name, metric in METRICS.items() if metric.protocol == "box_at_valid"]
    names = ["maxboxacc", "maxboxaccv2", *(f"boxacc_{i}" for i in BOX_IOUS), "box_threshold",
             *(f"box_threshold_{i}" for i in BOX_IOUS), *at_valid, "top1_loc", "top5_loc", "gt_known_loc"]
    if n == 0:
        return dict.fromkeys(names, float("nan"))
    largest, anyone = iou_largest.numpy(), iou_any.numpy()

    def accuracy(ious: np.ndarray, iou: int) -> np.ndarray:
        return (ious >= iou / 100).sum(0) * 100.0 / float(n)  # wsolevaluation's arithmetic

    out: dict[str, float] = {}
    v1 = accuracy(largest, 50)
    best = maxboxacc_index(iou_largest)
    out["maxboxacc"], out["box_threshold"] = float(v1[best]), float(thresholds[best])
    for iou in BOX_IOUS:
        acc = accuracy(anyone, iou)
        at = int(np.argmax(acc))
        out[f"boxacc_{iou}"], out[f"box_threshold_{iou}"] = float(acc[at]), float(thresholds[at])
    out["maxboxaccv2"] = float(np.average([out[f"boxacc_{i}"] for i in BOX_IOUS]))
    if chosen is None:
        out.update(dict.fromkeys(at_valid, float("nan")))
        at = best
    else:
        at = chosen.box
        out["boxacc_at_val"], out["box_threshold_val"] = float(v1[at]), float(thresholds[at])
        for iou, index in zip(BOX_IOUS, chosen.box_iou):
            out[f"boxacc_{iou}_at_val"] = float(accuracy(anyone, iou)[index])
            out[f"box_threshold_val_{iou}"] = float(thresholds[index])
        out["boxaccv2_at_val"] = float(np.average([out[f"boxacc_{i}_at_val"] for i in BOX_IOUS]))
    hit = largest[:, at] >= 0.5
    out["gt_known_loc"] = float(hit.mean() * 100.0)
    if logits is not None and labels is not None and logits.dim() == 2 and logits.shape[0] == n:
        ranked = logits.float().cpu().topk(min(5, logits.shape[1]), dim=1).indices.numpy()
        true = labels.cpu().numpy()[:, None]
        out["top1_loc"] = float((hit & (ranked[:, 0] == true[:, 0])).mean() * 100.0)
        out["top5_loc"] = float((hit & (ranked == true).any(1)).mean() * 100.0)
    else:
        out["top1_loc"] = out["top5_loc"] = float("nan")
    return {k: out[k] for k in names}
