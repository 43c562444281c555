"""Metrics against slow obvious implementations and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from wsolbench.scoring.metrics import (
    LocalizationAccumulator,
    classification_error,
    histogram_metrics,
)


def slow_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    inter = np.logical_and(pred, gt).sum()
    total = pred.sum() + gt.sum()
    return 1.0 if total == 0 else 2.0 * inter / total


def random_case(seed: int, n: int = 6, size: int = 17):
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(n, size, size, generator=g) < 0.35).float()
    maps = (0.6 * torch.rand(n, size, size, generator=g) + 0.4 * masks).clamp(0, 1)
    return maps, masks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_image_f1_matches_slow_loop(seed):
    maps, masks = random_case(seed)
    acc = LocalizationAccumulator()
    acc.update(maps, masks)
    out = acc.compute()
    pos = [slow_dice(m.numpy() >= 0.5, g.numpy() >= 0.5) for m, g in zip(maps, masks)]
    neg = [slow_dice(m.numpy() < 0.5, g.numpy() < 0.5) for m, g in zip(maps, masks)]
    assert out["f1_pos"] == pytest.approx(100 * np.mean(pos), abs=1e-9)
    assert out["f1_neg"] == pytest.approx(100 * np.mean(neg), abs=1e-9)
    assert out["n_images"] == len(maps)


def test_per_image_is_not_pooled():
    # image 1: tiny object found perfectly; image 2: large object missed entirely
    maps = torch.zeros(2, 10, 10)
    masks = torch.zeros(2, 10, 10)
    masks[0, 0, 0] = maps[0, 0, 0] = 1
    masks[1, :, :5] = 1
    acc = LocalizationAccumulator()
    acc.update(maps, masks)
    assert acc.compute()["f1_pos"] == pytest.approx(50.0)  # mean of 100 and 0, not pooled (~4)


def test_empty_mask_conventions():
    acc = LocalizationAccumulator()
    empty = torch.zeros(1, 4, 4)
    pos, neg = acc.update(empty, empty)  # nothing to find, nothing predicted
    assert pos.item() == 100.0 and neg.item() == 100.0
    pos, neg = acc.update(torch.ones(1, 4, 4), empty)  # nothing to find, everything predicted
    assert pos.item() == 0.0 and neg.item() == 0.0
    full = torch.ones(1, 4, 4)
    pos, neg = acc.update(full, full)  # all foreground, found
    assert pos.item() == 100.0 and neg.item() == 100.0


@pytest.mark.parametrize("bins", [10, 1000])
@pytest.mark.parametrize("seed", [0, 3])
def test_pxap_equals_sklearn_average_precision_on_binned_scores(seed, bins):
    maps, masks = random_case(seed)
    maps[0, 0, :3] = 1.0  # exact ones have their own bin
    acc = LocalizationAccumulator(bins=bins)
    acc.update(maps[:3], masks[:3])
    acc.update(maps[3:], masks[3:])  # accumulation over batches
    binned = torch.clamp(torch.floor(maps * bins), 0, bins) / bins
    expected = 100 * average_precision_score(masks.flatten().numpy(), binned.flatten().numpy())
    assert acc.compute()["pxap"] == pytest.approx(expected, abs=1e-9)


def test_pxap_of_perfect_and_constant_maps():
    _, masks = random_case(5)
    acc = LocalizationAccumulator()
    acc.update(masks.clone(), masks)
    assert acc.compute()["pxap"] == pytest.approx(100.0)
    acc = LocalizationAccumulator()
    acc.update(torch.ones_like(masks), masks)
    assert acc.compute()["pxap"] == pytest.approx(100 * masks.mean().item())  # chance level


def test_best_threshold_dice_matches_brute_force():
    maps, masks = random_case(7)
    bins = 50
    acc = LocalizationAccumulator(bins=bins)
    acc.update(maps, masks)
    out = acc.compute()
    gt = masks.numpy() >= 0.5
    best, best_t = -1.0, None
    for j in range(bins + 1):
        t = j / bins
        pred = np.floor(np.clip(maps.numpy(), 0, 1) * bins) >= j
        d = slow_dice(pred, gt)
        if d > best + 1e-15:
            best, best_t = d, t
            inter = np.logical_and(pred, gt).sum()
            iou = inter / np.logical_or(pred, gt).sum()
    assert out["dice_best"] == pytest.approx(100 * best)
    assert out["iou_best"] == pytest.approx(100 * iou)
    assert out["threshold_best"] == pytest.approx(best_t)


def test_histogram_metrics_without_foreground_is_nan_not_crash():
    hist = torch.zeros(11, dtype=torch.long)
    out = histogram_metrics(hist, hist + 3)
    assert np.isnan(out["pxap"])


def test_classification_error():
    logits = torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, -1.0], [0.0, 5.0]])
    labels = torch.tensor([0, 0, 0, 1])
    assert classification_error(logits, labels) == 25.0
    assert classification_error(labels, labels) == 0.0
