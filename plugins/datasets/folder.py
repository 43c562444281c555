"""Your own data: images in one folder per class, masks in a parallel tree.

``images/<class>/<name>.<ext>`` with the mask ``masks/<class>/<name>.<ext>``
(same relative path and name, any image extension). With split folders,
``images/train/<class>/...`` and ``images/test/<class>/...`` (and optionally
``images/valid/...``) give the partition; without them the test split is
``test_fraction`` of each class, rounded up, drawn with ``split_seed``. Masks
of 0/1 are used as they are; 8-bit masks mark foreground above 127.5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from wsolbench.data.files import SPLITS, FileDataset, binary_mask, stratified_holdout
from wsolbench.data.samples import Record
from wsolbench.errors import ConfigError, DataError


def image_files(folder: Path) -> list[Path]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)


def subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


class Folder(FileDataset):
    title = "the folder dataset"
    name = "folder"
    summary = "your own data: images in class folders, masks in a parallel tree (no code to write)"
    layout = """\
  images/<class>/<name>.jpg      one folder per class, any image format
  masks/<class>/<name>.png       same relative path and name; 0/1 or 0/255 (foreground > 127.5)
or, with your own split:
  images/train/<class>/...  images/test/<class>/...  [images/valid/<class>/...]
  masks/train/<class>/...   masks/test/<class>/...   [masks/valid/<class>/...]"""
    defaults: ClassVar[dict[str, Any]] = {
        **FileDataset.defaults,
        "images": "images",  #: the image folder, relative to the data root
        "masks": "masks",  #: the mask folder, relative to the data root
        "test_fraction": 0.2,  #: without split folders: share of each class used for testing (rounded up)
    }
    profiles: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"dataset": {"resize_short": 128, "crop_size": 112}},
    }

    def _check_params(self) -> None:
        super()._check_params()
        if not 0 < self.params["test_fraction"] < 1:
            raise ConfigError("dataset.test_fraction must be in (0, 1)")

    @property
    def images_dir(self) -> Path:
        return self.root_dir / self.params["images"]

    @property
    def masks_dir(self) -> Path:
        return self.root_dir / self.params["masks"]

    def required_paths(self) -> list[Path]:
        return [self.images_dir, self.masks_dir]

    @property
    def split_folders(self) -> list[str]:
        """The split folders under ``images/`` (empty when the folders are classes)."""
        names = subfolders(self.images_dir)
        return [s for s in SPLITS if s in names] if {"train", "test"} <= set(names) else []

    @property
    def classes(self) -> list[str]:
        if not hasattr(self, "_classes"):
            self.require_layout()
            tops = self.split_folders
            found = sorted({c for s in tops for c in subfolders(self.images_dir / s)}) if tops else subfolders(
                self.images_dir
            )
            if len(found) < 2:
                raise DataError(f"{self.images_dir} needs at least two class folders; found {found or 'none'}")
            self._classes = found
        return self._classes

    def official_splits(self) -> dict[str, list[Record]]:
        index = {c: i for i, c in enumerate(self.classes)}
        masks = {p.relative_to(self.masks_dir).with_suffix("").as_posix(): p for p in image_files(self.masks_dir)}

        def records(folder: Path, prefix: str) -> list[Record]:
            out = []
            for path in image_files(folder):
                relative = path.relative_to(folder)
                if len(relative.parts) < 2:
                    raise DataError(f"{path} is not inside a class folder of {folder}")
                key = (Path(prefix) / relative.with_suffix("")).as_posix()
                mask = masks.get(key, self.masks_dir / f"{key}.png")
                out.append(Record(str(path), str(mask), index[relative.parts[0]], key))
            return out

        tops = self.split_folders
        if tops:
            return {s: records(self.images_dir / s, s) for s in tops}
        every = records(self.images_dir, "")
        train, test = stratified_holdout(every, self.params["test_fraction"], self.params["split_seed"])
        return {"train": train, "test": test}

    def read_mask(self, path: str) -> np.ndarray:
        return binary_mask(path)
