"""GlaS: the MICCAI 2015 gland segmentation challenge (Warwick-QU), benign vs. malignant.

165 H&E colon histology images from 16 sections: ``train_N`` (85) and
``testA_N`` / ``testB_N`` (80, the official test set). Annotations
``<image>_anno`` label each gland with its own id (0 = background) in the
official BMP release; 0/255 PNG copies are accepted too (gland = non-zero).
Image-level labels come from ``Grade.csv``, whose header and values carry
leading spaces (``name,patient ID, grade (GlaS), ...`` / ``testA_1,4, benign, ...``).

GlaS has no boxes of its own: items carry none, and box metrics take one
ground-truth box per connected component of the gland mask (each gland).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from wsolbench.data.files import FileDataset
from wsolbench.data.samples import Record, read_mask_array
from wsolbench.errors import DataError

EXTENSIONS = (".bmp", ".png")


class Glas(FileDataset):
    title = "GlaS"
    name = "glas"
    summary = "GlaS colon histology (MICCAI 2015): 165 images, benign vs. malignant, gland masks"
    homepage = "https://warwick.ac.uk/fac/cross_fac/tia/data/glascontest/ (registration required)"
    layout = """\
  Grade.csv                 name, patient ID, grade (GlaS), ... (one row per image)
  train_1.bmp  train_1_anno.bmp  ...  train_85.bmp        (.bmp or .png)
  testA_1.bmp  testA_1_anno.bmp  ...  testA_60.bmp
  testB_1.bmp  testB_1_anno.bmp  ...  testB_20.bmp"""
    defaults: ClassVar[dict[str, Any]] = {
        **FileDataset.defaults,
        # the paper: reflect-pad by half of each side, random 480 crops, h/v flips, colour jitter
        "reflect_pad": 0.5,
        "vflip": True,
        "jitter": [0.5, 0.5, 0.5, 0.05],
    }
    profiles: ClassVar[dict[str, dict[str, Any]]] = {
        # a quarter of the resolution (glands stay visible), small crops: a few minutes on 2 CPU cores
        "quick": {"dataset": {"resize_short": 128, "crop_size": 96}, "eval": {"batch_size": 16}},
    }
    classes_: ClassVar[list[str]] = ["benign", "malignant"]
    #: the paper's dense-CRF parameters for histology (``eval.crf = true``)
    crf_params: ClassVar[dict[str, Any]] = {
        "iterations": 2, "gauss_sxy": 3.0, "bilateral_sxy": 13.0, "bilateral_srgb": 3.0,
    }

    @property
    def classes(self) -> list[str]:
        return list(self.classes_)

    def required_paths(self) -> list[Path]:
        return [self.root_dir / "Grade.csv"]

    def grades(self) -> dict[str, str]:
        """``{image name: grade}`` from ``Grade.csv`` (spaces around names and values ignored)."""
        import pandas as pd

        path = self.root_dir / "Grade.csv"
        try:
            table = pd.read_csv(path, skipinitialspace=True, dtype=str, encoding="utf-8-sig")
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from exc
        table.columns = [str(c).strip() for c in table.columns]
        grade = "grade (GlaS)" if "grade (GlaS)" in table.columns else next(
            (c for c in table.columns if c.lower().startswith("grade")), None
        )
        if "name" not in table.columns or grade is None:
            raise DataError(f"{path} needs the columns 'name' and 'grade (GlaS)'; it has {list(table.columns)}")
        names = table["name"].fillna("").str.strip()
        values = table[grade].fillna("").str.strip().str.lower()
        out = {}
        for row, (name, value) in enumerate(zip(names, values), start=2):
            if value not in self.classes_:
                raise DataError(f"{path}, line {row}: grade {value!r} of {name!r} is not benign or malignant")
            out[name] = value
        return out

    def image_path(self, name: str) -> Path:
        """``<root>/<name>.bmp`` or ``.png``, whichever exists (``.bmp`` when neither does)."""
        for ext in EXTENSIONS:
            path = self.root_dir / f"{name}{ext}"
            if path.exists():
                return path
        return self.root_dir / f"{name}{EXTENSIONS[0]}"

    def official_splits(self) -> dict[str, list[Record]]:
        splits: dict[str, list[Record]] = {"train": [], "test": []}
        for name, grade in self.grades().items():
            if name.startswith("train_"):
                split = "train"
            elif name.startswith(("testA_", "testB_")):
                split = "test"
            else:
                raise DataError(f"{self.root_dir / 'Grade.csv'}: image {name!r} is neither train_N, testA_N nor testB_N")
            image = self.image_path(name)
            mask = self.image_path(f"{name}_anno")
            splits[split].append(Record(str(image), str(mask), self.classes_.index(grade), name))
        return splits

    def listed_candidates(self, relative: str) -> list[str]:
        """Split files name ``.bmp`` files; a ``.png`` copy of the release is accepted (and vice versa)."""
        stem, ext = Path(relative).with_suffix(""), Path(relative).suffix.lower()
        return [f"{stem.as_posix()}{other}" for other in EXTENSIONS if other != ext]

    def read_mask(self, path: str) -> np.ndarray:
        """Gland = any non-zero value (instance ids or 255)."""
        array = read_mask_array(path)
        return (array[..., :3] != 0).any(-1) if array.ndim == 3 else array != 0
