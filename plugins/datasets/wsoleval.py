"""wsolevaluation's datasets (Choe et al., CVPR 2020): CUB, ImageNet-1k and OpenImages30k with its metadata.

The protocol of "Evaluating Weakly Supervised Object Localization Methods
Right" (the public code clovaai/wsolevaluation) splits each dataset three ways:
``train`` (weak supervision, image labels only), ``val`` (``train-fullsup``, a
small fully labelled split for choosing hyperparameters and checkpoints: CUBV2
on CUB, ImageNetV2 on ImageNet, OpenImages30k's ``val``) and ``test``
(CUB-200-2011's test images, ImageNet's validation images, OpenImages30k's
``test``). wsolbench's ``valid`` split is their ``val``.

``--set dataset.dataset_name=CUB|ILSVRC|OpenImages`` picks one (wsolevaluation's
``--dataset_name``; ``dataset.name`` picks the dataset plug-in itself). Each split is
described by four files under ``metadata/<name>/<split>/`` (their formats, as
wsolevaluation's ``data_loaders.py`` reads them):

- ``image_ids.txt``: one image path per line, relative to ``<root>/<name>``;
- ``class_labels.txt``: ``<path>,<label>`` (labels 0..C-1);
- ``image_sizes.txt``: ``<path>,<width>,<height>`` (empty on OpenImages);
- ``localization.txt``: on CUB and ILSVRC ``<path>,<x0>,<y0>,<x1>,<y1>``, one
  line per box, inclusive pixel boxes; on OpenImages
  ``<path>,<mask>,<ignore>``, one line per instance mask, the ignore file on
  an image's first line only (paths relative to the mask folder). Empty for
  the ``train`` splits of ILSVRC and OpenImages, which have no localization.

Items of CUB and ILSVRC carry their boxes, and their mask is the filled union
of the boxes (the only pixel ground truth these splits have). Items of
OpenImages carry the union of the instance masks (a pixel is foreground where
a mask file is non-zero, as in wsolevaluation's ``get_mask``) and an
``ignore`` region: the ignore file's non-zero pixels outside the foreground,
which leave both PxAP histograms. Masks whose size differs from their image
are resized to it with nearest-neighbour sampling, as wsolevaluation's
``cv2.INTER_NEAREST`` does. Training images without localization have an
empty mask and no boxes.

Item ids are the lines of ``image_ids.txt`` verbatim (extension included), the
names wsolevaluation's code gives score maps (``<image_id>.npy``).

The metadata is wsolevaluation's (MIT licence) and is not part of wsolbench:
``wsolbench data download wsoleval --set dataset.dataset_name=NAME --dest ROOT``
fetches it, pinned to one commit and checked file by file against the git
blob SHA-1s of that commit's tree. The images come from their owners (the
layout below says where).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from wsolbench.data.download import Resource
from wsolbench.data.files import FileDataset, gray_mask
from wsolbench.data.samples import Record, join_under
from wsolbench.data.transforms import NORMALIZATIONS, eval_transform, train_transform
from wsolbench.errors import ConfigError, DataError

#: the wsolevaluation commit whose metadata is fetched
COMMIT = "96f4b88679af41f005824661f47e6fe3628af2aa"
REPOSITORY = "https://raw.githubusercontent.com/clovaai/wsolevaluation"
NAMES = ("CUB", "ILSVRC", "OpenImages")
#: wsolbench's split -> wsolevaluation's
SPLIT_FOLDERS = {"train": "train", "valid": "val", "test": "test"}
FILES = ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt")

#: git blob SHA-1 of each metadata file at COMMIT, in FILES order per split (from the repository's tree)
BLOBS = {
    "CUB": {
        "train": ("6b0a7025eb9fd8aeb3263022ba5ce9e212484cf0", "fd2808ebea4306938cd68bb669f2c7099bcebde9",
                  "61599b7f0a36110b6f65ad30a4cb2d3c220fdd8f", "ee7e5a47075067e8baa962306bfd58dcca9703f1"),
        "val": ("0561538f7cb78132e9a349fbe008c9661e276c92", "0f93c497fcd593b42d18c4a78f65943993b9af8e",
                "e6300a969c023d31dba20ee302e828031823ebeb", "a69c180f6c5feca83870b11bf8ab85b9995722ce"),
        "test": ("dcbd21fc901829ed1f8dbfff392d85adba1ba762", "2f689e4815259a7da79456caf8b56b658e5a1b73",
                 "cfb3d69570d1a341711136e40543c24627a1c002", "04318c8f577dbc31d1f1f0bbfe0837dff6622903"),
    },
    "ILSVRC": {
        "train": ("ba73fc85bf0311dfbef8f2c958c27d9770bc757b", "79bf625fd83ab2c65dfa1a3504550560174d870f",
                  "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391", "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"),
        "val": ("dbbc418fa3dcd958729de1cb2840fd95efc0ea5d", "db076ff8fc52146a8abe237293213732c6a6ee4a",
                "71ebc843e529445d812fffc97a59f222f088e481", "55d1595df23aa3f2b9090a6fdbf777ab7bc25355"),
        "test": ("f26c533559f149856519ff2bbdff34a119f92c32", "7d4417586fd4f083e19a5865b64ae18b258ed342",
                 "e6e36cb390cc4a987786c3abffb04b2c26ccdc46", "c8665bd7e80e8b38135b0e52061cbeeb13db30d3"),
    },
    "OpenImages": {
        "train": ("86dd9f1f45ef135001b2f016a9349066414c3751", "8bbc2d4002b85eb405716de8d10d5c760735817c",
                  "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391", "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"),
        "val": ("8070b01ceed6dfbf69b69a5a1dbc79f97c332d54", "9fed0a9fc68c649bb82a1f6cd994a67e16193892",
                "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391", "7397afc849543a04ce3aabbb5230d50d049364e3"),
        "test": ("92b113065400d2c012f0cc14c8e5adca6ea5d401", "201ff7469fd2d26b7692d5bcd893b1033b88bb35",
                 "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391", "0d0946f117c1dd1d37bbeb66d56990806e263584"),
    },
}

#: where each dataset's images come from (wsolevaluation's README)
IMAGES = {
    "CUB": "CUB-200-2011 (CUB_200_2011.tgz, its images/ folder's class folders) and CUBV2 (CUBV2.tar from "
           "wsolevaluation's README) extracted into <root>/CUB",
    "ILSVRC": "ImageNet's train/ and val/ (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar from image-net.org) "
              "and ImageNetV2's threshold-0.7 images as val2/ (imagenetv2-threshold0.7.tar.gz) in <root>/ILSVRC",
    "OpenImages": "OpenImages30k's images and segmentation masks (the two archives linked from wsolevaluation's "
                  "README) extracted into <root>/OpenImages",
}


def metadata_resources(name: str, commit: str = COMMIT) -> tuple[Resource, ...]:
    """The twelve metadata files of dataset ``name``, as ``metadata/<name>/<split>/<file>`` below the root."""
    return tuple(
        Resource(f"{REPOSITORY}/{commit}/metadata/{name}/{split}/{file}", f"metadata/{name}/{split}/{file}",
                 git_sha1=blob)
        for split, blobs in BLOBS[name].items()
        for file, blob in zip(FILES, blobs)
    )


def read_rows(path: Path, fields: int | tuple[int, ...]) -> list[tuple[int, list[str]]]:
    """``(line number, comma-separated fields)`` of a metadata file, checking the number of fields."""
    counts = (fields,) if isinstance(fields, int) else fields
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    rows = [(number, line.split(",")) for number, line in enumerate(lines, start=1) if line and not line.isspace()]
    for number, cells in rows:  # a second pass: the listing of ImageNet runs at comprehension speed
        if len(cells) not in counts:
            raise DataError(f"{path}, line {number}: expected {' or '.join(map(str, counts))} comma-separated "
                            f"fields, got {','.join(cells)!r}")
    return rows


def read_integers(path: Path, number: int, cells: list[str]) -> list[int]:
    try:
        return [int(c) for c in cells]
    except ValueError:
        raise DataError(f"{path}, line {number}: expected integers, got {','.join(cells)!r}") from None


def nearest_resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resizing by index arithmetic: output pixel ``j`` reads input pixel ``floor(j * in / out)``.

    The rule of OpenCV's ``INTER_NEAREST``, which wsolevaluation resizes masks
    with; written out because it is one line of NumPy and adds no dependency.
    """
    height, width = size
    rows = (np.arange(height) * array.shape[0]) // height
    cols = (np.arange(width) * array.shape[1]) // width
    return array[rows[:, None], cols[None, :]]


