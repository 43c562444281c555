"""Datasets stored as files: records, splits, reference split files, preprocessing, checks.

Every file-based dataset plug-in (GlaS, CUB, Oxford Flowers, the ``folder``
dataset) is a :class:`FileDataset`. A plug-in lists its images as
:class:`~wsolbench.data.samples.Record` rows in the dataset's official partition
(:meth:`FileDataset.official_splits`) and says how a mask file becomes a
foreground mask (:meth:`FileDataset.read_mask`); this module does the rest:

- the validation split: ``valid_fraction`` of each class's training images,
  rounded up, drawn with ``split_seed`` (the paper's 20% per class), or the
  dataset's official one; ``valid_per_class = K`` keeps K images of each class
  in it (the few-shot fully supervised validation split of Choe et al., CVPR
  2020) and leaves the rest unused; ``train_on_valid`` trains on that split
  alone (their "FSL baseline", with a fully supervised method);
- items with boxes and ignore regions where the records carry them
  (:class:`~wsolbench.data.samples.Record`);
- the reference split files (``split_dir``): CSV rows ``image,mask,label`` with
  paths relative to the data root, so the paper's exact splits can be used;
- preprocessing parameters shared by every file dataset (crops, flips, reflect
  padding, colour jitter, resizing, normalisation) on top of
  :mod:`wsolbench.data.transforms`;
- caching decoded images in memory for small splits;
- the layout check (a clear error naming the root, the expected layout and
  where to get the data) and the per-file checks of ``wsolbench data verify``.
"""

from __future__ import annotations

import csv
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from wsolbench.data.samples import (
    Loaded,
    Record,
    SampleDataset,
    check_annotations,
    check_sizes,
    read_image,
    read_mask_array,
    resolve_under,
)
from wsolbench.data.transforms import NORMALIZATIONS, eval_transform, train_transform
from wsolbench.errors import ConfigError, DataError
from wsolbench.interfaces import Dataset

SPLITS = ("train", "valid", "test")
CSV_HEADER = ("image", "mask", "label")

#: the paper's preprocessing of natural images (CUB, OxF): short side >= 500 (aspect kept), random 480 crops, h-flips
NATURAL_PAPER = {"min_short": 500, "crop_size": 480, "hflip": True, "vflip": False, "jitter": [], "reflect_pad": 0.0}
#: quick runs on natural images: a 128-pixel short side, 112 crops
NATURAL_QUICK = {"min_short": 0, "resize_short": 128, "crop_size": 112}


