"""Ground-truth boxes and ignore regions in items: they move with the mask through every transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixture_trees import make_cub
from wsolbench_plugins.datasets.cub import Cub, Cub5
from wsolbench_plugins.datasets.synthetic import Synthetic

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
    "quick": {"crop_size": NATURAL_QUICK["crop_size"], "resize_short": NATURAL_QUICK["resize_short"]},
    "paper": {"crop_size": NATURAL_PAPER["crop_size"], "min_short": NATURAL_PAPER["min_short"]},
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


# -- CUB's official boxes ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def cub_tree(tmp_path_factory):
    return make_cub(tmp_path_factory.mktemp("cub") / "cub")


def official_rows(root) -> dict[str, list[int]]:
    """``{image stem: inclusive box}`` read straight from the tree's files: int(x), int(y), int(x + w), int(y + h)."""
    meta = root / "CUB_200_2011"
    paths = dict(line.split(" ", 1) for line in (meta / "images.txt").read_text().splitlines())
    out = {}
    for line in (meta / "bounding_boxes.txt").read_text().splitlines():
        number, x, y, w, h = line.split()
        out[paths[number].rsplit(".", 1)[0]] = [int(float(x)), int(float(y)), int(float(x) + float(w)),
                                                int(float(y) + float(h))]
    return out


def test_cub_items_carry_the_official_box(cub_tree):
    rows = official_rows(cub_tree)
    for dataset in (Cub(root=str(cub_tree)), Cub5(root=str(cub_tree), resize_short=12)):
        for name in ("train", "valid", "test"):
            split = dataset.split(name, train=False)
            for i in range(len(split)):
                item = split[i]
                assert item["boxes"].tolist() == [rows[split.ids[i]]]
                # the fixture's box is its segmentation's rectangle: the mask's bounding box
                assert item["boxes"].tolist() == [mask_box(item["mask"][:, :-2])]


def test_cub_split_files_get_the_boxes_too(cub_tree, tmp_path):
    dataset = Cub(root=str(cub_tree))
    rows = official_rows(cub_tree)
    folder = tmp_path / "split"
    folder.mkdir()
    for name in ("train", "test"):
        lines = [f"CUB_200_2011/images/{r.id}.jpg,segmentations/{r.id}.png,{dataset.classes[r.label]}"
                 for r in dataset.records(name)]
        (folder / f"{name}_s_0_f_0.csv").write_text("\n".join(lines) + "\n")
    listed = Cub(root=str(cub_tree), split_dir=str(folder))
    assert all(r.boxes == (tuple(rows[r.id]),) for r in listed.records("test"))


def test_cub_without_bounding_boxes(tmp_path):
    root = make_cub(tmp_path / "cub", per_class=(2, 1))
    (root / "CUB_200_2011" / "bounding_boxes.txt").unlink()
    with pytest.raises(DataError, match="missing CUB_200_2011/bounding_boxes.txt") as info:
        Cub(root=str(root)).splits()
    assert "dataset.boxes=false" in str(info.value)
    segmentation_only = Cub(root=str(root), boxes=False)
    item = segmentation_only.split("test")[0]
    assert set(item) == {"image", "mask", "label", "index"}
    (root / "CUB_200_2011" / "bounding_boxes.txt").write_text("1 3.0 4.0 five 6\n")
    with pytest.raises(DataError, match="image 1 has '3.0 4.0 five 6'"):
        Cub(root=str(root)).splits()
    (root / "CUB_200_2011" / "bounding_boxes.txt").write_text("1 3.0 4.0 5.0 6.0\n")
    with pytest.raises(DataError, match="no box for image 2 .* and 19 more"):
        Cub(root=str(root)).splits()


# -- the synthetic set's boxes --------------------------------------------------------------------
def test_synthetic_draws_one_box_per_object():
    dataset = Synthetic(seed=3, image_size=48, n_test=30)
    for i in range(30):
        _, mask, _, boxes = dataset.generate_with_boxes(2, i)
        assert np.array_equal(dataset.generate(2, i)[1], mask)
        assert 1 <= len(boxes) <= dataset.params["max_objects"]
        union = boxes_mask(boxes.tolist(), 48, 48)
        assert not (mask.astype(bool) & ~union).any()  # every object pixel is in a box
        for x0, y0, x1, y1 in boxes:  # each box is tight: object pixels on each of its four sides
            inside = mask[y0 : y1 + 1, x0 : x1 + 1].astype(bool)
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
    # one object: its box is the mask's bounding box, through both flips (a crop of an irregular shape
    # can cut the box's extreme rows or columns out of the mask, so crops are tested on rectangles above)
    single = Synthetic(seed=4, image_size=40, max_objects=1, n_train=12)
    split = single.split("train")
    torch.manual_seed(0)
    for i in range(12):
        item = split[i]
        assert item["boxes"].tolist() == [mask_box(item["mask"])]
