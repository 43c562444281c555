"""File datasets on tiny trees in the official formats: splits, masks, split files, transforms, errors."""

from __future__ import annotations

import math
import random
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from fixture_trees import (
    CUB_CLASSES,
    GLAS_TEST,
    GLAS_TRAIN,
    cub_soft_mask,
    expected_oxf_mask,
    glas_anno,
    make_cub,
    make_folder,
    make_glas,
    make_oxf,
    region,
)
from PIL import Image
from scipy import ndimage
from wsolbench_plugins.datasets.cub import CUB5_CLASSES, Cub, Cub5
from wsolbench_plugins.datasets.folder import Folder
from wsolbench_plugins.datasets.glas import Glas
from wsolbench_plugins.datasets.oxf import Oxf

from wsolbench import config
from wsolbench.data.files import (
    ceil_share,
    limit_per_class,
    safe_path,
    stratified_holdout,
    verify,
)
from wsolbench.data.samples import Record, eval_collate, join_under, resolve_under
from wsolbench.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("trees")
    return {
        "glas": make_glas(base / "glas"),
        "cub": make_cub(base / "cub"),
        "oxf": make_oxf(base / "oxf"),
        "folder": make_folder(base / "folder"),
        "folder_splits": make_folder(base / "folder_splits", splits=True),
    }


def sizes(dataset) -> dict[str, int]:
    return {k: len(v) for k, v in dataset.splits().items()}


# -- split arithmetic ---------------------------------------------------------------------
def test_ceil_share_is_exact():
    for fraction in (0.1, 0.2, 0.25, 0.3, 0.5):
        for n in range(300):
            assert ceil_share(n, fraction) == math.ceil(Fraction(str(fraction)) * n), (n, fraction)
    assert [ceil_share(n, 0.2) for n in (37, 48, 30, 1, 0)] == [8, 10, 6, 1, 0]


def _records(counts: dict[int, int]) -> list[Record]:
    return [Record(f"{c}_{i}.png", None, c, f"{c}_{i}") for c, n in counts.items() for i in range(n)]


def test_stratified_holdout_per_class_rounded_up_and_deterministic():
    records = _records({0: 37, 1: 48, 2: 1, 3: 30})
    kept, held = stratified_holdout(records, 0.2, seed=0)
    count = lambda rs, c: sum(r.label == c for r in rs)  # noqa: E731
    assert [count(held, c) for c in range(4)] == [8, 10, 1, 6]
    assert {r.id for r in kept} | {r.id for r in held} == {r.id for r in records}
    assert not {r.id for r in kept} & {r.id for r in held}
    assert [r.id for r in kept] == [r.id for r in records if r in kept]  # order kept
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    assert {r.id for r in stratified_holdout(shuffled, 0.2, seed=0)[1]} == {r.id for r in held}
    assert {r.id for r in stratified_holdout(records, 0.2, seed=1)[1]} != {r.id for r in held}


def test_limit_per_class():
    records = _records({0: 5, 1: 2})
    kept = limit_per_class(records, 3, seed=0)
    assert sum(r.label == 0 for r in kept) == 3 and sum(r.label == 1 for r in kept) == 2


def test_safe_path_refuses_escapes(tmp_path):
    assert safe_path(tmp_path, "a/b.png") == tmp_path / "a" / "b.png"
    for bad in ("../x.png", "a/../../x.png", "/etc/passwd"):
        with pytest.raises(DataError, match="leaves the data root|is absolute"):
            safe_path(tmp_path, bad, "split.csv")
    with pytest.raises(DataError, match="^split.csv: "):
        safe_path(tmp_path, "../y.png", "split.csv")


def test_join_under_is_resolve_under_at_string_speed(tmp_path):
    for relative in ("a/b.png", "train/n01440764/n01440764_10026.JPEG", "a/x..y.png", "a/./b.png", "a/b/../c.png"):
        assert Path(join_under(tmp_path, relative)) == resolve_under(tmp_path, relative)
    for bad in ("../x.png", "a/../../x.png", "/etc/passwd"):
        with pytest.raises(DataError, match="leaves the data root|is absolute"):
            join_under(tmp_path, bad)