class WsolEval(FileDataset):
    title = "wsolevaluation"
    name = "wsoleval"
    summary = "wsolevaluation's CUB, ImageNet-1k or OpenImages30k: its metadata, CUBV2/ImageNetV2 validation boxes"
    homepage = "https://github.com/clovaai/wsolevaluation"
    layout = """\
  metadata/<name>/train|val|test/     wsolevaluation's metadata (wsolbench data download wsoleval)
    image_ids.txt  class_labels.txt  image_sizes.txt  localization.txt
  CUB/<class>/<image>.jpg             CUB-200-2011's images and the CUBV2 ones
  ILSVRC/train/<wnid>/...  ILSVRC/val/...  ILSVRC/val2/<class>/...   ImageNet and ImageNetV2
  OpenImages/train|val|test/<class>/<id>.jpg, <id>_m<...>.png, <id>_ignore.png"""
    defaults: ClassVar[dict[str, Any]] = {
        **FileDataset.defaults,
        "dataset_name": "CUB",  #: CUB, ILSVRC or OpenImages (wsolevaluation's --dataset_name)
        "metadata_dir": "",  #: the metadata folder ("": <root>/metadata), holding <name>/train|val|test
        "mask_dir": "",  #: OpenImages' mask folder ("": <root>/OpenImages, beside the images)
        "normalize": "imagenet",
        "resize_square": 256,  #: training images resized to this square, then cropped; 0: the shared resizing
        "crop_size": 224,  #: training crop; evaluation images are resized to this square (wsolevaluation)
    }
    #: wsolevaluation's protocol selects the model on the validation split's localization (CVPR 2020, Section 4)
    profiles: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"dataset": {"resize_square": 128, "crop_size": 112, "max_per_class": 2},
                  "eval": {"select": "localization"}},
        "paper": {"train": {"num_workers": 4}, "eval": {"select": "localization"}},
    }

    @property
    def localization_metric(self) -> str:  # type: ignore[override]
        """PxAP on OpenImages (masks), MaxBoxAccV2 on CUB and ImageNet (boxes), as the paper reports them."""
        return "pxap" if self.params["dataset_name"] == "OpenImages" else "maxboxaccv2"

    @property
    def report_name(self) -> str:
        """``wsoleval/CUB``, ``wsoleval/ILSVRC`` or ``wsoleval/OpenImages``: one plug-in, three datasets."""
        return f"wsoleval/{self.params['dataset_name']}"

    def __init__(self, root: str | None = None, seed: int = 0, **params: Any):
        super().__init__(root, seed, **params)
        if self.params["dataset_name"] not in NAMES:
            raise ConfigError(
                f"dataset.dataset_name must be one of {', '.join(NAMES)}, not {self.params['dataset_name']!r}"
            )
        if self.params["resize_square"] < 0:
            raise ConfigError("dataset.resize_square must be >= 0")

    @classmethod
    def download_resources(cls, params: dict[str, Any]) -> tuple[Resource, ...]:
        name = params.get("dataset_name", cls.defaults["dataset_name"])
        if name not in NAMES:
            raise ConfigError(f"dataset.dataset_name must be one of {', '.join(NAMES)}, not {name!r}")
        return metadata_resources(name)

    @classmethod
    def download_note(cls, params: dict[str, Any]) -> str:
        return f"The images are not downloaded: get {IMAGES[params.get('dataset_name', cls.defaults['dataset_name'])]}."

    # -- where things are ------------------------------------------------------------
    @property
    def metadata_root(self) -> Path:
        folder = self.params["metadata_dir"]
        base = Path(folder).expanduser() if folder else self.root_dir / "metadata"
        return base / self.params["dataset_name"]

    @property
    def image_root(self) -> Path:
        return self.root_dir / self.params["dataset_name"]

    @property
    def mask_root(self) -> Path:
        folder = self.params["mask_dir"]
        return Path(folder).expanduser() if folder else self.image_root

    def required_paths(self) -> list[Path]:
        meta = [self.metadata_root / SPLIT_FOLDERS[s] / f for s in SPLIT_FOLDERS for f in FILES
                if f != "image_sizes.txt"]
        return meta + [self.image_root]

    def _where_to_get(self, first: str) -> str:
        name = self.params["dataset_name"]
        return (
            f"{first} Expected layout:\n{self.layout}\nGet the metadata with `wsolbench data download wsoleval "
            f"--set dataset.dataset_name={name} --dest {self.root_path or 'ROOT'}` and the images from their owners: "
            f"{IMAGES[name]}."
        )

    # -- classes -------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        """Class ``k`` is named by the folder most of its training images are in (``001.Black_footed_Albatross``,
        ``n01440764``, ``01226z``); ``class-k`` when no training image has one."""
        if not hasattr(self, "_classes"):
            labelled = self._labels("train")
            count = 1 + max((label for split in SPLIT_FOLDERS for label in self._labels(split).values()), default=-1)
            folders: dict[int, Counter] = {k: Counter() for k in range(count)}
            for path, label in labelled.items():
                parts = path.rsplit("/", 2)
                parent = parts[-2] if len(parts) > 1 else ""
                if parent and parent not in SPLIT_FOLDERS.values():
                    folders[label][parent] += 1
            self._classes = [f[0][0] if (f := folders[k].most_common(1)) else f"class-{k}" for k in range(count)]
        return self._classes

    def _labels(self, split: str) -> dict[str, int]:
        cache = self.__dict__.setdefault("_label_cache", {})
        if split not in cache:
            path = self.metadata_root / SPLIT_FOLDERS[split] / "class_labels.txt"
            if not path.is_file():
                self.require_layout()
            rows = read_rows(path, 2)
            try:
                labels = {image: int(label) for _, (image, label) in rows}
            except ValueError:
                labels = {image: read_integers(path, number, [label])[0] for number, (image, label) in rows}
            if labels and min(labels.values()) < 0:
                number, (image, label) = next(row for row in rows if int(row[1][1]) < 0)
                raise DataError(f"{path}, line {number}: negative class label {label}")
            cache[split] = labels
        return cache[split]

    def image_sizes(self, split: str) -> dict[str, tuple[int, int]]:
        """``{image id: (height, width)}`` from ``image_sizes.txt`` (empty where the file is, as on OpenImages)."""
        path = self.metadata_root / SPLIT_FOLDERS[split] / "image_sizes.txt"
        if not path.is_file():
            return {}
        sizes = {}
        for number, (image, *wh) in read_rows(path, 3):
            width, height = read_integers(path, number, wh)
            sizes[image] = (height, width)
        return sizes

    # -- records -------------------------------------------------------------------------
    def official_splits(self) -> dict[str, list[Record]]:
        return {split: self._records(split) for split in SPLIT_FOLDERS}

    def _records(self, split: str) -> list[Record]:
        folder = self.metadata_root / SPLIT_FOLDERS[split]
        ids_path = folder / "image_ids.txt"
        labels = self._labels(split)
        masks = self.params["dataset_name"] == "OpenImages"
        localization = self._mask_rows(folder) if masks else self._box_rows(folder)
        sizes = self.image_sizes(split)
        self.__dict__.setdefault("_sizes", {}).update(sizes)
        image_root, mask_root = str(self.image_root), str(self.mask_root)
        records = []
        for number, (image,) in read_rows(ids_path, 1):
            if image not in labels:
                raise DataError(f"{ids_path}, line {number}: {image} has no line in class_labels.txt")
            path = self._join(image_root, image, ids_path)
            found = localization.get(image)
            if masks and found:
                mask_paths, ignore = found
                where = folder / "localization.txt"
                mask_files = [self._join(mask_root, m, where) for m in mask_paths]
                ignore_file = self._join(mask_root, ignore, where) if ignore else None
                record = Record(path, mask_files[0], labels[image], image, masks=tuple(mask_files[1:]),
                                ignore=ignore_file)
            else:
                record = Record(path, None, labels[image], image, boxes=tuple(found) if found else None)
            records.append(record)
        return records

    @staticmethod
    def _join(root: str, relative: str, where: Path) -> str:
        try:
            return join_under(root, relative)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None

    def _box_rows(self, folder: Path) -> dict[str, list[tuple[int, int, int, int]]]:
        path = folder / "localization.txt"
        boxes: dict[str, list[tuple[int, int, int, int]]] = {}
        for number, (image, *corners) in read_rows(path, 5):
            x0, y0, x1, y1 = read_integers(path, number, corners)
            if not (0 <= x0 <= x1 and 0 <= y0 <= y1):
                raise DataError(f"{path}, line {number}: box ({x0}, {y0}, {x1}, {y1}) is not x0 <= x1, y0 <= y1")
            boxes.setdefault(image, []).append((x0, y0, x1, y1))
        return boxes

    def _mask_rows(self, folder: Path) -> dict[str, tuple[list[str], str]]:
        path = folder / "localization.txt"
        masks: dict[str, tuple[list[str], str]] = {}
        for number, (image, mask, ignore) in read_rows(path, 3):
            if image in masks:
                if ignore:
                    raise DataError(f"{path}, line {number}: a second ignore file for {image} (one per image, on "
                                    f"its first line)")
                masks[image][0].append(mask)
            else:
                masks[image] = ([mask], ignore)
        return masks

    # -- masks and checks ------------------------------------------------------------------
    def read_mask(self, path: str) -> np.ndarray:
        """Foreground = non-zero (wsolevaluation: the grey level > 0.5)."""
        return gray_mask(path) > 0.5

    def read_mask_sized(self, path: str, size: tuple[int, int]) -> np.ndarray:
        mask = self.read_mask(path)
        if mask.shape != tuple(size) and min(size) > 0:
            mask = nearest_resize(mask, size)
        return mask

    def check_record(self, record: Record) -> list[str]:
        """The shared checks, and the image's size against ``image_sizes.txt`` (boxes are in that frame)."""
        problems = super().check_record(record)
        expected = self.__dict__.get("_sizes", {}).get(record.id)
        if expected is not None:
            try:
                with Image.open(record.image) as im:  # the header only
                    size = (im.height, im.width)
            except OSError:  # reported by the shared checks
                return problems
            if size != expected:
                problems.insert(0, f"image size {size} (height, width) differs from image_sizes.txt's {expected}: "
                                   f"{record.image}")
        return problems

    # -- transforms ------------------------------------------------------------------------
    def transform(self, train: bool) -> Any:
        """wsolevaluation's: training images resized to a square, cropped, flipped; evaluation images resized
        to the crop's square (the mask and the boxes stay at the image's own size)."""
        p = self.params
        if not p["resize_square"]:
            return super().transform(train)
        mean, std = NORMALIZATIONS[p["normalize"]]
        if train:
            return train_transform(crop_size=p["crop_size"] or None, resize_to=p["resize_square"],
                                   hflip=p["hflip"], vflip=p["vflip"], jitter=list(p["jitter"]) or None,
                                   mean=mean, std=std)
        return eval_transform(resize_to=p["crop_size"] or p["resize_square"], mean=mean, std=std)
