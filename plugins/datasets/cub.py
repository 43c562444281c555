"""CUB-200-2011 (Caltech-UCSD Birds) and CUB5, the paper's five-class subset.

11,788 images of 200 bird species with the official ``train_test_split.txt``
(5,994 train / 5,794 test) and one segmentation per image (the separate
``segmentations.tgz``), a grey-level PNG whose foreground is value > 127.5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from wsolbench.data.download import Resource
from wsolbench.data.files import NATURAL_PAPER, NATURAL_QUICK, FileDataset, gray_mask
from wsolbench.data.samples import Record
from wsolbench.errors import DataError

META = "CUB_200_2011"
METADATA = ("classes.txt", "images.txt", "image_class_labels.txt", "train_test_split.txt")

#: the paper's CUB5 classes
CUB5_CLASSES = [
    "019.Gray_Catbird",
    "099.Ovenbird",
    "108.White_necked_Raven",
    "171.Myrtle_Warbler",
    "178.Swainson_Warbler",
]


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
        return [self.meta_dir / name for name in METADATA] + [self.meta_dir / "images", self.segmentations_dir]

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
        return splits

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
