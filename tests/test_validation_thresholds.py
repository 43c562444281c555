"""The CVPR 2020 protocol: thresholds chosen on validation maps and applied to test maps, on hand-made maps.

Every map is 16 x 16 with one true box ``(4, 4, 11, 11)`` (64 pixels); a
region's predicted box is wsolevaluation's ``(x, y, x + w, y + h)``, one pixel
wider and taller than the region:

- ``ringed``: 1 on the box, 0.5 everywhere else. Below threshold 0.5 the
  whole image is foreground (IoU 64 / 256 = 0.25); from 0.5 on, the box
  itself (predicted ``(4, 4, 12, 12)``, IoU 64 / 81 = 0.79).
- ``cored(level)``: 1 on the 2 x 2 core ``(7, 7, 8, 8)``, ``level`` on the rest
  of the box, 0 outside: the box (IoU 0.79) while ``int(t * 255) <
  int(level * 255)``, the core (predicted ``(7, 7, 9, 9)``, IoU 9 / 64 = 0.14)
  from there on.

Every IoU is thus below 0.3 or above 0.7: the three IoU thresholds agree.

With the grid ``np.arange(0, 1, 0.1)``, validation (3 ringed, 1 cored(0.6))
is right everywhere at 0.5 only; test (1 ringed, 2 cored(0.3)) is best at 0
(two of three) and right for the ringed image alone at 0.5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsolbench.scoring.metrics import BoxAccumulator, ChosenThresholds, LocalizationAccumulator

BOX = torch.tensor([[4, 4, 11, 11]])
INTERVAL = 0.1


def ringed() -> torch.Tensor:
    m = torch.full((16, 16), 0.5)
    m[4:12, 4:12] = 1.0
    return m


def cored(level: float) -> torch.Tensor:
    m = torch.zeros(16, 16)
    m[4:12, 4:12] = level
    m[7:9, 7:9] = 1.0
    return m


def box_mask() -> torch.Tensor:
    mask = torch.zeros(16, 16)
    mask[4:12, 4:12] = 1.0
    return mask


def score(maps: list[torch.Tensor]) -> tuple[BoxAccumulator, LocalizationAccumulator]:
    boxes, pixels = BoxAccumulator(interval=INTERVAL), LocalizationAccumulator(bins=10)
    stacked = torch.stack(maps)
    boxes.update(stacked, [BOX] * len(maps))
    pixels.update(stacked, torch.stack([box_mask()] * len(maps)))
    return boxes, pixels


def pooled_dice(maps: list[torch.Tensor], threshold: float) -> float:
    """Dice of all pixels pooled, foreground where the map is >= ``threshold``: written again here."""
    pred = np.concatenate([m.numpy().ravel() >= threshold for m in maps])
    true = np.concatenate([box_mask().numpy().ravel() >= 0.5 for _ in maps])
    return 100.0 * 2 * (pred & true).sum() / (pred.sum() + true.sum())


VALID = [ringed(), ringed(), ringed(), cored(0.6)]
TEST = [ringed(), cored(0.3), cored(0.3)]


def test_the_validation_split_chooses_the_threshold_where_every_image_is_right():
    boxes, pixels = score(VALID)
    chosen = ChosenThresholds.choose(torch.cat(boxes.iou_largest), torch.cat(boxes.iou_any),
                                     pixels.hist_fg, pixels.hist_bg)
    assert chosen.box == 5 and chosen.box_iou == (5, 5, 5)
    assert boxes.compute()["maxboxacc"] == 100.0
    # the pixel threshold is the bin of best pooled Dice, found here by trying every bin
    dices = [pooled_dice(VALID, j / 10) for j in range(11)]
    assert chosen.pixel_bin == int(np.argmax(dices))


def test_test_metrics_at_the_validation_thresholds_beside_the_test_optimal_ones():
    valid_boxes, valid_pixels = score(VALID)
    chosen = ChosenThresholds.choose(torch.cat(valid_boxes.iou_largest), torch.cat(valid_boxes.iou_any),
                                     valid_pixels.hist_fg, valid_pixels.hist_bg)
    boxes, pixels = score(TEST)
    labels = torch.tensor([0, 1, 1])
    logits = torch.tensor([[2.0, 1.0], [2.0, 1.0], [1.0, 2.0]])  # the ringed image and the last are classified right
    out = boxes.compute(logits, labels, chosen)
    # test-optimal: the two cored images at threshold 0
    assert out["maxboxacc"] == 200 / 3 and out["box_threshold"] == 0.0
    assert out["boxacc_50"] == 200 / 3 and out["maxboxaccv2"] == 200 / 3
    # at validation's 0.5: the ringed image alone
    assert out["boxacc_at_val"] == 100 / 3 and out["box_threshold_val"] == 0.5
    for iou in (30, 50, 70):
        assert out[f"boxacc_{iou}_at_val"] == 100 / 3 and out[f"box_threshold_val_{iou}"] == 0.5
    assert out["boxaccv2_at_val"] == 100 / 3
    # top-k localization at validation's threshold: only the ringed image has its box, and it is classified right
    assert [out["gt_known_loc"], out["top1_loc"], out["top5_loc"]] == pytest.approx([100 / 3] * 3)
    # without a validation split the same figures take the test split's own threshold
    alone = boxes.compute(logits, labels)
    assert [alone["gt_known_loc"], alone["top1_loc"]] == pytest.approx([200 / 3, 100 / 3])
    assert np.isnan(alone["boxacc_at_val"]) and np.isnan(alone["box_threshold_val"])

    pixel = pixels.compute(chosen.pixel_bin)
    assert pixel["threshold_val"] == chosen.pixel_bin / 10
    assert abs(pixel["dice_at_val"] - pooled_dice(TEST, chosen.pixel_bin / 10)) < 1e-9
    assert abs(pixel["dice_best"] - max(pooled_dice(TEST, j / 10) for j in range(11))) < 1e-9
    assert pixel["dice_at_val"] <= pixel["dice_best"]
    assert np.isnan(pixels.compute()["dice_at_val"])
