"""Turning a dataset's samples into tensors and batches.

A dataset plug-in describes each split as a list of samples and a function that
loads sample ``i`` as a ``(3,H,W)`` uint8 image, a ``(1,H,W)`` uint8 mask in
{0,1} and a label, optionally followed by a dictionary of further ground truth
(:data:`ANNOTATIONS`): ``"boxes"``, inclusive pixel boxes ``(x0, y0, x1, y1)``
in the mask's frame, and ``"ignore"``, pixels left out of the pixel metrics.
:class:`SampleDataset` applies the transforms (boxes and ignore regions move
with the mask), caches decoded images in memory if asked and names the file
when one cannot be read.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsolbench.data.transforms import from_tv_boxes, to_tv
from wsolbench.errors import DataError


@dataclass(frozen=True)
class Record:
    """One image on disk: its path, its mask's path (or ``None``), its label and id.

    Datasets with more ground truth add it: ``boxes``, inclusive pixel boxes
    ``(x0, y0, x1, y1)`` in the image's frame; ``masks``, further mask files
    whose union with ``mask`` is the foreground (one file per instance, as in
    OpenImages); ``ignore``, a file whose non-zero pixels outside the
    foreground are left out of the pixel metrics. A record without ``mask``
    has the filled union of its boxes as its mask (box-only datasets), or an
    empty mask when it has no boxes either (images without localization).
    """

    image: str
    mask: str | None
    label: int
    id: str
    boxes: tuple[tuple[int, int, int, int], ...] | None = None
    masks: tuple[str, ...] = ()
    ignore: str | None = None


#: ``(image, mask, label)`` or ``(image, mask, label, annotations)``
Loaded = tuple[Any, ...]

#: the keys a loader's annotations may hold: ``boxes`` int64 ``(K, 4)``, ``ignore`` bool ``(1,H,W)``
ANNOTATIONS = ("boxes", "ignore")


def split_loaded(loaded: Loaded) -> tuple[Tensor, Tensor, int, dict[str, Tensor]]:
    """``(image, mask, label, annotations)`` from what a loader returned (3 items: no annotations)."""
    if len(loaded) == 3:
        image, mask, label = loaded
        return image, mask, label, {}
    image, mask, label, annotations = loaded
    unknown = set(annotations or {}) - set(ANNOTATIONS)
    if unknown:
        raise DataError(f"a dataset loader returned unknown annotations {sorted(unknown)}; known: {', '.join(ANNOTATIONS)}")
    return image, mask, label, dict(annotations or {})


def check_annotations(mask: Tensor, annotations: dict[str, Tensor], where: str | Path) -> None:
    """Boxes are ``(K, 4)`` inclusive pixel boxes inside the mask; the ignore region has the mask's size."""
    height, width = mask.shape[-2:]
    boxes = annotations.get("boxes")
    if boxes is not None:
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise DataError(f"boxes of shape {tuple(boxes.shape)}, expected (K, 4): {where}")
        bad = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        bad |= (boxes[:, 2] >= width) | (boxes[:, 3] >= height)
        if bad.any():
            box = [int(v) for v in boxes[bad][0]]
            raise DataError(
                f"box {box} (x0, y0, x1, y1, inclusive) is not inside the {width} x {height} image: {where}"
            )
    ignore = annotations.get("ignore")
    if ignore is not None and tuple(ignore.shape[-2:]) != (height, width):
        raise DataError(f"ignore region size {tuple(ignore.shape[-2:])} differs from mask size {(height, width)}: {where}")


