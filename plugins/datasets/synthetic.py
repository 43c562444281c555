"""A synthetic WSOL dataset generated on the fly, deterministic from its seed.

Each image has a cluttered background (a smooth colour field, pixel noise and
0..``max_distractors`` speckled blobs shared by every class: irrelevant
regions) and 1..``max_objects`` irregular objects (several instances, as in
GlaS). Objects of class ``k`` carry stripes of period ``p_k`` pixels, spaced
geometrically between 3 and 10 pixels across the classes; the orientation and
the two colours of the stripes are random per object, so the stripe period is
the only class cue and it is found only on the objects. The mask is the exact
union of the objects, and each object has its own ground-truth box, the
bounding box of its pixels (overlapping objects keep one box each), so every
box metric runs offline.

Image ``i`` of a split depends only on ``(seed, split, i)``; labels cycle
through the classes (balanced splits).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from wsolbench.data.samples import SampleDataset
from wsolbench.data.transforms import eval_transform, train_transform
from wsolbench.errors import ConfigError
from wsolbench.interfaces import Dataset

_SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}


class Synthetic(Dataset):
    summary = "generated on the fly: textured objects among distractors, exact masks (no download)"
    needs_root = False
    defaults: ClassVar[dict[str, Any]] = {
        "classes": 2,
        "image_size": 96,
        "n_train": 240,
        "n_valid": 60,
        "n_test": 100,
        "min_objects": 1,
        "max_objects": 4,
        "max_distractors": 3,
        "noise": 0.06,
        "crop_size": 0,  #: 0: no random crop (the whole image)
    }
    profiles: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"dataset": {"image_size": 64, "n_train": 160, "n_valid": 48, "n_test": 64}},
    }

    def __init__(self, root: str | None = None, seed: int = 0, **params: Any):
        super().__init__(root, seed, **params)
        p = self.params
        if p["classes"] < 2:
            raise ConfigError("dataset.classes must be at least 2")
        if p["image_size"] < 24:
            raise ConfigError("dataset.image_size must be at least 24")
        if not 1 <= p["min_objects"] <= p["max_objects"]:
            raise ConfigError("need 1 <= dataset.min_objects <= dataset.max_objects")
        if not 0 <= p["crop_size"] <= p["image_size"]:
            raise ConfigError("need 0 <= dataset.crop_size <= dataset.image_size (0: no crop)")
        for key in ("n_train", "n_valid", "n_test", "max_distractors", "noise"):
            if p[key] < 0:
                raise ConfigError(f"dataset.{key} must be >= 0")
        k = p["classes"]
        self.periods = [3.0 * (10.0 / 3.0) ** (i / (k - 1)) for i in range(k)]

    @property
    def classes(self) -> list[str]:
        return [f"period-{p:.1f}px" for p in self.periods]

    def _size(self, split: str) -> int:
        return int(self.params[f"n_{split}"])

    def split_labels(self, name: str) -> list[int]:
        return [i % self.num_classes for i in range(self._size(name))]

    def split(self, name: str, train: bool | None = None) -> torch.utils.data.Dataset:
        if name not in _SPLIT_CODES:
            raise ConfigError(f"unknown split {name!r}")
        train = name == "train" if train is None else train
        if train:
            crop = self.params["crop_size"] or None
            transform = train_transform(crop_size=crop, hflip=True, vflip=True)
        else:
            transform = self.evaluation_transform()
        code = _SPLIT_CODES[name]

        def load(i: int) -> tuple[torch.Tensor, torch.Tensor, int, dict[str, torch.Tensor]]:
            image, mask, label, boxes = self.generate_with_boxes(code, i)
            return (
                torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                torch.from_numpy(mask)[None],
                label,
                {"boxes": torch.from_numpy(boxes)},
            )

        n = self._size(name)
        return SampleDataset(n, load, transform, ids=[f"{name}_{i:05d}" for i in range(n)], cache=True)

    def evaluation_transform(self) -> Any:
        """Whole images, ImageNet normalisation (no resizing)."""
        return eval_transform()

    # -- generation ---------------------------------------------------------
    def generate(self, split_code: int, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """``(image uint8 HxWx3, mask uint8 HxW in {0,1}, label)`` of one sample."""
        return self.generate_with_boxes(split_code, index)[:3]

    def generate_with_boxes(self, split_code: int, index: int) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
        """:meth:`generate` and the objects' boxes: int64 ``(K, 4)``, inclusive ``(x0, y0, x1, y1)``, one per object."""
        p = self.params
        size = int(p["image_size"])
        rng = np.random.default_rng([self.seed, split_code, index])
        label = index % self.num_classes
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

        image = _smooth_field(rng, size)
        for _ in range(rng.integers(0, p["max_distractors"] + 1)):
            blob = _blob(rng, xx, yy, size)
            speckle = _speckle(rng, size)
            c1, c2 = rng.uniform(0.05, 0.95, 3), rng.uniform(0.05, 0.95, 3)
            tex = c1 + (c2 - c1) * speckle[..., None]
            image = np.where(blob[..., None], tex, image)

        mask = np.zeros((size, size), dtype=bool)
        boxes = []
        for _ in range(rng.integers(p["min_objects"], p["max_objects"] + 1)):
            blob = _blob(rng, xx, yy, size)
            ys, xs = np.nonzero(blob)
            if len(xs):
                boxes.append((xs.min(), ys.min(), xs.max(), ys.max()))
            theta = rng.uniform(0, np.pi)
            phase = rng.uniform(0, 2 * np.pi)
            period = self.periods[label]
            wave = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)
            c1, c2 = _contrasting_colours(rng)
            tex = c1 + (c2 - c1) * wave[..., None]
            image = np.where(blob[..., None], tex, image)
            mask |= blob

        image = image + rng.normal(0.0, p["noise"], image.shape)
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return image, mask.astype(np.uint8), label, np.array(boxes, dtype=np.int64).reshape(-1, 4)