# -- splits -------------------------------------------------------------------------
def ceil_share(n: int, fraction: float) -> int:
    """``ceil(n * fraction)`` in exact decimal arithmetic, so float rounding never adds an image."""
    share = Fraction(str(fraction))
    return -((-n * share.numerator) // share.denominator)


def _by_class(records: Iterable[Record]) -> dict[int, list[Record]]:
    groups: dict[int, list[Record]] = defaultdict(list)
    for rec in records:
        groups[rec.label].append(rec)
    return {label: sorted(group, key=lambda r: r.id) for label, group in sorted(groups.items())}


def _pick_per_class(records: Sequence[Record], count: Callable[[int], int], seed: int) -> set[str]:
    """Ids of ``count(n_k)`` records of each class k, drawn at random from ``seed``.

    Records are sorted by id within a class before drawing, so the choice does
    not depend on the order in which the dataset lists its files.
    """
    rng = np.random.default_rng(seed)
    picked: set[str] = set()
    for group in _by_class(records).values():
        order = rng.permutation(len(group))
        picked.update(group[i].id for i in order[: count(len(group))])
    return picked


def stratified_holdout(records: Sequence[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Split ``records`` into ``(kept, held_out)``: ``ceil(fraction * n_k)`` of each class k held out.

    This is how the paper builds its validation sets (20% of each class's
    training images, rounded up). Both parts keep the records' order.
    """
    held = _pick_per_class(records, lambda n: ceil_share(n, fraction), seed)
    return [r for r in records if r.id not in held], [r for r in records if r.id in held]


def limit_per_class(records: Sequence[Record], most: int, seed: int) -> list[Record]:
    """At most ``most`` records of each class (drawn at random from ``seed``), in their order."""
    kept = _pick_per_class(records, lambda n: min(n, most), seed)
    return [r for r in records if r.id in kept]


# -- files ----------------------------------------------------------------------------
def safe_path(root: Path, relative: str, source: str | Path = "") -> Path:
    """``root / relative`` for a path read from ``source``; it may not leave ``root``.

    See :func:`wsolbench.data.samples.resolve_under` (symbolic links inside the root
    that lead elsewhere, e.g. to another disk, are allowed).
    """
    try:
        return resolve_under(root, relative.replace("\\", "/"))
    except DataError as exc:
        raise DataError(f"{source}: {exc}" if source else str(exc)) from None


def find_split_files(split_dir: str | Path) -> dict[str, Path]:
    """The ``train``/``valid``/``test`` CSV files of a reference split folder.

    Files are named ``<split>*.csv`` (the reference implementation writes
    ``train_s_0_f_0.csv``); a folder holding one such set further down (the
    reference layout ``split_0/fold_0/``) is accepted too. ``valid`` is optional.
    """
    folder = Path(split_dir).expanduser()
    if not folder.is_dir():
        raise DataError(f"dataset.split_dir {folder} is not a folder")
    candidates = [folder] + sorted({p.parent for p in folder.rglob("train*.csv")} - {folder})
    for where in candidates:
        found = {s: sorted(where.glob(f"{s}*.csv")) for s in SPLITS}
        if found["train"] and found["test"]:
            ambiguous = [s for s, files in found.items() if len(files) > 1]
            if ambiguous:
                names = ", ".join(p.name for s in ambiguous for p in found[s])
                raise DataError(f"dataset.split_dir {where} has several files for one split: {names}")
            if where != folder and len(candidates) > 2:
                raise DataError(
                    f"dataset.split_dir {folder} holds several split folders; name one of them, e.g. {where}"
                )
            return {s: files[0] for s, files in found.items() if files}
    raise DataError(
        f"dataset.split_dir {folder} has no split files: expected train*.csv, test*.csv and optionally "
        f"valid*.csv with rows image,mask,label"
    )


def read_split_csv(path: Path) -> list[tuple[str, str, str, int]]:
    """Rows ``(image, mask, label, line_number)`` of a split file; a header row is skipped."""
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for number, row in enumerate(csv.reader(f), start=1):
                cells = [c.strip() for c in row]
                if not any(cells):
                    continue
                if number == 1 and tuple(c.lower() for c in cells) == CSV_HEADER:
                    continue
                if len(cells) != 3 or not cells[0] or not cells[1]:
                    raise DataError(f"{path}, line {number}: expected image,mask,label, got {','.join(row)!r}")
                rows.append((cells[0], cells[1], cells[2], number))
    except OSError as exc:
        raise DataError(f"cannot read split file {path}: {exc}") from exc
    return rows


def gray_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as a 2-D array (the first channel of a colour or grey+alpha file)."""
    array = read_mask_array(path)
    return array[..., 0] if array.ndim == 3 else array


def binary_mask(path: str | os.PathLike) -> np.ndarray:
    """Foreground of a binary mask file: 0/1 files as they are, 0/255 files above 127.5."""
    array = gray_mask(path)
    return array > (0 if array.max(initial=0) <= 1 else 127.5)


def _size(path: str | None) -> int | None:
    """The size in bytes of the file at ``path`` (``None``: no path, or no such file)."""
    try:
        return os.stat(path).st_size if path else None
    except OSError:
        return None


# -- the base class -------------------------------------------------------------------
class FileDataset(Dataset):
    """A dataset of image files with one mask file per image.

    Subclasses set :attr:`title`, :attr:`name`, :attr:`homepage`,
    :attr:`layout` and implement :attr:`classes`, :meth:`official_splits`,
    :meth:`read_mask` and, where the dataset has metadata files,
    :meth:`required_paths`. Their parameters extend :attr:`defaults`.
    """

    #: the dataset's name in messages
    title: ClassVar[str] = ""
    #: the registered name (error messages suggest ``wsolbench data download NAME``)
    name: ClassVar[str] = ""
    #: official files that ``wsolbench data download`` fetches (``wsolbench.data.download.Resource``)
    downloads: ClassVar[tuple[Any, ...]] = ()

    defaults: ClassVar[dict[str, Any]] = {
        "split_dir": "",  #: folder of reference split CSV files; "": the official split + validation hold-out
        "valid_fraction": 0.2,  #: share of each class's training images held out for validation (rounded up)
        "split_seed": 0,  #: seed of the random hold-outs and max_per_class (fixed: every run sees the same split)
        "max_per_class": 0,  #: keep at most this many images of each class in every split (0: all)
        "valid_per_class": 0,  #: keep this many images of each class in the validation split, drop the rest (0: all)
        "train_on_valid": False,  #: train on the validation split alone (the FSL baseline of Choe et al.)
        "cache_images": 1000,  #: keep decoded images in memory for splits of at most this many images
        "normalize": "half",  #: "half" (mean = std = 0.5, the paper) or "imagenet"
        "crop_size": 480,  #: training crop (0: whole images)
        "resize_short": 0,  #: resize so the short side is this many pixels (0: keep); training and evaluation
        "min_short": 0,  #: upscale so the short side is at least this (0: off); training and evaluation
        "reflect_pad": 0.0,  #: reflect-pad each side by this fraction of the image before cropping
        "hflip": True,
        "vflip": False,
        "jitter": [],  #: colour jitter [brightness, contrast, saturation, hue]; []: none
    }

    def __init__(self, root: str | None = None, seed: int = 0, **params: Any):
        super().__init__(root, seed, **params)
        self.root_path = Path(root).expanduser() if root else None
        self._check_params()
        self._splits: dict[str, list[Record]] | None = None

    def _check_params(self) -> None:
        p = self.params
        problems = []
        if p["normalize"] not in NORMALIZATIONS:
            problems.append(f"dataset.normalize must be one of {sorted(NORMALIZATIONS)}, not {p['normalize']!r}")
        if p["jitter"] and len(p["jitter"]) != 4:
            problems.append("dataset.jitter must be [] or [brightness, contrast, saturation, hue]")
        if not 0 <= p["valid_fraction"] < 1:
            problems.append("dataset.valid_fraction must be in [0, 1)")
        for key in ("crop_size", "resize_short", "min_short", "max_per_class", "valid_per_class", "cache_images"):
            if p[key] < 0:
                problems.append(f"dataset.{key} must be >= 0")
        if problems:
            raise ConfigError("; ".join(problems))

    @classmethod
    def download_resources(cls, params: dict[str, Any]) -> tuple[Any, ...]:
        """The files ``wsolbench data download`` fetches with these parameters (:attr:`downloads`)."""
        return cls.downloads

    @classmethod
    def download_note(cls, params: dict[str, Any]) -> str:
        """What the download leaves to the user, printed after it ("" when nothing)."""
        return ""

    # -- what a plug-in provides -----------------------------------------------------
    def official_splits(self) -> dict[str, list[Record]]:
        """The dataset's own partition: ``train`` and ``test`` (and ``valid`` where official)."""
        raise NotImplementedError

    def read_mask(self, path: str) -> np.ndarray:
        """The foreground (boolean ``H x W``) of a mask file."""
        raise NotImplementedError

    def required_paths(self) -> list[Path]:
        """Files and folders whose absence means the root is not this dataset."""
        return []

    def listed_candidates(self, relative: str) -> list[str]:
        """Other relative paths to try when a split file names a file that is not there."""
        return []

    def listed_id(self, relative: str) -> str:
        """The id of an image named in a split file (the same id as in the official listing)."""
        return Path(relative).with_suffix("").as_posix()

    # -- the root ----------------------------------------------------------------------
    @property
    def root_dir(self) -> Path:
        if self.root_path is None:
            raise DataError(self._where_to_get(f"dataset {self.name!r} needs --data-root PATH."))
        return self.root_path

    def _where_to_get(self, first: str) -> str:
        text = first
        if self.layout:
            text += f" Expected layout:\n{self.layout.rstrip()}\n"
        if self.homepage:
            text += f"{'' if self.layout else ' '}Get the data from {self.homepage}"
            if self.downloads:
                text += f" or with `wsolbench data download {self.name} --dest PATH`"
            text += "."
        return text.rstrip()

    def missing_paths(self) -> list[Path]:
        """Required files and folders that are absent (empty when the root looks right)."""
        root = self.root_dir
        if not root.is_dir():
            return [root]
        return [p for p in self.required_paths() if not p.exists()]

    def require_layout(self) -> None:
        missing = self.missing_paths()
        if missing:
            root = self.root_dir
            if missing == [root]:
                what = f"the data root {root} of dataset {self.name!r} does not exist."
            else:
                names = ", ".join(str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in missing)
                what = f"{root} is not laid out as {self.title} expects: missing {names}."
            raise DataError(self._where_to_get(what))

    # -- splits --------------------------------------------------------------------------
    def splits(self) -> dict[str, list[Record]]:
        """The records of ``train``, ``valid`` and ``test`` as runs use them."""
        if self._splits is None:
            p = self.params
            if p["split_dir"]:
                splits = self.listed_splits(find_split_files(p["split_dir"]))
            else:
                self.require_layout()
                splits = self.official_splits()
            if "valid" not in splits:
                train, valid = stratified_holdout(splits["train"], p["valid_fraction"], p["split_seed"])
                splits = {"train": train, "valid": valid, "test": splits["test"]}
            if p["valid_per_class"]:
                splits = {**splits, "valid": limit_per_class(splits["valid"], p["valid_per_class"], p["split_seed"])}
            if p["train_on_valid"]:
                splits = {**splits, "train": list(splits["valid"])}
            if p["max_per_class"]:
                splits = {k: limit_per_class(v, p["max_per_class"], p["split_seed"]) for k, v in splits.items()}
            self._splits = {k: splits[k] for k in SPLITS}
        return self._splits

    def records(self, name: str) -> list[Record]:
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}: expected one of {', '.join(SPLITS)}")
        return self.splits()[name]

    def listed_splits(self, files: dict[str, Path]) -> dict[str, list[Record]]:
        """Records from reference split files, paths resolved against the data root."""
        index = {c: i for i, c in enumerate(self.classes)}
        out = {}
        for split, path in files.items():
            records = []
            for image, mask, label, line in read_split_csv(path):
                where = f"{path}, line {line}"
                records.append(
                    Record(
                        image=str(self.listed_path(image, where)),
                        mask=str(self.listed_path(mask, where)),
                        label=self._label_index(label, index, where),
                        id=self.listed_id(image),
                    )
                )
            out[split] = records
        return out

    def listed_path(self, relative: str, where: str | Path = "") -> Path:
        """A path from a split file: ``root/relative`` or the first existing alternative."""
        root = self.root_dir
        primary = safe_path(root, relative, where)
        if primary.exists():
            return primary
        for other in self.listed_candidates(relative):
            candidate = safe_path(root, other, where)
            if candidate.exists():
                return candidate
        return primary

    def _label_index(self, label: str, index: dict[str, int], where: str) -> int:
        """A class name, or a 0-based class index (the reference encoding of numbered classes)."""
        if label in index:
            return index[label]
        if label.isdigit() and int(label) < len(index):
            return int(label)
        shown = ", ".join(list(index)[:5]) + (" ..." if len(index) > 5 else "")
        raise DataError(f"{where}: unknown label {label!r} for {self.title} (classes: {shown})")

    def split_labels(self, name: str) -> list[int]:
        return [r.label for r in self.records(name)]

    def fingerprint(self) -> dict[str, Any]:
        """Every split's records with the sizes of their files: ``[id, label, image, bytes, mask, bytes]``.

        Paths are relative to the data root, so two identical copies agree and
        a copy with other, added, missing or resized files does not. Sizes
        rather than contents: hashing every image at each run start would cost
        minutes on CUB; a file edited in place to the same size goes unnoticed.
        """
        splits = {
            name: [[r.id, r.label, self._relative(r.image), _size(r.image), self._relative(r.mask), _size(r.mask)]
                   for r in self.records(name)]
            for name in SPLITS
        }
        return {"basis": "files", "splits": splits}

    def _relative(self, path: str | None) -> str | None:
        if path is None or self.root_path is None:
            return path
        p = Path(path)
        return p.relative_to(self.root_path).as_posix() if p.is_relative_to(self.root_path) else p.as_posix()

    # -- items ---------------------------------------------------------------------------
    def transform(self, train: bool) -> Any:
        p = self.params
        mean, std = NORMALIZATIONS[p["normalize"]]
        if not train:
            return eval_transform(resize_short=p["resize_short"] or None, min_short=p["min_short"] or None,
                                  mean=mean, std=std)
        return train_transform(
            crop_size=p["crop_size"] or None,
            resize_short=p["resize_short"] or None,
            min_short=p["min_short"] or None,
            reflect_pad=p["reflect_pad"],
            hflip=p["hflip"],
            vflip=p["vflip"],
            jitter=list(p["jitter"]) or None,
            mean=mean,
            std=std,
        )

    def evaluation_transform(self) -> Any:
        """The evaluation preprocessing, from the parameters alone (no file is read)."""
        return self.transform(train=False)

    def split(self, name: str, train: bool | None = None) -> torch.utils.data.Dataset:
        records = self.records(name)
        train = name == "train" if train is None else train
        load = partial(_load_indexed, records, self.load_record)
        cache = 0 < len(records) <= self.params["cache_images"]
        return SampleDataset(len(records), load, self.transform(train), ids=[r.id for r in records], cache=cache)

    # -- checks --------------------------------------------------------------------------
    def load_record(self, record: Record) -> Loaded:
        """Decode one record: ``(image, mask, label)``, with its annotations when it has boxes or an ignore file."""
        image = read_image(record.image)
        height, width = image.shape[-2:]
        if record.mask is None:
            foreground = boxes_mask(record.boxes or (), height, width)
        else:
            foreground = np.zeros((height, width), dtype=bool)
            for path in (record.mask, *record.masks):
                instance = self.read_mask_sized(path, (height, width))
                check_sizes(image, torch.from_numpy(np.asarray(instance)), path)
                foreground |= instance
        mask = torch.from_numpy(foreground.astype(np.uint8))[None]
        annotations: dict[str, torch.Tensor] = {}
        if record.boxes is not None:
            annotations["boxes"] = torch.tensor(record.boxes, dtype=torch.int64).reshape(-1, 4)
        if record.ignore:
            region = self.read_mask_sized(record.ignore, (height, width)) & ~foreground.astype(bool)
            annotations["ignore"] = torch.from_numpy(np.ascontiguousarray(region))[None]
        if not annotations:
            return image, mask, record.label
        check_annotations(mask, annotations, record.image)
        return image, mask, record.label, annotations

    def read_mask_sized(self, path: str, size: tuple[int, int]) -> np.ndarray:
        """:meth:`read_mask`; datasets whose masks may have another size than the image resize them here."""
        return self.read_mask(path)

    # -- checks --------------------------------------------------------------------------
    def check_record(self, record: Record) -> list[str]:
        """What is wrong with one record's files (empty when all open and their sizes agree)."""
        problems = []
        image = None
        try:
            image = read_image(record.image)
        except DataError as exc:
            problems.append(str(exc))
        size = None if image is None else tuple(image.shape[-2:])
        for path in ([record.mask] if record.mask else []) + list(record.masks):
            try:
                mask = self.read_mask_sized(path, size or (0, 0))
            except DataError as exc:
                problems.append(str(exc))
                continue
            if size is not None and mask.shape != size:
                problems.append(f"mask size {mask.shape} differs from image size {size}: {path}")
        if record.ignore:
            try:
                self.read_mask_sized(record.ignore, size or (0, 0))
            except DataError as exc:
                problems.append(str(exc).replace("mask", "ignore file", 1))
        if record.boxes is not None and size is not None:
            try:
                check_annotations(torch.zeros(size), {"boxes": torch.tensor(record.boxes).reshape(-1, 4)}, record.image)
            except DataError as exc:
                problems.append(str(exc))
        return problems


def boxes_mask(boxes: Iterable[Sequence[int]], height: int, width: int) -> np.ndarray:
    """The filled union of inclusive pixel boxes, a boolean ``height x width`` array."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def _load_indexed(records: Sequence[Record], load: Callable[[Record], Loaded], index: int) -> Loaded:
    return load(records[index])


# -- verification ------------------------------------------------------------------------
@dataclass
class Verification:
    """What ``wsolbench data verify`` found."""

    classes: list[str]
    #: the official partition (or the split files' one) as ``{split: {class: count}}``
    counts: dict[str, Counter] = field(default_factory=dict)
    #: the splits runs use, ``{split: size}``
    run_sizes: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())


def verify(
    dataset: FileDataset,
    on_record: Callable[[], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> Verification:
    """Check the layout, then that every listed image and mask opens and that their sizes agree.

    ``on_total(n)`` is called once with the number of records to check and
    ``on_record()`` after each; checks run in ``workers`` threads (image
    decoding releases the interpreter lock).
    """
    from concurrent.futures import ThreadPoolExecutor

    try:
        if not dataset.params["split_dir"]:
            dataset.require_layout()
        classes = dataset.classes
        official = (
            dataset.listed_splits(find_split_files(dataset.params["split_dir"]))
            if dataset.params["split_dir"]
            else dataset.official_splits()
        )
        runs = dataset.splits()
    except DataError as exc:
        return Verification(classes=[], problems=[str(exc)])
    report = Verification(classes=classes)
    for split in SPLITS:
        if split in official:
            report.counts[split] = Counter(classes[r.label] for r in official[split])
    report.run_sizes = {k: len(v) for k, v in runs.items()}
    seen: dict[str, str] = {}
    for split, records in official.items():
        for rec in records:
            if rec.image in seen and seen[rec.image] != split:
                report.problems.append(f"{rec.image} is in both {seen[rec.image]} and {split}")
            seen.setdefault(rec.image, split)
    records = [r for split in official.values() for r in split]
    if on_total is not None:
        on_total(len(records))
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for problems in pool.map(dataset.check_record, records):
            report.problems.extend(problems)
            report.checked += 1
            if on_record is not None:
                on_record()
    return report