# -- GlaS -----------------------------------------------------------------------------------
def test_glas_official_split_labels_and_masks(trees):
    ds = Glas(root=str(trees["glas"]))
    official = ds.official_splits()
    assert {r.id for r in official["train"]} == set(GLAS_TRAIN) and {r.id for r in official["test"]} == set(GLAS_TEST)
    grades = {**GLAS_TRAIN, **GLAS_TEST}
    for rec in official["train"] + official["test"]:
        assert ds.classes[rec.label] == grades[rec.id]  # Grade.csv's leading spaces are ignored
    assert official["train"][1].image.endswith("train_2.png") and official["train"][0].image.endswith(".bmp")
    # 5 benign + 5 malignant train images: ceil(20%) = 1 of each held out for validation
    assert sizes(ds) == {"train": 8, "valid": 2, "test": 4}
    assert sorted(ds.split_labels("valid")) == [0, 1]
    test = ds.split("test")
    k = list(GLAS_TRAIN).__len__() + list(GLAS_TEST).index(test.ids[0])
    assert torch.equal(test[0]["mask"][0], torch.from_numpy(glas_anno(24, 36, k) != 0).float())


def test_glas_reference_split_file_with_bmp_names(trees, tmp_path):
    """Split files name .bmp files; the .png copies are used where the .bmp is absent."""
    rows = {"train": ["train_1", "train_2", "train_3", "train_4"], "valid": ["train_5"], "test": ["testA_1", "testB_1"]}
    for split, names in rows.items():
        lines = [f"{n}.bmp,{n}_anno.bmp,{(GLAS_TRAIN | GLAS_TEST)[n]}" for n in names]
        (tmp_path / f"{split}_s_0_f_0.csv").write_text("\n".join(lines) + "\n")
    ds = Glas(root=str(trees["glas"]), split_dir=str(tmp_path))
    assert sizes(ds) == {"train": 4, "valid": 1, "test": 2}
    train = {r.id: r for r in ds.records("train")}
    assert train["train_2"].image.endswith("train_2.png") and train["train_1"].image.endswith("train_1.bmp")
    assert ds.records("test")[1].mask.endswith("testB_1_anno.png")
    assert [ds.classes[y] for y in ds.split_labels("train")] == [GLAS_TRAIN[n] for n in rows["train"]]

    (tmp_path / "valid_s_0_f_0.csv").write_text("../outside.bmp,train_5_anno.bmp,benign\n")
    with pytest.raises(DataError, match="leaves the data root|is absolute"):
        Glas(root=str(trees["glas"]), split_dir=str(tmp_path)).splits()
    (tmp_path / "valid_s_0_f_0.csv").write_text("train_5.bmp,train_5_anno.bmp,cancerous\n")
    with pytest.raises(DataError, match=r"valid_s_0_f_0.csv, line 1: unknown label 'cancerous'"):
        Glas(root=str(trees["glas"]), split_dir=str(tmp_path)).splits()


def test_wrong_root_names_path_layout_and_source(tmp_path):
    (tmp_path / "train_1.bmp").write_bytes(b"")
    with pytest.raises(DataError) as info:
        Glas(root=str(tmp_path)).splits()
    text = str(info.value)
    assert str(tmp_path) in text and "Grade.csv" in text and "Expected layout" in text and "warwick" in text
    with pytest.raises(DataError, match="does not exist") as info:
        Oxf(root=str(tmp_path / "nope")).splits()
    assert "wsolbench data download oxf" in str(info.value)


