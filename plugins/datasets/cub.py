"""CUB-200-2011 (Caltech-UCSD Birds) and CUB5, the paper's five-class subset.

11,788 images of 200 bird species with the official ``train_test_split.txt``
(5,994 train / 5,794 test) and one segmentation per image (the separate
``segmentations.tgz``), a grey-level PNG whose foreground is value > 127.5.

Each image also has one bird box in the official ``bounding_boxes.txt`` (rows
``<image id> <x> <y> <width> <height>``, floats in pixels, ids as in
``images.txt``). Items carry it as the inclusive pixel box
``(int(x), int(y), int(x + width), int(y + height))``, the conversion behind
wsolevaluation's ``metadata/CUB/*/localization.txt`` (its first test row,
``Black_Footed_Albatross_0046_18.jpg,60,27,385,331``, is the official
``60.0 27.0 325.0 304.0``), so box metrics score against the same boxes as
published CUB numbers. The file is part of ``CUB_200_2011.tgz`` and required
by default; ``dataset.boxes = false`` drops it for segmentation-only use, and
box metrics then use one box per connected component of the mask, which are
not the official boxes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from wsolbench.data.download import Resource
from wsolbench.data.files import NATURAL_PAPER, NATURAL_QUICK, FileDataset, gray_mask
from wsolbench.data.samples import Record
from wsolbench.errors import DataError

META = "CUB_200_2011"
METADATA = ("classes.txt", "images.txt", "image_class_labels.txt", "train_test_split.txt")
BOXES = "bounding_boxes.txt"

#: the paper's CUB5 classes
CUB5_CLASSES = [
    "019.Gray_Catbird",
    "099.Ovenbird",
    "108.White_necked_Raven",
    "171.Myrtle_Warbler",
    "178.Swainson_Warbler",
]


def box_from_xywh(x: float, y: float, width: float, height: float) -> tuple[int, int, int, int]:
    """An official CUB box ``x y w h`` (floats) as the inclusive pixel box wsolevaluation's metadata stores."""
    return int(x), int(y), int(x + width), int(y + height)


def read_boxes(path: Path) -> dict[int, tuple[int, int, int, int]]:
    """``{image id: inclusive pixel box}`` of ``bounding_boxes.txt``."""
    boxes = {}
    for image_id, value in read_pairs(path).items():
        try:
            x, y, width, height = (float(v) for v in value.split())
        except ValueError:
            raise DataError(f"{path}: image {image_id} has {value!r}, expected '<x> <y> <width> <height>'") from None
        if width < 0 or height < 0 or x < 0 or y < 0:
            raise DataError(f"{path}: image {image_id} has a box with negative coordinates or size: {value!r}")
        boxes[image_id] = box_from_xywh(x, y, width, height)
    return boxes


def read_pairs(path: Path) -> dict[int, str]:
    """``{id: rest of the line}`` of a CUB metadata file (lines ``<id> <value>``)."""
    out = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not key.isdigit() or not value.strip():
            raise DataError(f"{path}, line {number}: expected '<id> <value>', got {line!r}")
        out[int(key)] = value.strip()
    return out