class SampleDataset(torch.utils.data.Dataset):
    """``load(i) -> (image uint8 (3,H,W), mask uint8 (1,H,W), label[, annotations])``, transformed.

    Items are ``{"image", "mask", "label", "index"}`` and, when the loader
    gives them, ``"boxes"`` (int64 ``(K, 4)``, inclusive pixel boxes in the
    returned mask's frame: they follow the transform's resizing, cropping and
    flipping exactly as the mask does, see :mod:`wsolbench.data.transforms`)
    and ``"ignore"`` (bool, the returned mask's shape). Loaders that return
    three values give items without them, as before.
    """

    def __init__(
        self,
        length: int,
        load: Callable[[int], Loaded],
        transform: Callable[..., Any] | None,
        ids: Sequence[str] | None = None,
        cache: bool = False,
    ):
        self.length = length
        self.load = load
        self.transform = transform
        self.ids = list(ids) if ids is not None else [str(i) for i in range(length)]
        self.cache: dict[int, Loaded] | None = {} if cache else None

    def __len__(self) -> int:
        return self.length

    def raw(self, index: int) -> Loaded:
        if self.cache is not None:
            if index not in self.cache:
                self.cache[index] = self.load(index)
            return self.cache[index]
        return self.load(index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"item {index} of a split of {self.length}")
        image, mask, label, annotations = split_loaded(self.raw(index))
        boxes, ignore = annotations.get("boxes"), annotations.get("ignore")
        if ignore is not None:
            ignore = ignore.reshape(mask.shape)
        if self.transform is not None:
            moved = list(self.transform(*to_tv(image, mask, boxes, ignore)))
            image, mask = moved[0], moved[1]
            if boxes is not None:
                boxes = from_tv_boxes(moved[2], *mask.shape[-2:])
            if ignore is not None:
                ignore = moved[-1]
        else:
            image = image.float() / 255.0
        item = {
            "image": image.as_subclass(Tensor) if hasattr(image, "as_subclass") else image,
            "mask": mask.as_subclass(Tensor).float(),
            "label": int(label),
            "index": index,
        }
        if boxes is not None:
            item["boxes"] = boxes.as_subclass(Tensor).to(torch.int64).reshape(-1, 4)
        if ignore is not None:
            item["ignore"] = ignore.as_subclass(Tensor).bool()
        return item