def _smooth_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A low-frequency colour field: a random 4x4 grid of colours, bilinearly interpolated."""
    grid = rng.uniform(0.2, 0.8, (4, 4, 3))
    t = np.linspace(0, 3, size)
    i0 = np.clip(np.floor(t).astype(int), 0, 2)
    f = (t - i0)[:, None]
    rows = grid[i0] * (1 - f)[..., None] + grid[i0 + 1] * f[..., None]  # (size, 4, 3)
    cols = rows[:, i0] * (1 - f.T)[..., None] + rows[:, i0 + 1] * f.T[..., None]
    return cols


def _contrasting_colours(rng: np.random.Generator, min_gap: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Two colours whose mean channel difference is at least ``min_gap`` (visible stripes)."""
    while True:
        c1, c2 = rng.uniform(0.05, 0.95, 3), rng.uniform(0.05, 0.95, 3)
        if np.abs(c2 - c1).mean() >= min_gap:
            return c1, c2


def _speckle(rng: np.random.Generator, size: int) -> np.ndarray:
    """Blotchy noise in [0, 1]: a coarse random grid upsampled by pixel repetition."""
    cell = int(rng.integers(2, 4))
    coarse = rng.uniform(0, 1, (size // cell + 1, size // cell + 1))
    return np.kron(coarse, np.ones((cell, cell)))[:size, :size]


def _blob(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, size: int) -> np.ndarray:
    """An irregular star-shaped region: radius ``r0 (1 + sum_i a_i cos(i phi + b_i))``."""
    r0 = rng.uniform(0.10, 0.2) * size
    cx, cy = rng.uniform(r0, size - r0, 2)
    dx, dy = xx - cx, yy - cy
    phi = np.arctan2(dy, dx)
    radius = np.ones_like(phi)
    for harmonic in (2, 3, 5):
        radius += rng.uniform(-0.18, 0.18) * np.cos(harmonic * phi + rng.uniform(0, 2 * np.pi))
    return np.hypot(dx, dy) <= r0 * radius