# -- CUB -------------------------------------------------------------------------------------
def test_cub_splits_and_mask_threshold(trees):
    ds = Cub(root=str(trees["cub"]))
    assert ds.classes == CUB_CLASSES
    official = ds.official_splits()
    assert len(official["train"]) == 5 * len(CUB_CLASSES) and len(official["test"]) == 2 * len(CUB_CLASSES)
    assert sizes(ds) == {"train": 4 * 7, "valid": 1 * 7, "test": 2 * 7}  # ceil(0.2 * 5) = 1 per class
    rec = official["test"][0]
    n = int(rec.id.rsplit("_", 1)[1])
    expected = cub_soft_mask(20, 30, n) > 127.5
    assert np.array_equal(ds.read_mask(rec.mask), expected)
    assert expected[-2].all() and not expected[-1].any()  # 128 is bird, 127 is not
    # the root may also be the CUB_200_2011 folder itself, with segmentations/ inside
    inner = Cub(root=str(trees["cub"] / "CUB_200_2011"))
    assert inner.meta_dir == trees["cub"] / "CUB_200_2011"


def test_cub5_keeps_the_five_classes_relabelled(trees):
    ds = Cub5(root=str(trees["cub"]))
    assert ds.classes == CUB5_CLASSES
    official = ds.official_splits()
    assert len(official["train"]) == 25 and len(official["test"]) == 10
    for rec in official["train"]:
        assert rec.id.split("/")[0] == CUB5_CLASSES[rec.label]
    with pytest.raises(DataError, match="class_subset"):
        _ = Cub(root=str(trees["cub"]), class_subset=["999.Dodo"]).classes


def test_cub_reference_split_paths(trees, tmp_path):
    official = Cub5(root=str(trees["cub"])).official_splits()
    for split, recs in (("train", official["train"][:6]), ("test", official["test"][:3])):
        lines = [
            f"CUB_200_2011/images/{r.id}.jpg,segmentations/{r.id}.png,{CUB5_CLASSES[r.label]}" for r in recs
        ]
        (tmp_path / f"{split}.csv").write_text("image,mask,label\n" + "\n".join(lines) + "\n")
    ds = Cub5(root=str(trees["cub"]), split_dir=str(tmp_path))
    assert [r.id for r in ds.records("test")] == [r.id for r in official["test"][:3]]
    assert [r.mask for r in ds.records("test")] == [r.mask for r in official["test"][:3]]
    assert sum(sizes(ds).values()) == 9 and sizes(ds)["valid"] >= 1  # no valid file: held out from train


# -- Oxford Flowers ------------------------------------------------------------------------------
def test_oxf_mat_files_setid_and_blue_background(trees):
    ds = Oxf(root=str(trees["oxf"]))
    assert ds.num_classes == 102
    splits = ds.splits()
    numbers = {s: sorted(int(r.id.split("_")[1]) for r in recs) for s, recs in splits.items()}
    assert numbers["train"] == list(range(1, 25, 3)) and numbers["valid"] == list(range(2, 25, 3))
    assert numbers["test"] == list(range(3, 25, 3))
    for rec in splits["test"]:
        k = int(rec.id.split("_")[1])
        assert rec.label == (k - 1) % 3  # 1-based in the file
        mask = ds.read_mask(rec.mask)
        expected = expected_oxf_mask(k)
        edge = ndimage.binary_dilation(expected, iterations=2) & ~ndimage.binary_erosion(expected, iterations=2)
        assert not ((mask != expected) & ~edge).any()  # JPEG blurs colours at the edge only
        exact_rule = ~(np.asarray(Image.open(rec.mask)) == (0, 0, 254)).all(-1)
        assert ((exact_rule != expected) & ~edge).mean() > 0.1  # why the tolerance: JPEG's blue is not exact


def test_oxf_reference_rows_use_segmim_and_zero_based_labels(trees, tmp_path):
    for split, ks in (("train", [1, 4]), ("valid", [2]), ("test", [3, 6])):
        lines = [f"jpg/image_{k:05d}.jpg,segmim_bin/segmim_{k:05d}.jpg,{(k - 1) % 3}" for k in ks]
        (tmp_path / f"{split}_s_0_f_0.csv").write_text("\n".join(lines) + "\n")
    ds = Oxf(root=str(trees["oxf"]), split_dir=str(tmp_path))
    rec = ds.records("test")[1]
    assert rec.id == "image_00006" and rec.label == 2 and rec.mask.endswith("segmim/segmim_00006.jpg")


