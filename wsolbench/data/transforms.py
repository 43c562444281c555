"""Default transforms built on torchvision.transforms.v2.

Images travel as ``tv_tensors.Image`` (uint8) and masks as ``tv_tensors.Mask``,
so every geometric transform moves the mask with the image; photometric ones
touch the image only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

#: channel normalisations by name: ``(mean, std)``; ``half`` is the paper's (mean = std = 0.5)
NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "half": (HALF, HALF)}


def _normalize(mean: Sequence[float], std: Sequence[float]) -> list[Any]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]


class MinShortSide(v2.Transform):
    """Upscale (keeping the aspect ratio) so the short side is at least ``size``."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, *inputs: Any) -> Any:
        flat = inputs if len(inputs) > 1 else inputs[0]
        image = flat[0] if isinstance(flat, tuple) else flat
        h, w = image.shape[-2:]
        if min(h, w) >= self.size:
            return flat
        return v2.Resize(self.size, antialias=True)(flat)


def train_transform(
    crop_size: int | None = None,
    resize_short: int | None = None,
    min_short: int | None = None,
    reflect_pad: float = 0.0,
    hflip: bool = True,
    vflip: bool = False,
    jitter: Sequence[float] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Transform:
    """Random crops and flips for training (image and mask together)."""
    steps: list[Any] = []
    if resize_short:
        steps.append(v2.Resize(resize_short, antialias=True))
    if min_short:
        steps.append(MinShortSide(min_short))
    if reflect_pad:
        steps.append(_ReflectPadFraction(reflect_pad))
    if crop_size:
        steps.append(v2.RandomCrop(crop_size, pad_if_needed=True, padding_mode="reflect"))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if vflip:
        steps.append(v2.RandomVerticalFlip())
    if jitter:
        b, c, s, h = jitter
        steps.append(v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h))
    return v2.Compose(steps + _normalize(mean, std))


def eval_transform(
    resize_short: int | None = None,
    min_short: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Transform:
    """Whole images for evaluation, resized like the training images; the mask keeps its original size."""
    steps: list[Any] = []
    if resize_short:
        steps.append(_ImageOnly(v2.Resize(resize_short, antialias=True)))
    if min_short:
        steps.append(_ImageOnly(MinShortSide(min_short)))
    return v2.Compose(steps + _normalize(mean, std))


class _ReflectPadFraction(v2.Transform):
    """Reflect-pad each side by a fraction of the image's size (GlaS in the paper)."""

    def __init__(self, fraction: float):
        super().__init__()
        self.fraction = fraction

    def forward(self, *inputs: Any) -> Any:
        flat = inputs if len(inputs) > 1 else inputs[0]
        image = flat[0] if isinstance(flat, tuple) else flat
        h, w = image.shape[-2:]
        # reflect padding cannot exceed the side minus one
        ph = min(int(round(h * self.fraction)), h - 1)
        pw = min(int(round(w * self.fraction)), w - 1)
        return v2.Pad([pw, ph], padding_mode="reflect")(flat)


class _ImageOnly(v2.Transform):
    """Apply a transform to the image and leave the mask untouched."""

    def __init__(self, inner: v2.Transform):
        super().__init__()
        self.inner = inner

    def forward(self, image: Any, mask: Any) -> Any:
        return self.inner(image), mask


def to_tv(image: torch.Tensor, mask: torch.Tensor) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """Wrap a ``(3,H,W)`` uint8 image and a ``(1,H,W)`` uint8 mask."""
    return tv_tensors.Image(image), tv_tensors.Mask(mask)
