"""Pictures: mask overlays of test images and pixel precision-recall curves.

Overlays are composed with NumPy and Pillow (cheap enough to draw at the end of
every run). Curves are drawn with matplotlib's object-oriented API (``Figure``,
no pyplot state, the non-interactive Agg renderer), so drawing works without a
display. Colours: ground truth green, prediction red (masks and boxes alike).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from scipy.ndimage import binary_erosion

from wsolbench.scoring.metrics import box_iou, histogram_metrics, precision_recall_curve

TRUTH_RGB = (0, 200, 0)
PREDICTION_RGB = (230, 20, 20)


@dataclass
class Sample:
    """One test image for :func:`draw_overlays`; arrays at the mask's size."""

    id: str
    image: np.ndarray  #: (H, W, 3) uint8 RGB
    mask: np.ndarray  #: (H, W) bool ground truth
    map: np.ndarray  #: (H, W) float in [0, 1]
    crf: np.ndarray | None = None  #: (H, W) CRF marginals, when scored
    true_boxes: np.ndarray | None = None  #: (K, 4) true boxes ``(x0, y0, x1, y1)``, inclusive, in the mask's frame
    pred_box: np.ndarray | None = None  #: (4,) the predicted box (largest contour at the box threshold)


@dataclass
class Curve:
    """One precision-recall curve from a run's (or several runs') score histograms."""

    label: str
    hist_fg: np.ndarray
    hist_bg: np.ndarray
    pxap: float | None = None  #: shown in the legend; computed from the histograms when None


def overlay(image: np.ndarray, region: np.ndarray, color: Sequence[int], alpha: float = 0.45) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with the pixels of ``region`` blended towards ``color``."""
    out = image.astype(np.float32).copy()
    out[region] = (1.0 - alpha) * out[region] + alpha * np.asarray(color, dtype=np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _figure(width: float, height: float) -> Any:

    return Figure(figsize=(width, height), layout="constrained")


def boundary(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The pixels of ``mask`` within ``width`` steps (4-neighbourhood) of a pixel outside it.

    The image border does not count as outside.
    """

    return mask & ~binary_erosion(mask, iterations=width, border_value=1)


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return 100.0 if total == 0 else 200.0 * np.logical_and(pred, truth).sum() / total


def _fit(array: np.ndarray, tile: int, resample: int) -> np.ndarray:
    """Resize an (H, W[, 3]) array so its longer side is ``tile`` pixels."""

    h, w = array.shape[:2]
    scale = tile / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if array.dtype == bool:
        return np.asarray(Image.fromarray(array.astype(np.uint8) * 255).resize(size, resample)) >= 128
    if array.dtype != np.uint8:
        return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize(size, resample))
    return np.asarray(Image.fromarray(array).resize(size, resample))


def box_outline(shape: tuple[int, int], box: Sequence[int], frame: tuple[int, int] | None = None) -> np.ndarray:
    """The one-pixel outline ``(h, w)`` bool of ``box`` ``(x0, y0, x1, y1)`` (inclusive pixels of an image of
    size ``frame``, ``shape`` by default) drawn on an image of ``shape``: the outer pixels of the box's
    pixels once scaled, clipped to the image."""
    h, w = shape
    fh, fw = frame or shape
    sx, sy = w / fw, h / fh
    x0, y0 = int(np.floor(box[0] * sx)), int(np.floor(box[1] * sy))
    x1, y1 = int(np.ceil((box[2] + 1) * sx)) - 1, int(np.ceil((box[3] + 1) * sy)) - 1
    x0, x1 = max(0, min(x0, w - 1)), max(0, min(x1, w - 1))
    y0, y1 = max(0, min(y0, h - 1)), max(0, min(y1, h - 1))
    out = np.zeros((h, w), dtype=bool)
    out[y0 : y1 + 1, [x0, x1]] = True
    out[[y0, y1], x0 : x1 + 1] = True
    return out


def boxes_panel(sample: Sample, image: np.ndarray) -> tuple[str, np.ndarray]:
    """The image with the true boxes outlined in green and the predicted box in red (drawn last, on top);
    the caption gives the predicted box's best IoU with a true box (x100)."""
    panel = image.copy()
    frame = sample.mask.shape
    truths = [] if sample.true_boxes is None else [b for b in np.asarray(sample.true_boxes).reshape(-1, 4)]
    for box in truths:
        panel[box_outline(panel.shape[:2], box, frame)] = TRUTH_RGB
    caption = "boxes"
    if sample.pred_box is not None:
        panel[box_outline(panel.shape[:2], sample.pred_box, frame)] = PREDICTION_RGB
        if truths:
            best = box_iou(np.asarray(sample.pred_box).reshape(1, 4), np.stack(truths)).max()
            caption = f"box IoU {100 * best:.1f}"
    return caption, panel


def overlay_panels(sample: Sample, threshold: float = 0.5, tile: int = 160) -> list[tuple[str, np.ndarray]]:
    """The panels of one row of :func:`draw_overlays`: ``(caption, (h, w, 3) uint8)``.

    Every panel carries the true boundary in green; the prediction panels tint
    the predicted pixels red. With boxes, a last panel shows them on the image
    (:func:`boxes_panel`: true boxes green, the predicted box red), without the boundary.
    """

    image = _fit(sample.image, tile, Image.Resampling.BILINEAR)
    truth = _fit(sample.mask.astype(bool), tile, Image.Resampling.NEAREST)
    edge = boundary(truth, width=2)
    heat = _fit(sample.map, tile, Image.Resampling.BILINEAR)
    panels = [(sample.id, image), ("map", heat_overlay(image, heat))]
    full_truth = sample.mask.astype(bool)
    predictions = [(f"map>={threshold:g}", sample.map >= threshold)]
    if sample.crf is not None:
        predictions.append(("CRF", sample.crf >= 0.5))
    for name, pred in predictions:
        small = _fit(pred, tile, Image.Resampling.NEAREST)
        panels.append((f"{name} F1+ {_dice(pred, full_truth):.1f}", overlay(image, small, PREDICTION_RGB)))
    out = []
    for caption, panel in panels:
        panel = panel.copy()
        panel[edge] = TRUTH_RGB
        out.append((caption, panel))
    if sample.true_boxes is not None or sample.pred_box is not None:
        out.append(boxes_panel(sample, image))
    return out