# -- folder --------------------------------------------------------------------------------------
def test_folder_class_folders_and_masks(trees):
    ds = Folder(root=str(trees["folder"]))
    assert ds.classes == ["cat", "dog"]
    assert sizes(ds) == {"train": 6, "valid": 2, "test": 2}  # test: ceil(20% of 5) per class, then valid
    for rec in ds.splits()["test"] + ds.splits()["train"]:
        k = int(rec.id[-1]) + 1 + 5 * rec.label
        assert np.array_equal(ds.read_mask(rec.mask), region(20, 24, k))  # 0/1 and 0/255 masks alike
    with_splits = Folder(root=str(trees["folder_splits"]))
    assert with_splits.classes == ["cat", "dog"]
    assert sizes(with_splits)["test"] == 4 and with_splits.records("test")[0].id.startswith("test/cat/")


# -- items, transforms, caching, errors -----------------------------------------------------------
def test_items_train_crops_move_masks_and_eval_keeps_mask_resolution(trees):
    # images whose first channel is 255 exactly on the mask: after any geometric transform, they must agree
    ds = Glas(root=str(trees["glas"]), crop_size=16, reflect_pad=0.5, jitter=[], normalize="half")
    split = ds.split("train")
    for i in range(len(split)):
        image, mask, label = split.raw(i)
        image[0] = torch.where(mask[0].bool(), 255, 0)
    torch.manual_seed(0)
    for _ in range(3):
        for i in range(len(split)):
            item = split[i]
            assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (1, 16, 16)
            assert torch.equal(item["image"][0] > 0, item["mask"][0] > 0.5)
    small = Glas(root=str(trees["glas"]), resize_short=12)
    item = small.split("test")[0]
    assert item["image"].shape == (3, 12, 18) and item["mask"].shape == (1, 24, 36)
    big = Cub(root=str(trees["cub"]), min_short=40, resize_short=0)
    item = big.split("test")[0]
    assert item["image"].shape == (3, 40, 60) and item["mask"].shape == (1, 20, 30)
    batch = eval_collate([big.split("test")[i] for i in range(2)], multiple=32)
    assert batch["image"].shape == (2, 3, 64, 64) and batch["sizes"] == [(40, 60), (40, 60)]


def test_cache_small_splits_only(trees, monkeypatch):
    import wsolbench.data.files as module

    calls = []
    original = module.read_image
    monkeypatch.setattr(module, "read_image", lambda p: calls.append(p) or original(p))
    cached = Glas(root=str(trees["glas"])).split("test")
    cached[0], cached[0], cached[1]
    assert len(calls) == 2
    calls.clear()
    uncached = Glas(root=str(trees["glas"]), cache_images=2).split("test")  # 4 images > 2
    uncached[0], uncached[0]
    assert len(calls) == 2


def test_corrupt_image_is_named_even_from_a_worker(tmp_path):
    root = make_glas(tmp_path / "glas")
    (root / "testA_2.bmp").write_bytes(b"not an image at all")
    split = Glas(root=str(root)).split("test")
    index = split.ids.index("testA_2")
    with pytest.raises(DataError, match="testA_2.bmp"):
        split[index]
    only = torch.utils.data.Subset(split, [index])
    loader = torch.utils.data.DataLoader(only, batch_size=1, num_workers=1, collate_fn=eval_collate)
    batches = iter(loader)
    with pytest.raises(DataError) as info:
        next(batches)
    message = str(info.value)
    del info, batches  # the traceback holds the iterator: free it so the worker stops now
    assert message.startswith("cannot read image") and "testA_2.bmp" in message and "Traceback" not in message


