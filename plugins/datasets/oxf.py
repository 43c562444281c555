"""Oxford Flowers 102 (Nilsback & Zisserman): 8,189 images of 102 flower species.

Labels are in ``imagelabels.mat`` (1-based), the official split in
``setid.mat`` (``trnid`` 1,020 / ``valid`` 1,020 / ``tstid`` 6,149 image
numbers, 1-based). Segmentations ``segmim/segmim_NNNNN.jpg`` paint the
background pure blue (0, 0, 254); everything else is flower. Being JPEGs, the
blue is only approximately that, hence ``blue_tolerance``. Grey-level mask
files (the reference implementation's binarised ``segmim_bin``) are read as
flower = value > 127.5.

Oxford Flowers has no boxes of its own: items carry none, and box metrics take
one ground-truth box per connected component of the flower mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from wsolbench.data.download import Resource
from wsolbench.data.files import NATURAL_PAPER, NATURAL_QUICK, FileDataset
from wsolbench.data.samples import Record, read_mask_array
from wsolbench.errors import DataError

URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
SETS = {"train": "trnid", "valid": "valid", "test": "tstid"}
BLUE = (0, 0, 254)


def load_mat(path: Path, key: str) -> np.ndarray:
    """Variable ``key`` of a MATLAB file, flattened."""
    from scipy.io import loadmat

    try:
        data = loadmat(path)
    except FileNotFoundError as exc:
        raise DataError(f"{path} not found") from exc
    except Exception as exc:  # noqa: BLE001 - scipy raises several kinds for a bad file
        raise DataError(f"cannot read {path}: {exc}") from exc
    if key not in data:
        raise DataError(f"{path} has no variable {key!r} (it has {sorted(k for k in data if not k.startswith('__'))})")
    return np.asarray(data[key]).ravel()


class Oxf(FileDataset):
    title = "Oxford Flowers 102"
    name = "oxf"
    summary = "Oxford Flowers 102: 102 species, 8,189 images, official train/valid/test, segmentations"
    homepage = URL
    layout = """\
  imagelabels.mat           labels of the 8,189 images (1..102)
  setid.mat                 trnid / valid / tstid: 1-based image numbers
  jpg/image_00001.jpg ...   102flowers.tgz, extracted
  segmim/segmim_00001.jpg   102segmentations.tgz, extracted (background pure blue)"""
    downloads = (
        Resource(URL + "102flowers.tgz", "102flowers.tgz", "52808999861908f626f3c1f4e79d11fa", extract=True),
        Resource(URL + "102segmentations.tgz", "102segmentations.tgz", "51375996b6c4f367a4b9f4492d7ecef5",
                 extract=True),
        Resource(URL + "imagelabels.mat", "imagelabels.mat", "e0620be6f572b9609742df49c70aed4d"),
        Resource(URL + "setid.mat", "setid.mat", "a5357ecc9cb78c4bef273ce3793fc85c"),
    )
    defaults: ClassVar[dict[str, Any]] = {
        **FileDataset.defaults,
        **NATURAL_PAPER,
        "blue_tolerance": 40,  #: a segmentation pixel within this of (0, 0, 254) in every channel is background
    }
    profiles: ClassVar[dict[str, dict[str, Any]]] = {
        # two images per class and split: 204 / 204 / 204 images
        "quick": {"dataset": {**NATURAL_QUICK, "max_per_class": 2}},
        "paper": {"train": {"num_workers": 4}},
    }

    @property
    def classes(self) -> list[str]:
        return [f"flower-{k:03d}" for k in range(1, 103)]

    def required_paths(self) -> list[Path]:
        root = self.root_dir
        return [root / "imagelabels.mat", root / "setid.mat", root / "jpg", root / "segmim"]

    def official_splits(self) -> dict[str, list[Record]]:
        root = self.root_dir
        labels = load_mat(root / "imagelabels.mat", "labels").astype(int)
        if labels.min(initial=1) < 1 or labels.max(initial=1) > 102:
            raise DataError(f"{root / 'imagelabels.mat'}: labels must be 1..102")
        splits = {}
        for split, key in SETS.items():
            numbers = load_mat(root / "setid.mat", key).astype(int)
            bad = numbers[(numbers < 1) | (numbers > len(labels))]
            if bad.size:
                raise DataError(f"{root / 'setid.mat'}: {key} names images {bad[:5].tolist()} beyond the labels")
            splits[split] = [
                Record(
                    image=str(root / "jpg" / f"image_{n:05d}.jpg"),
                    mask=str(root / "segmim" / f"segmim_{n:05d}.jpg"),
                    label=int(labels[n - 1]) - 1,
                    id=f"image_{n:05d}",
                )
                for n in sorted(numbers.tolist())
            ]
        return splits

    def listed_candidates(self, relative: str) -> list[str]:
        """Split files name the reference's ``segmim_bin/``; the official ``segmim/`` is used instead."""
        return ["segmim/" + relative.split("/", 1)[1]] if relative.startswith("segmim_bin/") else []

    def listed_id(self, relative: str) -> str:
        return Path(relative).stem

    def read_mask(self, path: str) -> np.ndarray:
        array = read_mask_array(path)
        if array.ndim == 2:
            return array > 127.5
        rgb = array[..., :3].astype(np.int16)
        background = (np.abs(rgb - np.array(BLUE, dtype=np.int16)) <= self.params["blue_tolerance"]).all(-1)
        return ~background
