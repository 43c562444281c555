"""The loaders on the real files in ../shared/data (skipped where they are absent)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data
from wsolbench_plugins.datasets.cub import Cub
from wsolbench_plugins.datasets.glas import Glas
from wsolbench_plugins.datasets.oxf import Oxf

from wsolbench.data.files import ceil_share, find_split_files, read_split_csv, verify
from wsolbench.data.samples import Record

pytestmark = pytest.mark.shared_data

REFERENCE = {
    "glas": ("glas", (67, 18, 80)),
    "cub": ("Caltech-UCSD-Birds-200-2011", (4794, 1200, 5794)),
    "cub5": ("Caltech-UCSD-Birds-200-2011-CUB5", (120, 30, 145)),
    "oxf": ("Oxford-flowers-102", (1020, 1020, 6149)),
}


def reference_rows(name: str) -> dict[str, list[tuple[str, str, str, int]]]:
    folder = shared_data("reference-splits", REFERENCE[name][0])
    return {split: read_split_csv(path) for split, path in find_split_files(folder).items()}


def test_glas_verify_counts():
    report = verify(Glas(root=str(shared_data("glas"))), workers=2)
    assert report.problems == []
    assert report.total == 165 and report.checked == 165
    assert report.counts["train"] == {"benign": 37, "malignant": 48}
    assert report.counts["test"] == {"benign": 37, "malignant": 43}
    assert report.run_sizes == {"train": 67, "valid": 18, "test": 80}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_splits_sizes_and_validation_rule(name):
    """The reference validation sets are exactly ceil(20%) of each class's training images, like ours."""
    rows = reference_rows(name)
    assert tuple(len(rows[s]) for s in ("train", "valid", "test")) == REFERENCE[name][1]
    train, valid = Counter(r[2] for r in rows["train"]), Counter(r[2] for r in rows["valid"])
    if name != "oxf":  # Oxford Flowers uses its official validation set
        assert all(valid[c] == ceil_share(train[c] + valid[c], 0.2) for c in train)
    images = [r[0] for split in rows.values() for r in split]
    assert len(images) == len(set(images))  # no image in two splits


def test_glas_reference_split_loads_the_png_copies_with_grade_csv_labels():
    root = shared_data("glas")
    ds = Glas(root=str(root), split_dir=str(shared_data("reference-splits", "glas")))
    splits = ds.splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 67, "valid": 18, "test": 80}
    grades = ds.grades()
    for records in splits.values():
        for rec in records:
            assert Path(rec.image).is_file() and rec.image.endswith(".png") and Path(rec.mask).is_file()
            assert ds.classes[rec.label] == grades[rec.id]


def test_oxf_reference_split_is_setid_with_zero_based_labels():
    ds = Oxf(root=str(shared_data("samples", "oxf")))
    official = ds.official_splits()
    for split, rows in reference_rows("oxf").items():
        listed = {ds.listed_id(image): int(label) for image, _, label, _ in rows}
        assert listed == {r.id: r.label for r in official[split]}


def test_real_masks_in_the_official_formats():
    # the official instance-labelled BMP and the 0/255 PNG copy of one GlaS annotation agree
    glas = Glas(root=str(shared_data("glas")))
    bmp = glas.read_mask(str(shared_data("samples", "glas-bmp", "train_71_anno.bmp")))
    png = glas.read_mask(str(shared_data("glas", "train_71_anno.png")))
    assert np.array_equal(bmp, png) and 0.1 < bmp.mean() < 0.9
    oxf = Oxf(root=str(shared_data("samples", "oxf")))
    cub = Cub(root=str(shared_data("samples", "cub")))
    samples = [(oxf, p, Path(str(p).replace("jpg/image_", "segmim/segmim_")))
               for p in sorted(shared_data("samples", "oxf", "jpg").glob("*.jpg"))]
    samples += [(cub, p, p.with_suffix(".png")) for p in sorted(shared_data("samples", "cub").glob("*.jpg"))]
    assert len(samples) == 16
    for dataset, image, mask in samples:
        assert dataset.check_record(Record(str(image), str(mask), 0, image.stem)) == []
        assert 0.02 < dataset.read_mask(str(mask)).mean() < 0.98, mask