def transformed(transform: Callable[..., Any] | None, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(image float (3,h,w), mask float (1,H',W'))``: a uint8 image and mask through a dataset's ``transform``.

    ``transform`` is what :meth:`wsolbench.interfaces.Dataset.evaluation_transform`
    returns (``None``: the image scaled to [0, 1]); every evaluation item and
    every image given to a trained model goes through here.
    """
    if transform is not None:
        image, mask = transform(*to_tv(image, mask))
    else:
        image = image.float() / 255.0
    image = image.as_subclass(Tensor) if hasattr(image, "as_subclass") else image
    return image, mask.as_subclass(Tensor).float()


def read_image(path: str | os.PathLike) -> Tensor:
    """An RGB image as a ``(3,H,W)`` uint8 tensor; a file that cannot be read raises DataError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
    except FileNotFoundError as exc:
        raise DataError(f"image not found: {path}") from exc
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def read_mask_array(path: str | os.PathLike) -> np.ndarray:
    """A mask file as a NumPy array of its raw values (grayscale or RGB)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except FileNotFoundError as exc:
        raise DataError(f"mask not found: {path}") from exc
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read mask {path}: {exc}") from exc


def check_sizes(image: Tensor, mask: Tensor, where: str | Path) -> None:
    if tuple(image.shape[-2:]) != tuple(mask.shape[-2:]):
        raise DataError(
            f"mask size {tuple(mask.shape[-2:])} differs from image size {tuple(image.shape[-2:])}: {where}"
        )


def check_split_labels(dataset: Any, name: str, splits: Sequence[str] = ("train", "valid", "test")) -> None:
    """Every split has items and every label is a class index (read from the labels, no image decoded)."""
    k = dataset.num_classes
    for split in splits:
        try:
            labels = dataset.split_labels(split)
        except NotImplementedError:
            continue
        if len(labels) == 0:
            raise DataError(
                f"split {split!r} of dataset {name!r} is empty: check the data root, the split files and the "
                f"dataset settings"
            )
        bad = sorted({int(y) for y in labels if not 0 <= int(y) < k})
        if bad:
            raise DataError(
                f"split {split!r} of dataset {name!r} has labels {bad[:5]} outside its {k} classes "
                f"(0..{k - 1}: {', '.join(map(str, dataset.classes[:10]))}); check the split files and the "
                f"class list"
            )


def resolve_under(root: str | os.PathLike, relative: str | os.PathLike, what: str = "file") -> Path:
    """``root / relative`` for a path read from a split or list file; it may not leave ``root``.

    Absolute paths and ``..`` components that climb out of the root raise
    :class:`DataError`, so a split file cannot make wsolbench read (or name)
    files elsewhere. Symbolic links inside the root are the user's own and are
    followed.
    """
    rel = Path(relative)
    if rel.is_absolute() or rel.drive:
        raise DataError(f"{what} path {str(relative)!r} is absolute; split files give paths relative to {root}")
    base = os.path.abspath(root)
    joined = os.path.abspath(os.path.join(base, rel))
    if os.path.commonpath([base, joined]) != base:
        raise DataError(f"{what} path {str(relative)!r} leaves the data root {root}")
    return Path(joined)


@functools.lru_cache(maxsize=64)
def _absolute(root: str) -> str:
    return os.path.abspath(root)


def join_under(root: str | os.PathLike, relative: str, what: str = "file") -> str:
    """``str(resolve_under(root, relative))`` at string speed for the plain case.

    A relative path without ``..`` cannot leave the root, so it is joined as
    text (listing ImageNet's 1.28 million training images this way takes a
    fraction of a second instead of a minute); anything else goes through
    :func:`resolve_under`.
    """
    if relative and relative[0] not in "/\\" and relative[1:2] != ":" and ".." not in relative:
        return f"{_absolute(os.fspath(root))}{os.sep}{relative}"
    return str(resolve_under(root, relative, what))


def train_collate(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    return {
        "image": torch.stack([it["image"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
    }


def eval_collate(items: list[dict[str, Any]], multiple: int = 32) -> dict[str, Any]:
    """Whole images of any size: reflect-pad each to a common size that is a multiple of ``multiple``.

    ``sizes`` keeps each image's size before padding (maps are cropped back to
    it) and ``masks`` stay a list at their own resolution, as do the items'
    true ``boxes`` and ``ignore`` regions (``None`` where an item has none).
    """
    images, sizes = pad_batch([it["image"] for it in items], multiple)
    return {
        "image": images,
        "sizes": sizes,
        "masks": [it["mask"] for it in items],
        "boxes": [it.get("boxes") for it in items],
        "ignore": [it.get("ignore") for it in items],
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
    }


def pad_batch(images: Sequence[Tensor], multiple: int = 32) -> tuple[Tensor, list[tuple[int, int]]]:
    """``(N, 3, H, W)`` of ``(3, h, w)`` images reflect-padded (bottom, right) to a common size that is a
    multiple of ``multiple``, and each image's ``(h, w)`` before padding."""
    hs = [img.shape[-2] for img in images]
    ws = [img.shape[-1] for img in images]
    height = -(-max(hs) // multiple) * multiple
    width = -(-max(ws) // multiple) * multiple
    padded = []
    for img in images:
        ph, pw = height - img.shape[-2], width - img.shape[-1]
        padded.append(_pad_reflect(img, ph, pw) if ph or pw else img)
    return torch.stack(padded), list(zip(hs, ws))


def _pad_reflect(img: Tensor, ph: int, pw: int) -> Tensor:
    """Reflect-pad bottom/right, repeating the reflection when the pad exceeds the side."""
    while ph > 0 or pw > 0:
        step_h = min(ph, img.shape[-2] - 1)
        step_w = min(pw, img.shape[-1] - 1)
        img = F.pad(img.unsqueeze(0), (0, step_w, 0, step_h), mode="reflect").squeeze(0)
        ph -= step_h
        pw -= step_w
    return img


def seed_worker(worker_id: int) -> None:
    """DataLoader worker seeding (NumPy and Python from torch's per-worker seed)."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
