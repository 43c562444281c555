"""The ``shapes`` dataset: one disc or one square per image, generated on the fly (no files).

Class 0 is a disc, class 1 a square, of random size, position and colour on
a noisy background of another colour; the mask is the shape's exact pixels.
Image ``i`` of a split depends only on ``(seed, split, i)``, and labels
alternate (balanced splits). Training and evaluation items are the same
(the images are already the size the network takes: no crop, no flip), so the
dataset needs none of wsolbench's transforms; images are normalised with the
ImageNet mean and standard deviation, like wsolbench's own datasets.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from wsolbench.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsolbench.errors import ConfigError
from wsolbench.interfaces import Dataset

SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}


def draw(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, int, np.ndarray]:
    """``(image (size, size, 3) uint8, label, mask (size, size) bool)`` of item ``index`` of ``split``."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    label = index % 2
    radius = rng.uniform(0.15, 0.3) * size
    cy, cx = rng.uniform(radius, size - radius, size=2)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if label == 0:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    else:
        mask = (np.abs(yy - cy) <= radius) & (np.abs(xx - cx) <= radius)
    background, colour = rng.integers(0, 256, size=(2, 3))
    image = background + rng.normal(0, 20, size=(size, size, 3))
    image[mask] = colour + rng.normal(0, 20, size=(int(mask.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8), label, mask


class ShapesSplit(torch.utils.data.Dataset):
    """The items of one split, as wsolbench's loops read them."""

    def __init__(self, seed: int, split: str, size: int, count: int):
        self.seed, self.split, self.size, self.count = seed, split, size, count
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label, mask = draw(self.seed, self.split, index, self.size)
        pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        return {
            "image": (pixels - self.mean) / self.std,
            "label": label,
            "mask": torch.from_numpy(mask).float().unsqueeze(0),
            "index": index,
        }


class Shapes(Dataset):
    """Discs against squares, one per image, with exact masks."""

    summary = "discs against squares, one per image, generated on the fly with exact masks"
    needs_root = False
    defaults: ClassVar[dict[str, Any]] = {"image_size": 64, "n_train": 200, "n_valid": 50, "n_test": 100}

    def __init__(self, root: str | None = None, seed: int = 0, **params: Any):
        super().__init__(root, seed, **params)
        if self.params["image_size"] < 16:
            raise ConfigError(f"dataset.image_size must be at least 16 pixels, got {self.params['image_size']!r}")
        for split in SPLIT_CODES:
            if self.params[f"n_{split}"] < 1:
                raise ConfigError(f"dataset.n_{split} must be at least 1, got {self.params[f'n_{split}']!r}")

    @property
    def classes(self) -> list[str]:
        return ["disc", "square"]

    def split(self, name: str, train: bool | None = None) -> ShapesSplit:
        if name not in SPLIT_CODES:
            raise ConfigError(f"the shapes dataset has no split {name!r}; its splits: train, valid, test")
        return ShapesSplit(self.seed, name, int(self.params["image_size"]), int(self.params[f"n_{name}"]))

    def split_labels(self, name: str) -> list[int]:
        return [i % 2 for i in range(int(self.params[f"n_{name}"]))]