class Cub(FileDataset):
    title = "CUB-200-2011"
    name = "cub"
    summary = "CUB-200-2011 birds: 200 species, 11,788 images, segmentation masks"
    homepage = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
    layout = """\
  CUB_200_2011/             the official CUB_200_2011.tgz, extracted
    classes.txt  images.txt  image_class_labels.txt  train_test_split.txt
    bounding_boxes.txt      (not needed with --set dataset.boxes=false)
    images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg ...
  segmentations/            the official segmentations.tgz, extracted
    001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.png ..."""
    downloads = (
        Resource(
            "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
            "CUB_200_2011.tgz", "97eceeb196236b17998738112f37df78", extract=True,
        ),
        Resource(
            "https://data.caltech.edu/records/w9d68-gec53/files/segmentations.tgz?download=1",
            "segmentations.tgz", "4d47ba1228eae64f2fa547c47bc65255", extract=True,
        ),
    )
    defaults: ClassVar[dict[str, Any]] = {
        **FileDataset.defaults,
        **NATURAL_PAPER,
        "class_subset": [],  #: class names to keep, such as "019.Gray_Catbird" ([]: all 200)
        "boxes": True,  #: read the official bounding_boxes.txt (false: segmentation only, no file needed)
    }
    profiles: ClassVar[dict[str, dict[str, Any]]] = {
        # two images per class and split: 400 / 400 / 400 images
        "quick": {"dataset": {**NATURAL_QUICK, "max_per_class": 2}},
        "paper": {"train": {"num_workers": 4}},
    }

    # -- where things are ------------------------------------------------------------
    @property
    def meta_dir(self) -> Path:
        """``<root>/CUB_200_2011``, or the root itself when it is that folder."""
        root = self.root_dir
        if not (root / META).is_dir() and (root / "classes.txt").is_file():
            return root
        return root / META

    @property
    def segmentations_dir(self) -> Path:
        """``<root>/segmentations``, or ``CUB_200_2011/segmentations``."""
        beside, inside = self.root_dir / "segmentations", self.meta_dir / "segmentations"
        return inside if inside.is_dir() and not beside.is_dir() else beside

    def required_paths(self) -> list[Path]:
        boxes = [self.meta_dir / BOXES] if self.params["boxes"] else []
        return [self.meta_dir / name for name in METADATA] + boxes + [self.meta_dir / "images", self.segmentations_dir]

    def official_boxes(self) -> dict[str, tuple[int, int, int, int]] | None:
        """``{record id: box}`` from ``bounding_boxes.txt``; ``None`` with ``dataset.boxes = false``."""
        if not self.params["boxes"]:
            return None
        if not hasattr(self, "_boxes"):
            if not (self.meta_dir / BOXES).is_file():
                raise DataError(
                    f"{self.meta_dir / BOXES} is missing: it comes with CUB_200_2011.tgz and holds the boxes of the "
                    f"box metrics; use --set dataset.boxes=false to run on the segmentations alone"
                )
            by_number = read_boxes(self.meta_dir / BOXES)
            paths = read_pairs(self.meta_dir / "images.txt")
            missing = sorted(set(paths) - set(by_number))
            if missing:
                raise DataError(
                    f"{self.meta_dir / BOXES} has no box for image {missing[0]} ({paths[missing[0]]})"
                    f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}; use --set dataset.boxes=false "
                    f"to run without boxes"
                )
            self._boxes = {Path(rel).with_suffix("").as_posix(): by_number[n] for n, rel in paths.items()}
        return self._boxes

    def with_boxes(self, records: list[Record]) -> list[Record]:
        boxes = self.official_boxes()
        if boxes is None:
            return records
        return [replace(r, boxes=(boxes[r.id],)) if r.id in boxes else r for r in records]

    # -- classes -------------------------------------------------------------------------
    def all_classes(self) -> list[str]:
        path = self.meta_dir / "classes.txt"
        if not path.is_file():
            self.require_layout()
        return [name for _, name in sorted(read_pairs(path).items())]

    @property
    def classes(self) -> list[str]:
        if not hasattr(self, "_classes"):
            names = self.all_classes()
            subset = list(self.params["class_subset"])
            unknown = sorted(set(subset) - set(names))
            if unknown:
                raise DataError(
                    f"dataset.class_subset names classes that {self.meta_dir / 'classes.txt'} does not list: {unknown}"
                )
            self._classes = [c for c in names if c in subset] if subset else names
        return self._classes

    # -- records -------------------------------------------------------------------------
    def official_splits(self) -> dict[str, list[Record]]:
        meta = self.meta_dir
        paths = read_pairs(meta / "images.txt")
        labels = read_pairs(meta / "image_class_labels.txt")
        is_train = read_pairs(meta / "train_test_split.txt")
        all_names = self.all_classes()
        index = {c: i for i, c in enumerate(self.classes)}
        splits: dict[str, list[Record]] = {"train": [], "test": []}
        for image_id, relative in sorted(paths.items()):
            if image_id not in labels or image_id not in is_train:
                raise DataError(
                    f"image {image_id} ({relative}) of {meta / 'images.txt'} has no line in "
                    f"image_class_labels.txt or train_test_split.txt"
                )
            class_name = all_names[int(labels[image_id]) - 1]
            if class_name not in index:
                continue
            stem = Path(relative).with_suffix("")
            record = Record(
                image=str(meta / "images" / relative),
                mask=str(self.segmentations_dir / f"{stem}.png"),
                label=index[class_name],
                id=stem.as_posix(),
            )
            splits["train" if is_train[image_id].strip() == "1" else "test"].append(record)
        return {name: self.with_boxes(records) for name, records in splits.items()}

    def listed_splits(self, files: dict[str, Path]) -> dict[str, list[Record]]:
        """Split files' records, with their official boxes (matched by image path)."""
        return {name: self.with_boxes(records) for name, records in super().listed_splits(files).items()}

    def listed_candidates(self, relative: str) -> list[str]:
        """Split files name ``CUB_200_2011/images/...`` and ``segmentations/...`` below the root."""
        meta = self.meta_dir.relative_to(self.root_dir).as_posix()
        for prefix, folder in ((f"{META}/", meta), ("segmentations/", f"{meta}/segmentations")):
            if relative.startswith(prefix):
                return [f"{folder}/{relative[len(prefix):]}"]
        return []

    def listed_id(self, relative: str) -> str:
        stem = Path(relative).with_suffix("").as_posix()
        return stem.split("images/", 1)[1] if "images/" in stem else stem

    def read_mask(self, path: str) -> np.ndarray:
        """Bird = grey level > 127.5."""
        return gray_mask(path) > 127.5


class Cub5(Cub):
    title = "CUB5"
    name = "cub5"
    summary = "CUB5: the paper's five CUB-200-2011 species (150 train / 145 test images)"
    defaults: ClassVar[dict[str, Any]] = {**Cub.defaults, "class_subset": list(CUB5_CLASSES)}
    profiles: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"dataset": dict(NATURAL_QUICK)},
    }
