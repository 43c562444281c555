"""Default transforms built on torchvision.transforms.v2.

Images travel as ``tv_tensors.Image`` (uint8), masks (and ignore regions) as
``tv_tensors.Mask`` and ground-truth boxes as ``tv_tensors.BoundingBoxes``, so
every geometric transform moves the mask and the boxes with the image;
photometric ones touch the image only.

Boxes are inclusive pixel boxes ``(x0, y0, x1, y1)``: pixel ``x0`` to pixel
``x1``, both inside. torchvision moves continuous boxes, so :func:`to_tv` hands
it the pixels' continuous extent ``[x0, x1 + 1)`` and :func:`from_tv_boxes`
turns the result back into pixels. Crops, pads and flips move whole pixels;
after every resize the boxes are snapped to the pixels that PyTorch's
nearest-neighbour resizing of the mask keeps (output pixel ``j`` reads input
pixel ``floor(j * in / out)``, so it is inside when its left edge lies in the
scaled extent: ``[ceil(X0), ceil(X1))``). A box drawn as a filled rectangle in
the mask therefore stays that mask's bounding box through any sequence of
these steps (snapping only once at the end would not: a flip after a resize
mirrors the rounding).
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

#: slack for float rounding when pixel edges are read back from moved boxes (coordinates are float64)
_EDGE_SLACK = 1e-6

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


class _SnapBoxes(v2.Transform):
    """Run a resizing transform, then snap the boxes to the mask pixels nearest-neighbour resizing keeps."""

    def __init__(self, inner: v2.Transform):
        super().__init__()
        self.inner = inner

    def forward(self, *inputs: Any) -> Any:
        outputs = self.inner(*inputs)
        if not isinstance(outputs, tuple):
            return snap_boxes(outputs)
        return tuple(snap_boxes(x) for x in outputs)


def snap_boxes(value: Any) -> Any:
    """``BoundingBoxes`` with their edges moved to ``ceil(edge)`` (integers); anything else unchanged."""
    if not isinstance(value, tv_tensors.BoundingBoxes):
        return value
    return tv_tensors.wrap(torch.ceil(value.as_subclass(torch.Tensor) - _EDGE_SLACK), like=value)


def train_transform(
    crop_size: int | None = None,
    resize_short: int | None = None,
    min_short: int | None = None,
    reflect_pad: float = 0.0,
    resize_to: int | None = None,
    hflip: bool = True,
    vflip: bool = False,
    jitter: Sequence[float] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Transform:
    """Random crops and flips for training (image and mask together).

    ``resize_to`` resizes to a square first (wsolevaluation's ``Resize((256, 256))``).
    """
    steps: list[Any] = []
    if resize_to:
        steps.append(_SnapBoxes(v2.Resize((resize_to, resize_to), antialias=True)))
    if resize_short:
        steps.append(_SnapBoxes(v2.Resize(resize_short, antialias=True)))
    if min_short:
        steps.append(_SnapBoxes(MinShortSide(min_short)))
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
    resize_to: int | None = None,
) -> v2.Transform:
    """Whole images for evaluation, resized like the training images; the mask keeps its original size.

    ``resize_to`` resizes the image to a square (wsolevaluation's ``Resize((224, 224))``).
    """
    steps: list[Any] = []
    if resize_to:
        steps.append(_ImageOnly(v2.Resize((resize_to, resize_to), antialias=True)))
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

    def forward(self, image: Any, *rest: Any) -> Any:
        return (self.inner(image), *rest)


def to_tv(
    image: torch.Tensor,
    mask: torch.Tensor,
    boxes: torch.Tensor | None = None,
    ignore: torch.Tensor | None = None,
) -> tuple[Any, ...]:
    """Wrap a ``(3,H,W)`` uint8 image, a ``(1,H,W)`` uint8 mask and, when given, boxes and an ignore region.

    ``boxes`` are inclusive pixel boxes ``(K, 4)`` in the mask's frame; they
    become the continuous ``BoundingBoxes`` ``(x0, y0, x1 + 1, y1 + 1)`` (float64)
    on the mask's canvas. ``ignore`` (``(1,H,W)``, bool) travels as a mask.
    The tuple holds the image, the mask, then the boxes and the ignore region
    that were given, in that order.
    """
    wrapped: list[Any] = [tv_tensors.Image(image), tv_tensors.Mask(mask)]
    if boxes is not None:
        extent = boxes.to(torch.float64).reshape(-1, 4) + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
        wrapped.append(
            tv_tensors.BoundingBoxes(extent, format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=tuple(mask.shape[-2:]))
        )
    if ignore is not None:
        wrapped.append(tv_tensors.Mask(ignore.to(torch.uint8)))
    return tuple(wrapped)


def from_tv_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Moved continuous boxes back to inclusive pixel boxes ``(K, 4)`` int64 inside a ``height x width`` frame.

    Boxes that no pixel is left in (cropped away) are dropped.
    """
    extent = boxes.as_subclass(torch.Tensor).to(torch.float64).reshape(-1, 4)
    first = torch.ceil(extent[:, :2] - _EDGE_SLACK)
    last = torch.ceil(extent[:, 2:] - _EDGE_SLACK) - 1
    limit = torch.tensor([width - 1, height - 1], dtype=torch.float64)
    first, last = first.clamp(min=0), torch.minimum(last, limit)
    kept = (last >= first).all(dim=1)
    return torch.cat([first, last], dim=1)[kept].to(torch.int64)