BOX_RGB = (255, 215, 0)


def heat_overlay(image: np.ndarray, heat: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """``image`` (H, W, 3) uint8 blended with ``heat`` (H, W) in [0, 1] through the jet colour map.

    ``(1 - weight) * image + weight * jet(heat)``, the picture of pytorch-grad-cam's
    ``show_cam_on_image`` (there without the rescaling of the sum by its maximum).
    """
    coloured = colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255.0
    return np.clip((1 - weight) * image.astype(np.float32) + weight * coloured + 0.5, 0, 255).astype(np.uint8)


def prediction_overlay(
    image: np.ndarray, heat: np.ndarray, threshold: float, box: Sequence[int] | None, gap: int = 4
) -> np.ndarray:
    """One picture of a prediction, three panels at the image's own size side by side.

    The image; the map over it (:func:`heat_overlay`); the pixels at or above
    ``threshold`` tinted red with their ``box`` ``(x0, y0, x1, y1)`` (inclusive)
    drawn in yellow. ``image`` (H, W, 3) uint8, ``heat`` (H, W) in [0, 1].
    """
    h, w = heat.shape
    region = Image.fromarray(overlay(image, heat >= threshold, PREDICTION_RGB))
    if box is not None:
        ImageDraw.Draw(region).rectangle(list(box), outline=BOX_RGB, width=max(1, min(h, w) // 100))
    canvas = np.full((h, 3 * w + 2 * gap, 3), 255, dtype=np.uint8)
    for j, panel in enumerate((image, heat_overlay(image, heat), np.asarray(region))):
        canvas[:, j * (w + gap): j * (w + gap) + w] = panel
    return canvas


def draw_overlays(samples: Sequence[Sample], path: str | Path, threshold: float = 0.5, tile: int = 160) -> Path:
    """:func:`overlay_grid` saved as a PNG file."""
    path = Path(path)
    Image.fromarray(overlay_grid(samples, threshold, tile)).save(path)
    return path


def overlay_grid(samples: Sequence[Sample], threshold: float = 0.5, tile: int = 160) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 grid, one row per image: the image, the map, the mask at ``threshold``,
    the CRF's mask when present and the boxes when known; the true boundary and boxes in green, predicted
    pixels tinted red, the predicted box red.

    Composed with NumPy and Pillow (no plotting library): a few milliseconds per image.
    """
    caption, gap = 14, 4
    rows = [overlay_panels(s, threshold, tile) for s in samples]
    columns = max((len(r) for r in rows), default=1)
    heights = [max(panel.shape[0] for _, panel in row) for row in rows]
    width = columns * (tile + gap) + gap
    canvas = Image.new("RGB", (width, sum(h + caption + gap for h in heights) + gap), "white")
    draw = ImageDraw.Draw(canvas)
    top = gap - (caption + gap)
    for row, above in zip(rows, [0, *heights]):
        top += above + caption + gap
        for j, (text, panel) in enumerate(row):
            left = gap + j * (tile + gap)
            draw.text((left, top), text[:40], fill="black")
            canvas.paste(Image.fromarray(panel), (left, top + caption))
    return np.asarray(canvas)


def curve_points(curve: Curve) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(thresholds, precision, recall)`` of :func:`wsolbench.scoring.metrics.precision_recall_curve`, as arrays."""

    t, p, r = precision_recall_curve(torch.as_tensor(curve.hist_fg), torch.as_tensor(curve.hist_bg))
    return t.numpy(), p.numpy(), r.numpy()


def pr_figure(curves: Sequence[Curve], title: str = "", threshold: float = 0.5) -> Any:
    """A matplotlib ``Figure`` of pixel precision-recall curves (recall on x); a dot marks each
    curve's point at ``threshold``; the legend gives each curve's PxAP."""

    fig = _figure(4.8, 4.0)
    ax = fig.subplots()
    for curve in curves:
        thresholds, precision, recall = curve_points(curve)
        pxap = curve.pxap
        if pxap is None:
            pxap = histogram_metrics(torch.as_tensor(curve.hist_fg), torch.as_tensor(curve.hist_bg))["pxap"]
        (line,) = ax.plot(recall, precision, label=f"{curve.label} (PxAP {pxap:.1f})", linewidth=1.4)
        at = int(np.argmin(np.abs(thresholds - threshold)))
        ax.plot([recall[at]], [precision[at]], "o", color=line.get_color(), markersize=4)
    ax.set_xlabel("recall (foreground pixels)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"pixel precision-recall (dots: threshold {threshold:g})", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return fig


def draw_pr_curves(
    curves: Sequence[Curve],
    path: str | Path,
    title: str = "",
    formats: Sequence[str] = ("png",),
    threshold: float = 0.5,
) -> list[Path]:
    """:func:`pr_figure` saved as ``path`` (without suffix) in each format (``png``, ``pdf``)."""
    fig = pr_figure(curves, title, threshold)
    written = []
    for fmt in formats:
        target = Path(path).with_suffix(f".{fmt}")
        fig.savefig(target, dpi=120)
        written.append(target)
    return written
