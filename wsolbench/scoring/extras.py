"""What the test evaluation produces besides the metrics: CRF-refined metrics and pictures.

:class:`TestExtras` receives every test map as the engine scores it
(``evaluate(..., on_map=extras.update)``) and, at the end, adds to the run's
results and directory:

- with ``eval.crf = true``: the metrics of the dense-CRF-refined maps, as
  ``results["crf"]`` (same keys as the plain metrics, plus the CRF parameters),
  per-image ``crf_f1_pos`` / ``crf_f1_neg`` columns in ``per_image.csv`` and the
  refined maps' score histograms in ``histograms_crf.npz``;
- with ``eval.pictures = N > 0``: ``overlays.png`` (the first N test images with
  their true and predicted masks, and their true boxes beside the predicted
  one: the largest contour's box at the threshold of ``top1_loc``, the
  validation split's when it was scored, drawn on the map at the image's own
  size) and ``pr_curve.png`` (pixel precision-recall).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsolbench import crf
from wsolbench.data.boxes import boxes_from_mask
from wsolbench.runs.rundir import CRF_HISTOGRAMS, OVERLAYS, PR_CURVE, RunDir
from wsolbench.scoring import plots
from wsolbench.scoring.metrics import LocalizationAccumulator, contour_boxes, to_uint8


def _cat(tensors: list[Tensor]) -> Tensor:
    return torch.cat(tensors) if tensors else torch.empty(0, dtype=torch.float64)


def raw_rgb(split: Any, index: int, size: tuple[int, int]) -> np.ndarray:
    """Item ``index``'s RGB image as ``(H, W, 3)`` uint8 at ``size``.

    Splits built on :class:`wsolbench.data.samples.SampleDataset` give the decoded
    image before any transform; for other splits the normalised tensor is
    stretched back to [0, 255] per channel (its colours are then approximate).
    """
    raw = getattr(split, "raw", None)
    if callable(raw):
        image = raw(index)[0].float()
    else:
        image = split[index]["image"].float()
        lo = image.amin(dim=(1, 2), keepdim=True)
        hi = image.amax(dim=(1, 2), keepdim=True)
        image = 255.0 * (image - lo) / (hi - lo).clamp_min(1e-12)
    if tuple(image.shape[-2:]) != tuple(size):
        image = F.interpolate(image[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0]
    return image.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


class TestExtras:
    """Collects CRF metrics and picture material from the test maps; see the module docstring."""

    def __init__(self, cfg: Any, dataset: Any, split: Any, ids: list[str] | None = None):
        self.split = split
        self.ids = ids if ids is not None else getattr(split, "ids", None)
        self.threshold = cfg.eval.threshold
        self.pictures = cfg.eval.pictures
        self.crf_params = None
        if cfg.eval.crf:
            crf.require_pydensecrf()
            self.crf_params = crf.params_for(dataset, cfg.eval.crf_params)
            self.crf_acc = LocalizationAccumulator(bins=cfg.eval.bins, threshold=cfg.eval.threshold)
        self.crf_index: list[int] = []  #: the images the CRF accumulator saw, in its order
        self.samples: list[tuple[int, Any]] = []  #: (image index, picture material)

    def update(self, index: int, prob: Tensor, mask: Tensor) -> None:
        """One test image's map (in [0, 1], at the mask's size) and its mask."""
        picture = index < self.pictures
        if self.crf_params is None and not picture:
            return
        image = raw_rgb(self.split, index, tuple(mask.shape[-2:]))
        prob_np = prob.detach().float().cpu().numpy()
        refined = None
        if self.crf_params is not None:
            refined = crf.refine(prob_np, image, self.crf_params)
            self.crf_acc.update(torch.from_numpy(refined), mask.detach().cpu())
            self.crf_index.append(index)
        if picture:
            name = self.ids[index] if self.ids else str(index)
            truth = mask.detach().cpu().numpy().reshape(prob_np.shape) >= 0.5
            boxes = self._true_boxes(index, mask)
            self.samples.append((index, plots.Sample(name, image, truth, prob_np, refined, boxes)))

    def _true_boxes(self, index: int, mask: Tensor) -> np.ndarray:
        """The item's own boxes (in the mask's frame), or one per connected component of its mask."""
        boxes = self.split[index].get("boxes")
        if boxes is None:
            boxes = boxes_from_mask(mask.detach().cpu().reshape(mask.shape[-2:]))
        return boxes.reshape(-1, 4).cpu().numpy().astype(np.int64)

    def gather(self, ctx: Any) -> None:
        """Bring together what every process saw (``ctx``: a :class:`wsolbench.training.distributed.Context`), in image order."""
        if not ctx.active:
            return
        if self.crf_params is not None:
            acc = self.crf_acc
            local = {"f1_pos": _cat(acc.f1_pos), "f1_neg": _cat(acc.f1_neg)}
            index, rows, hist = ctx.collect(torch.tensor(self.crf_index, dtype=torch.long), local,
                                            {"fg": acc.hist_fg, "bg": acc.hist_bg})
            acc.f1_pos, acc.f1_neg = [rows["f1_pos"]], [rows["f1_neg"]]
            acc.hist_fg, acc.hist_bg = hist["fg"], hist["bg"]
            self.crf_index = index.tolist()
        self.samples = sorted((s for part in ctx.gather(self.samples) for s in part), key=lambda s: s[0])

    def finish(self, target: RunDir | None, test: Any) -> dict[str, Any]:
        """Add CRF columns to ``test.per_image`` and, in ``target`` (unless None), write the
        CRF histograms and the pictures; returns the results to add."""
        out: dict[str, Any] = {}
        if self.crf_params is not None:
            out["crf"] = {**self.crf_acc.compute(), "params": dataclasses.asdict(self.crf_params)}
            scores = zip(_cat(self.crf_acc.f1_pos).tolist(), _cat(self.crf_acc.f1_neg).tolist())
            for row, (pos, neg) in zip(test.per_image, (s for _, s in sorted(zip(self.crf_index, scores)))):
                row["crf_f1_pos"], row["crf_f1_neg"] = round(pos, 4), round(neg, 4)
        if target is None:
            return out
        if self.crf_params is not None and self.crf_acc.hist_fg is not None:
            target.write_histograms(CRF_HISTOGRAMS, fg=self.crf_acc.hist_fg.numpy(), bg=self.crf_acc.hist_bg.numpy())
        if self.samples:
            self._predict_boxes(test.metrics)
            plots.draw_overlays([s for _, s in self.samples], target.path / OVERLAYS, self.threshold)
            acc = test.accumulator
            if acc is not None and acc.hist_fg is not None:
                curves = [plots.Curve("maps", acc.hist_fg.cpu().numpy(), acc.hist_bg.cpu().numpy())]
                if self.crf_params is not None:
                    curves.append(plots.Curve("CRF", self.crf_acc.hist_fg.numpy(), self.crf_acc.hist_bg.numpy()))
                plots.draw_pr_curves(curves, (target.path / PR_CURVE).with_suffix(""), threshold=self.threshold)
        return out

    def _predict_boxes(self, metrics: dict[str, Any]) -> None:
        """Each picture's predicted box: the largest contour's at ``top1_loc``'s threshold (the validation
        split's ``box_threshold_val``, else the split's own ``box_threshold``)."""
        threshold = metrics.get("box_threshold_val")
        if threshold is None or not math.isfinite(threshold):
            threshold = metrics.get("box_threshold")
        if threshold is None or not math.isfinite(threshold):
            return
        for _, sample in self.samples:
            image = to_uint8(torch.from_numpy(sample.map)).numpy()
            found, _ = contour_boxes(image, np.array([int(threshold * float(image.max()))]))
            sample.pred_box = found[0][0]
