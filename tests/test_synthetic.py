"""The synthetic dataset: deterministic, exact masks, balanced labels, class cue on objects only."""

from __future__ import annotations

import numpy as np
import torch
from wsolbench_plugins.datasets.synthetic import Synthetic


def test_deterministic_from_seed_and_index():
    a = Synthetic(seed=3, image_size=32)
    b = Synthetic(seed=3, image_size=32)
    c = Synthetic(seed=4, image_size=32)
    for i in range(4):
        ia, ma, la = a.generate(0, i)
        ib, mb, lb = b.generate(0, i)
        assert np.array_equal(ia, ib) and np.array_equal(ma, mb) and la == lb
    assert not np.array_equal(a.generate(0, 0)[0], c.generate(0, 0)[0])
    assert not np.array_equal(a.generate(0, 0)[0], a.generate(2, 0)[0])  # splits differ


def test_masks_are_binary_nonempty_and_labels_balanced():
    ds = Synthetic(seed=0, image_size=48, classes=3, n_train=30)
    labels = ds.split_labels("train")
    assert np.bincount(labels).tolist() == [10, 10, 10]
    for i in range(10):
        image, mask, label = ds.generate(0, i)
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1} and 0 < mask.mean() < 1
        assert label == labels[i]


def test_split_items_and_sizes():
    ds = Synthetic(seed=0, image_size=32, n_train=6, n_valid=4, n_test=5)
    assert [len(ds.split(s)) for s in ("train", "valid", "test")] == [6, 4, 5]
    item = ds.split("test")[2]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 32, 32)
    assert item["label"] == 2 % ds.num_classes and item["index"] == 2
    raw_mask = torch.from_numpy(ds.generate(2, 2)[1]).float()
    assert torch.equal(item["mask"][0], raw_mask)  # evaluation items are untransformed
    counts = {info.name: info.size for info in ds.describe()}
    assert counts == {"train": 6, "valid": 4, "test": 5}


def test_stripe_period_is_on_objects_only():
    """The class cue: the dominant spatial frequency inside objects differs by class."""
    ds = Synthetic(seed=1, image_size=96, noise=0.0, max_distractors=0, min_objects=1, max_objects=1)

    def dominant_period(label: int) -> float:
        periods = []
        for i in range(label, 40, 2):
            image, mask, y = ds.generate(0, i)
            assert y == label
            gray = image.mean(axis=2) * mask
            spectrum = np.abs(np.fft.fft2(gray - gray[mask > 0].mean() * mask))
            spectrum[0, 0] = 0
            fy, fx = np.unravel_index(np.argmax(spectrum), spectrum.shape)
            freq = np.hypot(min(fy, 96 - fy), min(fx, 96 - fx)) / 96
            periods.append(1 / max(freq, 1e-6))
        return float(np.median(periods))

    short, long = dominant_period(0), dominant_period(1)
    assert abs(short - ds.periods[0]) < 1.0
    assert abs(long - ds.periods[1]) < 2.5


def test_split_iterates_to_its_end():
    ds = Synthetic(seed=0, image_size=32, n_train=6, n_valid=4, n_test=3)
    assert [item["index"] for item in ds.split("test")] == [0, 1, 2]
