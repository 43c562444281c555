"""Ground-truth boxes and ignore regions in items: they move with the mask through every transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsolbench.data.files import NATURAL_PAPER, NATURAL_QUICK, boxes_mask
from wsolbench.data.samples import SampleDataset, check_annotations
from wsolbench.data.transforms import eval_transform, train_transform
from wsolbench.errors import DataError


def mask_box(mask: torch.Tensor) -> list[int] | None:
    """The bounding box (x0, y0, x1, y1, inclusive) of a mask's foreground, computed directly."""
    ys, xs = np.nonzero(mask.numpy().reshape(mask.shape[-2:]) > 0.5)
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def random_rectangle(rng: np.random.Generator, height: int, width: int) -> list[int]:
    x0, x1 = sorted(int(v) for v in rng.integers(0, width, 2))
    y0, y1 = sorted(int(v) for v in rng.integers(0, height, 2))
    return [x0, y0, x1, y1]


def rectangle_item(transform, height: int, width: int, box: list[int], seed: int) -> dict:
    """The item of an image whose mask is the filled ``box``, with that box and the mask as ignore region."""
    mask = torch.from_numpy(boxes_mask([box], height, width).astype(np.uint8))[None]
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    annotations = {"boxes": torch.tensor([box]), "ignore": mask.bool()}
    split = SampleDataset(1, lambda i: (image, mask, 3, annotations), transform)
    torch.manual_seed(seed)
    return split[0]


PRESETS = {
    "quick": dict(crop_size=NATURAL_QUICK["crop_size"], resize_short=NATURAL_QUICK["resize_short"]),
    "paper": dict(crop_size=NATURAL_PAPER["crop_size"], min_short=NATURAL_PAPER["min_short"]),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_rectangle_mask_keeps_its_box_through_training_transforms(preset):
    # sizes on both sides of the presets' resizing, odd scales included; flips in both directions
    transform = train_transform(**PRESETS[preset], hflip=True, vflip=True)
    rng = np.random.default_rng(0)
    for trial in range(12 if preset == "quick" else 6):
        height, width = (int(v) for v in rng.integers(130, 260, 2))
        box = random_rectangle(rng, height, width)
        item = rectangle_item(transform, height, width, box, seed=trial)
        expected = mask_box(item["mask"])
        boxes = item["boxes"]
        assert boxes.dtype == torch.int64
        if expected is None:  # cropped away: no pixel of the box is left, nor of the mask
            assert boxes.shape == (0, 4)
        else:
            assert boxes.tolist() == [expected], (height, width, box)
        assert item["ignore"].dtype == torch.bool and torch.equal(item["ignore"], item["mask"] > 0.5)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_evaluation_items_keep_box_and_mask_in_the_original_frame(preset):
    keys = {k: v for k, v in PRESETS[preset].items() if k != "crop_size"}
    transform = eval_transform(**keys)
    rng = np.random.default_rng(1)
    for trial in range(4):
        height, width = (int(v) for v in rng.integers(60, 140, 2))
        box = random_rectangle(rng, height, width)
        item = rectangle_item(transform, height, width, box, seed=trial)
        assert item["mask"].shape == (1, height, width) and item["image"].shape[-2:] != (height, width)
        assert item["boxes"].tolist() == [box] == [mask_box(item["mask"])]


def test_resize_then_flip_matches_the_mask_exactly():
    # a flip after a non-integer resize mirrors the resize's rounding: the case a single final rounding gets wrong
    transform = train_transform(resize_short=40, hflip=True)
    flipped = False
    for seed in range(8):  # some seeds flip, some do not
        item = rectangle_item(transform, 148, 176, [81, 11, 149, 87], seed=seed)
        assert item["boxes"].tolist() == [mask_box(item["mask"])]
        flipped = flipped or item["boxes"][0, 0].item() < 20
    assert flipped


def test_items_without_annotations_are_unchanged():
    rng = np.random.default_rng(2)
    image = torch.from_numpy(rng.integers(0, 256, (3, 50, 70), dtype=np.uint8))
    mask = torch.from_numpy(boxes_mask([[10, 5, 40, 30]], 50, 70).astype(np.uint8))[None]
    transform = train_transform(crop_size=32, resize_short=40, hflip=True)
    plain = SampleDataset(1, lambda i: (image, mask, 1), transform)
    annotated = SampleDataset(1, lambda i: (image, mask, 1, {"boxes": torch.tensor([[10, 5, 40, 30]])}), transform)
    torch.manual_seed(5)
    a = plain[0]
    torch.manual_seed(5)
    b = annotated[0]
    assert set(a) == {"image", "mask", "label", "index"} and set(b) == set(a) | {"boxes"}
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    untransformed = SampleDataset(1, lambda i: (image, mask, 1), None)[0]
    assert set(untransformed) == {"image", "mask", "label", "index"}
    assert torch.allclose(untransformed["image"] * 255, image.float())


def test_several_boxes_and_boxes_cropped_away():
    # two boxes, a 16-pixel crop can keep one, both or none
    transform = train_transform(crop_size=16, hflip=False)
    boxes = [[2, 2, 6, 6], [30, 30, 37, 35]]
    mask = torch.from_numpy(boxes_mask(boxes, 40, 40).astype(np.uint8))[None]
    split = SampleDataset(1, lambda i: (torch.zeros(3, 40, 40, dtype=torch.uint8), mask, 0,
                                         {"boxes": torch.tensor(boxes)}), transform)
    counts = set()
    for seed in range(40):
        torch.manual_seed(seed)
        item = split[0]
        counts.add(len(item["boxes"]))
        expected = []
        for box in boxes:  # each box's own pixels, cropped like the mask
            alone = torch.from_numpy(boxes_mask([box], 40, 40).astype(np.uint8))[None]
            torch.manual_seed(seed)
            moved = SampleDataset(1, lambda i, m=alone: (torch.zeros(3, 40, 40, dtype=torch.uint8), m, 0), transform)[0]
            if mask_box(moved["mask"]) is not None:
                expected.append(mask_box(moved["mask"]))
        assert item["boxes"].tolist() == expected
    assert {0, 1} <= counts


def test_annotations_are_checked():
    mask = torch.zeros(1, 10, 20)
    check_annotations(mask, {"boxes": torch.tensor([[0, 0, 19, 9]]), "ignore": torch.zeros(1, 10, 20)}, "x.jpg")
    with pytest.raises(DataError, match=r"box \[0, 0, 20, 9\].*20 x 10.*x\.jpg"):
        check_annotations(mask, {"boxes": torch.tensor([[0, 0, 20, 9]])}, "x.jpg")
    with pytest.raises(DataError, match="expected \\(K, 4\\)"):
        check_annotations(mask, {"boxes": torch.tensor([0, 0, 3, 3])}, "x.jpg")
    with pytest.raises(DataError, match="ignore region size"):
        check_annotations(mask, {"ignore": torch.zeros(1, 10, 10)}, "x.jpg")
    split = SampleDataset(1, lambda i: (torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(1, 4, 4), 0,
                                         {"box": torch.zeros(1, 4)}), None)
    with pytest.raises(DataError, match="unknown annotations \\['box'\\]"):
        split[0]