def test_verify_lists_every_problem(tmp_path):
    root = make_glas(tmp_path / "glas")
    (root / "testA_2.bmp").write_bytes(b"garbage")
    (root / "train_3_anno.bmp").unlink()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "testB_2_anno.bmp")
    report = verify(Glas(root=str(root)), workers=2)
    assert report.total == 14 and report.checked == 14
    assert report.counts["train"] == {"benign": 5, "malignant": 5}
    assert report.run_sizes == {"train": 8, "valid": 2, "test": 4}
    assert len(report.problems) == 3
    text = "\n".join(report.problems)
    assert "cannot read image" in text and "testA_2.bmp" in text
    assert "mask not found" in text and "train_3_anno.bmp" in text
    assert "mask size (10, 10) differs from image size (24, 36)" in text


def test_bad_parameters_are_config_errors(trees):
    with pytest.raises(ConfigError, match="normalize"):
        Glas(root=str(trees["glas"]), normalize="zscore")
    with pytest.raises(ConfigError, match="jitter"):
        Glas(root=str(trees["glas"]), jitter=[0.5])


def test_profiles_follow_the_paper():
    glas = config.resolve("cam-avg", "glas", "paper").dataset_params
    assert glas["crop_size"] == 480 and glas["reflect_pad"] == 0.5 and glas["vflip"] and glas["hflip"]
    assert glas["jitter"] == [0.5, 0.5, 0.5, 0.05] and glas["normalize"] == "half"
    for name in ("cub", "cub5", "oxf"):
        paper = config.resolve("cam-avg", name, "paper")
        p = paper.dataset_params
        assert p["min_short"] == 500 and p["crop_size"] == 480 and p["hflip"] and not p["vflip"] and not p["jitter"]
        assert p["max_per_class"] == 0
        quick = config.resolve("cam-avg", name, "quick").dataset_params
        assert quick["min_short"] == 0 and quick["resize_short"] == 128
    assert config.resolve("cam-avg", "glas", "quick").dataset_params["resize_short"] == 128


def test_valid_per_class_keeps_k_of_each_class_and_drops_the_rest(trees):
    full = Cub(root=str(trees["cub"]))  # 5 training images per class: 1 held out per class (20%, rounded up)
    wider = Cub(root=str(trees["cub"]), valid_fraction=0.6)  # 3 held out per class
    few = Cub(root=str(trees["cub"]), valid_fraction=0.6, valid_per_class=2)
    kept = few.records("valid")
    assert [sum(r.label == c for r in kept) for c in range(len(CUB_CLASSES))] == [2] * len(CUB_CLASSES)
    assert {r.id for r in kept} < {r.id for r in wider.records("valid")}
    assert few.records("train") == wider.records("train") and few.records("test") == full.records("test")
    assert all(r.boxes for r in kept)  # they keep their ground truth
    # an official validation split (Oxford's setid.mat) is cut the same way
    oxf = Oxf(root=str(trees["oxf"]), valid_per_class=3)  # the fixture's 8 validation images are all class 1
    official = {r.id for r in Oxf(root=str(trees["oxf"])).records("valid")}
    assert len(official) == 8 and len(oxf.records("valid")) == 3 and {r.id for r in oxf.records("valid")} < official
    assert oxf.records("train") == Oxf(root=str(trees["oxf"])).records("train")
    with pytest.raises(ConfigError, match="valid_per_class"):
        Cub(root=str(trees["cub"]), valid_per_class=-1)


def test_train_on_valid_is_the_few_shot_split(trees):
    fsl = Cub(root=str(trees["cub"]), valid_fraction=0.6, valid_per_class=2, train_on_valid=True)
    assert fsl.records("train") == fsl.records("valid") and len(fsl.records("train")) == 2 * len(CUB_CLASSES)
    assert fsl.records("test") == Cub(root=str(trees["cub"])).records("test")
    item = fsl.split("train")[0]
    assert item["image"].shape == (3, 480, 480) and "boxes" in item  # training transforms, ground truth kept
