"""Box metrics against wsolevaluation's arithmetic (written again with OpenCV in box_reference), and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from box_reference import reference_best_ious
from sklearn.metrics import average_precision_score

from wsolbench.config import EvalConfig
from wsolbench.data.boxes import boxes_from_mask
from wsolbench.scoring.metrics import (
    WSOLEVAL_SIZE,
    BoxAccumulator,
    LocalizationAccumulator,
    contour_boxes,
    scale_boxes,
)
from wsolbench.scoring.scorer import pixel_accumulator


def reference_metrics(maps: list[np.ndarray], true_boxes: list[list[list[int]]], interval: float) -> dict:
    thresholds = np.arange(0, 1, interval)
    correct = {(every, iou): np.zeros(len(thresholds)) for every in (False, True) for iou in (30, 50, 70)}
    for scoremap, truth in zip(maps, true_boxes):
        for every in (False, True):
            per_threshold = reference_best_ious(scoremap, truth, thresholds, every)
            for iou in (30, 50, 70):
                correct[every, iou][per_threshold >= iou / 100] += 1
    acc = {key: value * 100.0 / float(len(maps)) for key, value in correct.items()}
    out = {"maxboxacc": acc[False, 50].max(), "box_threshold": thresholds[acc[False, 50].argmax()]}
    for iou in (30, 50, 70):
        out[f"boxacc_{iou}"] = acc[True, iou].max()
        out[f"box_threshold_{iou}"] = thresholds[acc[True, iou].argmax()]
    out["maxboxaccv2"] = np.average([out["boxacc_30"], out["boxacc_50"], out["boxacc_70"]])
    return out


# -- generated maps -----------------------------------------------------------------
def generated_map(rng: np.random.Generator, height: int, width: int, kind: str) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "zero":
        return np.zeros((height, width), np.float32)
    out = np.zeros((height, width), np.float32)
    for _ in range(rng.integers(1, 5)):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        sy, sx = rng.uniform(1.5, height / 3), rng.uniform(1.5, width / 3)
        d = ((y - cy) / sy) ** 2 + ((x - cx) / sx) ** 2
        if kind == "rings":  # a peak on a circle: a hole in the middle at high thresholds
            out += np.exp(-((np.sqrt(d) - 1.5) ** 2) * 2).astype(np.float32)
        else:
            out += np.exp(-d).astype(np.float32)
    if kind == "noisy":
        out += rng.uniform(0, 0.6, out.shape).astype(np.float32)
    if kind == "steps":  # few values: many thresholds give the same binary image
        out = np.floor(out / out.max() * 4)
    out = (out - out.min()) / (out.max() - out.min())
    return out.astype(np.float32)


def random_boxes(rng: np.random.Generator, height: int, width: int) -> list[list[int]]:
    boxes = []
    for _ in range(rng.integers(1, 4)):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        boxes.append([x0, y0, x1, y1])
    return boxes


@pytest.mark.parametrize("interval", [0.01, 0.05])
@pytest.mark.parametrize("seed", [0, 1])
def test_box_metrics_equal_the_reference_arithmetic(seed, interval):
    rng = np.random.default_rng(seed)
    kinds = ["blobs", "rings", "noisy", "steps", "zero"]
    maps, truth = [], []
    for i in range(20):
        height, width = (36, 52) if i % 2 else (48, 40)
        maps.append(generated_map(rng, height, width, kinds[i % len(kinds)]))
        # boxes near the map's own blobs too, so that every IoU threshold has hits and misses
        own = boxes_from_mask(torch.from_numpy(maps[-1] > rng.uniform(0.2, 0.8))).tolist()
        truth.append((own[:1] if own else []) + random_boxes(rng, height, width))
    acc = BoxAccumulator(interval=interval)
    for m, b in zip(maps, truth):  # images of different sizes, one at a time
        acc.update(torch.from_numpy(m), torch.tensor(b))
    got = acc.compute()
    expected = reference_metrics(maps, truth, interval)
    for name, value in expected.items():
        assert got[name] == float(value), name
    assert 0 < got["boxacc_70"] < got["boxacc_30"] < 100  # the cases tell the thresholds apart


def test_a_batch_scores_as_its_images_one_by_one():
    rng = np.random.default_rng(4)
    maps = np.stack([generated_map(rng, 30, 30, k) for k in ("blobs", "rings", "noisy", "zero")])
    truth = [torch.tensor(random_boxes(rng, 30, 30)) for _ in maps]
    batch, single = BoxAccumulator(), BoxAccumulator()
    batch.update(torch.from_numpy(maps), truth)
    for m, t in zip(maps, truth):
        single.update(torch.from_numpy(m), t)
    assert torch.equal(torch.cat(batch.iou_any), torch.cat(single.iou_any))
    assert torch.equal(torch.cat(batch.iou_largest), torch.cat(single.iou_largest))


# -- hand-made cases ----------------------------------------------------------------
def box_map(height: int, width: int, box: list[int]) -> torch.Tensor:
    m = torch.zeros(height, width)
    m[box[1] : box[3] + 1, box[0] : box[2] + 1] = 1
    return m


def test_a_map_equal_to_the_box_scores_100_at_every_iou():
    box = [10, 12, 39, 31]
    acc = BoxAccumulator()
    acc.update(box_map(50, 60, box), torch.tensor([box]))
    out = acc.compute()
    assert out["maxboxacc"] == out["boxacc_30"] == out["boxacc_50"] == out["boxacc_70"] == 100.0
    assert out["maxboxaccv2"] == 100.0 and out["gt_known_loc"] == 100.0


def test_a_map_shifted_by_half_the_box_misses_at_iou_07():
    box = [10, 10, 29, 29]
    shifted = [20, 10, 39, 29]
    acc = BoxAccumulator()
    acc.update(box_map(50, 60, shifted), torch.tensor([box]))
    out = acc.compute()
    assert out["boxacc_70"] == 0.0 and out["boxacc_50"] == 0.0 and out["maxboxacc"] == 0.0


def test_two_blobs_and_two_boxes_show_the_multi_contour_difference():
    # a large blob where nothing is, a small blob on the first true box; the second true box has no blob
    m = box_map(60, 60, [2, 2, 30, 30]) + box_map(60, 60, [40, 40, 49, 49])
    truth = torch.tensor([[40, 40, 49, 49], [2, 45, 12, 57]])
    acc = BoxAccumulator()
    acc.update(m, truth)
    out = acc.compute()
    assert out["maxboxacc"] == 0.0  # the largest contour is the wrong blob
    assert out["boxacc_50"] == 100.0 and out["boxacc_70"] == 100.0  # every contour: the small blob matches


def test_an_all_zero_map_gives_the_zero_box():
    found, position = contour_boxes(np.zeros((20, 30), np.uint8), np.arange(0, 100) * 0)
    assert [b.tolist() for b in found] == [[[0, 0, 0, 0]]] and set(position.tolist()) == {0}
    acc = BoxAccumulator()
    acc.update(torch.zeros(20, 30), torch.tensor([[0, 0, 0, 0]]))  # the one-pixel box at the corner matches it
    assert acc.compute()["maxboxacc"] == 100.0


def test_a_hole_has_its_own_box():
    binary = np.zeros((12, 12), np.uint8)
    binary[1:11, 1:11] = 255
    binary[4:6, 4:6] = 0  # a 2 x 2 hole at (4, 4)
    found, _ = contour_boxes(binary, np.array([0]))
    assert sorted(found[0].tolist()) == [[1, 1, 11, 11], [3, 3, 7, 7]]


def test_top_k_localization_needs_the_class_and_the_box():
    box = [5, 5, 20, 20]
    good = box_map(30, 30, box)
    acc = BoxAccumulator()
    acc.update(torch.stack([good, good, torch.zeros(30, 30)]), [torch.tensor([box])] * 3)
    logits = torch.tensor([[5.0, 1, 0, 0, 0, 0], [1.0, 5, 0, 0, 0, 0], [5.0, 1, 0, 0, 0, 0]])
    out = acc.compute(logits, torch.tensor([0, 0, 0]))
    assert out["gt_known_loc"] == pytest.approx(200 / 3)  # images 0 and 1 have the box
    assert out["top1_loc"] == pytest.approx(100 / 3)  # image 1's class is second
    assert out["top5_loc"] == pytest.approx(200 / 3)


def test_boxes_scale_as_wsolevaluation_resizes_them():
    boxes = torch.tensor([[0, 3, 499, 374], [17, 250, 333, 301]])
    scaled = scale_boxes(boxes, (375, 500), (224, 224))
    expected = [[int(float(x) * 224.0 / 500.0), int(float(y0) * 224.0 / 375.0), int(float(x1) * 224.0 / 500.0),
                 int(float(y1) * 224.0 / 375.0)] for x, y0, x1, y1 in boxes.tolist()]
    assert scaled.tolist() == expected


def test_boxes_from_a_mask_one_per_8_connected_component():
    mask = torch.zeros(10, 12)
    mask[1:3, 2:5] = 1
    mask[3, 5] = 1  # touches the first component by a corner: the same component
    mask[6:9, 7:11] = 1
    assert boxes_from_mask(mask).tolist() == [[2, 1, 5, 3], [7, 6, 10, 8]]
    assert boxes_from_mask(torch.zeros(4, 4)).shape == (0, 4)


def test_pxap_leaves_ignored_pixels_out():
    g = torch.Generator().manual_seed(7)
    bins = 100
    masks = (torch.rand(3, 20, 20, generator=g) < 0.3).float()
    maps = (0.7 * torch.rand(3, 20, 20, generator=g) + 0.3 * masks).clamp(0, 1)
    ignore = (torch.rand(3, 20, 20, generator=g) < 0.25) & (masks < 0.5)
    acc = LocalizationAccumulator(bins=bins)
    acc.update(maps, masks, ignore)
    keep = ~ignore
    binned = torch.clamp(torch.floor(maps * bins), 0, bins) / bins
    expected = 100 * average_precision_score(masks[keep].numpy(), binned[keep].numpy())
    assert acc.compute()["pxap"] == pytest.approx(expected, abs=1e-9)
    plain = LocalizationAccumulator(bins=bins)
    plain.update(maps, masks)
    assert plain.compute()["pxap"] != pytest.approx(expected, abs=1e-6)  # the ignore regions matter here


# -- PxAP as wsolevaluation's MaskEvaluator computes it -------------------------------------------
def reference_pxap(maps: list[np.ndarray], masks: list[np.ndarray], interval: float) -> float:
    """wsolevaluation's arithmetic written again: ``np.histogram`` over ``np.arange(0, 1, interval)`` and
    ``[1, 2, 3]``, per image at the pixels marked 1 (foreground) and 0 (background; 255 is ignored);
    reversed cumulative sums; the precision x recall-increment products summed by ``ndarray.sum``."""
    edges = np.append(np.arange(0, 1, interval), [1.0, 2.0, 3.0])
    true_hist = np.zeros(len(edges) - 1)
    false_hist = np.zeros(len(edges) - 1)
    for scoremap, mask in zip(maps, masks):
        true_hist += np.histogram(scoremap[mask == 1], bins=edges)[0].astype(np.float64)
        false_hist += np.histogram(scoremap[mask == 0], bins=edges)[0].astype(np.float64)
    tp = true_hist[::-1].cumsum()
    fn = true_hist.sum() - tp
    fp = false_hist[::-1].cumsum()
    nonzero = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    return float((precision[1:] * np.diff(recall))[nonzero[1:]].sum() * 100)


@pytest.mark.parametrize(("seed", "interval"), [(0, 0.01), (1, 0.01), (2, 0.001), (3, 0.05)])
def test_pxap_under_wsoleval_is_masks_evaluators_to_the_last_bit(seed, interval):
    rng = np.random.default_rng(seed)
    size = WSOLEVAL_SIZE  # wsolevaluation's own geometry: nothing is resized
    maps, masks, ignores = [], [], []
    for _ in range(3):
        truth = np.zeros((size, size), np.uint8)
        x, y = rng.integers(0, size // 2, 2)
        truth[y : y + size // 3, x : x + size // 4] = 1
        scoremap = np.clip(0.6 * truth + 0.5 * rng.random((size, size)), 0, 1).astype(np.float32)
        # values on the grid's edges, where float32 maps meet float64 thresholds, and exactly 0 and 1
        on_edges = rng.random((size, size)) < 0.3
        scoremap[on_edges] = np.float32(rng.integers(0, 101, on_edges.sum()) / 100)
        ignore = (rng.random((size, size)) < 0.1) & (truth == 0)
        maps.append(scoremap)
        masks.append(np.where(ignore, 255, truth).astype(np.uint8))
        ignores.append(ignore)
    expected = reference_pxap(maps, masks, interval)
    pixels = pixel_accumulator(EvalConfig(protocol="wsoleval", cam_curve_interval=interval))  # the scorer's
    pixels.update(torch.from_numpy(np.stack(maps)), torch.from_numpy((np.stack(masks) == 1).astype(np.float32)),
                  torch.from_numpy(np.stack(ignores)))
    assert pixels.compute()["pxap"] == expected  # equal, not approximately
    # the native geometry's equal-width bins give another number: the choice of bins is what matters here
    native = LocalizationAccumulator(bins=round(1 / interval))
    native.update(torch.from_numpy(np.stack(maps)), torch.from_numpy((np.stack(masks) == 1).astype(np.float32)),
                  torch.from_numpy(np.stack(ignores)))
    assert native.compute()["pxap"] != expected
