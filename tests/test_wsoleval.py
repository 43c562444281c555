"""The ``wsoleval`` dataset on tiny trees in wsolevaluation's metadata layout: records, items, verify, download."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixture_trees import make_wsoleval
from PIL import Image
from test_data_cli import cli, server, wide_console  # noqa: F401 - fixtures
from wsolbench_plugins.datasets import wsoleval as module
from wsolbench_plugins.datasets.wsoleval import WsolEval

from wsolbench import config
from wsolbench.data.files import boxes_mask
from wsolbench.errors import ConfigError, DataError
from wsolbench.training import runner

NAMES = ("CUB", "ILSVRC", "OpenImages")


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("wsoleval")
    return {name: make_wsoleval(base / name.lower(), name) for name in NAMES}


def rows(root: Path, name: str, split: str, file: str) -> list[list[str]]:
    text = (root / "metadata" / name / split / file).read_text()
    return [line.split(",") for line in text.splitlines() if line]


def expected_boxes(root: Path, name: str, split: str) -> dict[str, list[list[int]]]:
    out: dict[str, list[list[int]]] = {}
    for image, *corners in rows(root, name, split, "localization.txt"):
        out.setdefault(image, []).append([int(c) for c in corners])
    return out


def grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


@pytest.mark.parametrize("name", ["CUB", "ILSVRC"])
def test_box_datasets_read_ids_labels_and_boxes(trees, name):
    root = trees[name]
    dataset = WsolEval(root=str(root), dataset_name=name)
    assert {k: len(v) for k, v in dataset.splits().items()} == {"train": 9, "valid": 9, "test": 9}
    folders = {"CUB": ["001.Bird_0", "002.Bird_1", "003.Bird_2"], "ILSVRC": ["n00000000", "n00000001", "n00000002"]}
    assert dataset.classes == folders[name]
    for split, folder in (("train", "train"), ("valid", "val"), ("test", "test")):
        labels = {image: int(label) for image, label in rows(root, name, folder, "class_labels.txt")}
        boxes = expected_boxes(root, name, folder)
        part = dataset.split(split, train=False)
        assert part.ids == [line[0] for line in rows(root, name, folder, "image_ids.txt")]
        for i in range(len(part)):
            item, image_id = part[i], part.ids[i]
            assert item["label"] == labels[image_id]
            height, width = item["mask"].shape[-2:]
            if image_id in boxes:
                assert item["boxes"].tolist() == boxes[image_id]
                assert torch.equal(item["mask"][0].bool(), torch.from_numpy(boxes_mask(boxes[image_id], height, width)))
            else:  # ILSVRC's training images: no localization
                assert name == "ILSVRC" and split == "train"
                assert "boxes" not in item and not item["mask"].any()
        assert any(len(b) == 2 for b in boxes.values()) or (name == "ILSVRC" and folder == "train")


def test_openimages_masks_and_ignore_regions(trees):
    cv2 = pytest.importorskip("cv2")
    root = trees["OpenImages"]
    dataset = WsolEval(root=str(root), dataset_name="OpenImages")
    assert dataset.classes == ["0cls0", "0cls1", "0cls2"]
    for split, folder in (("valid", "val"), ("test", "test")):
        by_image: dict[str, list[list[str]]] = {}
        for image, mask, ignore in rows(root, "OpenImages", folder, "localization.txt"):
            by_image.setdefault(image, []).append([mask, ignore])
        part = dataset.split(split, train=False)
        for i in range(len(part)):
            item, lines = part[i], by_image[part.ids[i]]
            height, width = item["mask"].shape[-2:]
            # wsolevaluation's get_mask: instance masks resized with INTER_NEAREST, > 0.5, united
            union = np.zeros((height, width), bool)
            for mask, _ in lines:
                union |= cv2.resize(grey(root / "OpenImages" / mask).astype(np.float32), (width, height),
                                    interpolation=cv2.INTER_NEAREST) > 0.5
            ignore = (grey(root / "OpenImages" / lines[0][1]) > 0.5) & ~union
            assert torch.equal(item["mask"][0].bool(), torch.from_numpy(union))
            assert torch.equal(item["ignore"][0], torch.from_numpy(ignore))
            assert item["ignore"].any() and not (item["ignore"] & item["mask"].bool()).any()
            assert "boxes" not in item
        assert any(len(lines) == 2 for lines in by_image.values())
    train_item = dataset.split("train", train=False)[0]
    assert not train_item["mask"].any() and "ignore" not in train_item


def test_transforms_follow_wsolevaluation(trees):
    dataset = WsolEval(root=str(trees["CUB"]))
    assert dataset.params["normalize"] == "imagenet" and dataset.params["crop_size"] == 224
    item = WsolEval(root=str(trees["CUB"]), crop_size=32, resize_square=40).split("test")[0]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape[-2:] != (32, 32)
    torch.manual_seed(0)
    train = WsolEval(root=str(trees["CUB"]), crop_size=32, resize_square=40).split("train")[0]
    assert train["image"].shape == (3, 32, 32) and train["mask"].shape == (1, 32, 32)
    x0, y0, x1, y1 = train["boxes"][0].tolist()  # a rectangle mask keeps its box through the square resize
    ys, xs = np.nonzero(train["mask"][0].numpy())
    assert [x0, y0, x1, y1] == [xs.min(), ys.min(), xs.max(), ys.max()]


def test_valid_per_class_keeps_k_images_of_each_class(trees):
    full = WsolEval(root=str(trees["ILSVRC"]), dataset_name="ILSVRC")
    few = WsolEval(root=str(trees["ILSVRC"]), dataset_name="ILSVRC", valid_per_class=2)
    kept = few.records("valid")
    assert [sum(r.label == c for r in kept) for c in range(3)] == [2, 2, 2]
    assert {r.id for r in kept} < {r.id for r in full.records("valid")}
    assert all(r.boxes for r in kept)  # they keep their boxes
    assert few.records("train") == full.records("train") and few.records("test") == full.records("test")
    again = WsolEval(root=str(trees["ILSVRC"]), dataset_name="ILSVRC", valid_per_class=2)
    assert [r.id for r in again.records("valid")] == [r.id for r in kept]
    other = WsolEval(root=str(trees["ILSVRC"]), dataset_name="ILSVRC", valid_per_class=2, split_seed=5)
    assert len(other.records("valid")) == 6


def test_bad_settings_and_files(trees, tmp_path):
    with pytest.raises(ConfigError, match="CUB, ILSVRC, OpenImages"):
        WsolEval(root=str(trees["CUB"]), dataset_name="cub")
    root = make_wsoleval(tmp_path / "w", "CUB", classes=2, per_class=1)
    (root / "metadata" / "CUB" / "val" / "localization.txt").unlink()
    with pytest.raises(DataError) as info:
        WsolEval(root=str(root)).splits()
    message = str(info.value)
    assert "missing metadata/CUB/val/localization.txt" in message
    assert "wsolbench data download wsoleval --set dataset.dataset_name=CUB" in message and "CUBV2" in message
    (root / "metadata" / "CUB" / "val" / "localization.txt").write_text("001.Bird_0/x.jpg,1,2,3\n")
    with pytest.raises(DataError, match="val/localization.txt, line 1: expected 5 comma-separated fields"):
        WsolEval(root=str(root)).splits()
    (root / "metadata" / "CUB" / "val" / "localization.txt").write_text("001.Bird_0/x.jpg,1,2,0,3\n")
    with pytest.raises(DataError, match=r"box \(1, 2, 0, 3\) is not x0 <= x1"):
        WsolEval(root=str(root)).splits()


@pytest.mark.parametrize("name", NAMES)
def test_verify_command(trees, tmp_path, capsys, name):
    code, out, err = cli(capsys, "data", "verify", "wsoleval", "--data-root", str(trees[name]),
                         "--set", f"dataset.dataset_name={name}")
    assert code == 0, err
    assert "27 images, 3 classes" in out and "images and their masks open" in out
    code, out, err = cli(capsys, "data", "verify", "wsoleval", "--data-root", str(trees[name]),
                         "--set", f"dataset.dataset_name={name}", "--set", "dataset.valid_per_class=2")
    assert code == 0 and "train 9 / valid 6 / test 9" in out and "2 validation images per class" in out


def test_verify_names_what_is_wrong(tmp_path, capsys):
    root = make_wsoleval(tmp_path / "w", "CUB", classes=2, per_class=2)
    test_ids = [line[0] for line in rows(root, "CUB", "test", "image_ids.txt")]
    (root / "CUB" / test_ids[0]).unlink()
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(root / "CUB" / test_ids[1], format="JPEG")
    code, _, err = cli(capsys, "data", "verify", "wsoleval", "--data-root", str(root))
    assert code == 2
    assert f"image not found: {root / 'CUB' / test_ids[0]}" in err
    assert "image size (5, 7) (height, width) differs from image_sizes.txt's" in err
    (root / "metadata" / "CUB" / "train" / "image_ids.txt").unlink()
    code, _, err = cli(capsys, "data", "verify", "wsoleval", "--data-root", str(root))
    assert code == 2 and "missing metadata/CUB/train/image_ids.txt" in err


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_download_fetches_the_chosen_metadata_through_a_mirror(server, trees, tmp_path, capsys, monkeypatch):  # noqa: F811
    httpd, served, url = server
    source = trees["ILSVRC"] / "metadata"
    blobs = {}
    for name in NAMES:
        blobs[name] = {}
        for split in ("train", "val", "test"):
            contents = [(b"%s %s %s\n" % (name.encode(), split.encode(), f.encode())) for f in module.FILES]
            if name == "ILSVRC":
                contents = [(source / name / split / f).read_bytes() for f in module.FILES]
            for f, data in zip(module.FILES, contents):
                (served / "metadata" / name / split).mkdir(parents=True, exist_ok=True)
                (served / "metadata" / name / split / f).write_bytes(data)
            blobs[name][split] = tuple(git_blob(data) for data in contents)
    monkeypatch.setattr(module, "BLOBS", blobs)
    dest = tmp_path / "root"
    code, out, err = cli(capsys, "data", "download", "wsoleval", "--dest", str(dest), "--mirror", url,
                         "--set", "dataset.dataset_name=ILSVRC")
    assert code == 0, err
    assert sorted(path for path, _ in httpd.requests) == sorted(
        f"/metadata/ILSVRC/{s}/{f}" for s in ("train", "val", "test") for f in module.FILES)
    assert (dest / "metadata" / "ILSVRC" / "val" / "localization.txt").read_bytes() == (
        source / "ILSVRC" / "val" / "localization.txt").read_bytes()
    assert "ImageNetV2" in out and "not downloaded" in out
    code, out, err = cli(capsys, "data", "download", "wsoleval", "--dest", str(dest), "--mirror", url,
                         "--set", "dataset.dataset_name=ILSVRC")
    assert code == 0 and err.count("already downloaded") == 12
    # a file that is not the published one is refused and not kept
    (served / "metadata" / "CUB" / "val" / "image_ids.txt").write_bytes(b"changed\n")
    code, out, err = cli(capsys, "data", "download", "wsoleval", "--dest", str(tmp_path / "cub"), "--mirror", url)
    assert code == 2 and "git blob SHA-1" in err and blobs["CUB"]["val"][0] in err
    assert not (tmp_path / "cub" / "metadata" / "CUB" / "val" / "image_ids.txt").exists()
    code, out, err = cli(capsys, "data", "download", "wsoleval", "--dest", str(tmp_path / "x"),
                         "--set", "dataset.dataset_name=COCO")
    assert code == 2 and "CUB, ILSVRC, OpenImages" in err


def test_published_metadata_is_pinned():
    resources = module.metadata_resources("OpenImages")
    assert len(resources) == 12 and len({r.filename for r in resources}) == 12
    assert all(module.COMMIT in r.url and r.url.endswith(r.filename) and len(r.git_sha1) == 40 for r in resources)
    empty = git_blob(b"")  # OpenImages publishes empty image_sizes.txt files
    assert [r.git_sha1 == empty for r in resources if r.filename.endswith("image_sizes.txt")] == [True] * 3


@pytest.mark.parametrize(("name", "selected"), [("CUB", "maxboxaccv2"), ("OpenImages", "pxap")])
def test_a_run_selects_on_the_protocols_metric_and_names_the_dataset(trees, tmp_path, name, selected):
    cfg = config.resolve(
        "cam-avg", "wsoleval", "quick",
        options={"output_dir": str(tmp_path), "run_name": name, "device": "cpu", "data_root": str(trees[name]),
                 "train": {"epochs": 1}},
        sets=[f"dataset.dataset_name={name}", "dataset.resize_square=40", "dataset.crop_size=32",
              "train.batch_size=4", "eval.batch_size=4", "eval.pictures=0", "eval.cam_curve_interval=0.1"],
    )
    assert cfg.eval.select == "localization"  # the dataset's profile: select on the protocol's metric
    result = runner.run(cfg)
    assert result.results["selected_on"] == selected
    assert result.results["dataset"] == f"wsoleval/{name}"  # three datasets told apart in reports
    epoch = json.loads((result.run_dir.path / "metrics.jsonl").read_text().splitlines()[0])
    assert f"valid_{selected}" in epoch
