"""Tiny dataset trees in the official formats, written by the tests.

Every image is a few dozen pixels; its mask is a known region so tests can
check that loaders read masks by each dataset's rule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

BLUE = (0, 0, 254)


def region(h: int, w: int, k: int) -> np.ndarray:
    """A deterministic boolean region (a rectangle that depends on ``k``), never empty or full."""
    mask = np.zeros((h, w), dtype=bool)
    top, left = 2 + k % 5, 3 + (2 * k) % 7
    mask[top : top + h // 2, left : left + w // 2] = True
    return mask


def noise_image(h: int, w: int, k: int) -> np.ndarray:
    return np.random.default_rng(k).integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- GlaS --------------------------------------------------------------------------------
GLAS_TRAIN = {f"train_{i}": ("benign" if i % 2 else "malignant") for i in range(1, 11)}  # 5 / 5
GLAS_TEST = {"testA_1": "benign", "testA_2": "malignant", "testB_1": "malignant", "testB_2": "benign"}


def glas_anno(h: int, w: int, k: int) -> np.ndarray:
    """Instance-labelled annotation: two glands with ids 1 and 2 (as in the official BMPs)."""
    anno = np.zeros((h, w), dtype=np.uint8)
    anno[region(h, w, k)] = 1
    anno[h - 4 :, : w // 3] = 2
    return anno


def make_glas(root: Path, size: tuple[int, int] = (24, 36), png: tuple[str, ...] = ("train_2", "testB_1")) -> Path:
    """GlaS: ``train_N``/``testA_N``/``testB_N`` BMPs (some PNGs), instance ``_anno`` masks, quirky ``Grade.csv``."""
    root.mkdir(parents=True, exist_ok=True)
    h, w = size
    rows = ["name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)"]
    for k, (name, grade) in enumerate({**GLAS_TRAIN, **GLAS_TEST}.items()):
        ext = ".png" if name in png else ".bmp"
        Image.fromarray(noise_image(h, w, k)).save(root / f"{name}{ext}")
        Image.fromarray(glas_anno(h, w, k), mode="L").save(root / f"{name}_anno{ext}")
        rows.append(f"{name},{k % 4 + 1}, {grade}, {'healthy' if grade == 'benign' else 'moderately differentiated'}")
    (root / "Grade.csv").write_text("\n".join(rows) + "\n")
    return root


# -- CUB ---------------------------------------------------------------------------------
CUB_CLASSES = [
    "001.Black_footed_Albatross",
    "019.Gray_Catbird",
    "099.Ovenbird",
    "108.White_necked_Raven",
    "150.Sage_Thrasher",
    "171.Myrtle_Warbler",
    "178.Swainson_Warbler",
]


def cub_soft_mask(h: int, w: int, k: int) -> np.ndarray:
    """A grey-level segmentation: 255 on the region, 128 on one row below it (> 127.5), 127 on another."""
    seg = np.where(region(h, w, k), 255, 0).astype(np.uint8)
    seg[h - 2, :] = 128
    seg[h - 1, :] = 127
    return seg


def cub_box_row(h: int, w: int, k: int) -> str:
    """The ``bounding_boxes.txt`` values of image ``k``: the box of ``region``, as floats with fractions."""
    top, left = 2 + k % 5, 3 + (2 * k) % 7
    return f"{left}.0 {top}.0 {w // 2 - 0.5} {h // 2 - 0.25}"


def make_cub(root: Path, per_class: tuple[int, int] = (5, 2), size: tuple[int, int] = (20, 30)) -> Path:
    """CUB-200-2011: metadata files, ``images/<class>/<name>.jpg``, ``segmentations/<class>/<name>.png``.

    ``bounding_boxes.txt`` gives each image the box of its ``region``.
    """
    meta = root / "CUB_200_2011"
    (meta / "images").mkdir(parents=True, exist_ok=True)
    h, w = size
    images, labels, split, boxes = [], [], [], []
    n = 0
    for c, cls in enumerate(CUB_CLASSES, start=1):
        for j in range(sum(per_class)):
            n += 1
            rel = f"{cls}/{cls.split('.', 1)[1]}_{j:04d}_{n}.jpg"
            (meta / "images" / cls).mkdir(exist_ok=True)
            (root / "segmentations" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(noise_image(h, w, n)).save(meta / "images" / rel, quality=95)
            Image.fromarray(cub_soft_mask(h, w, n), mode="L").save(root / "segmentations" / rel.replace(".jpg", ".png"))
            images.append(f"{n} {rel}")
            labels.append(f"{n} {c}")
            split.append(f"{n} {1 if j < per_class[0] else 0}")
            boxes.append(f"{n} {cub_box_row(h, w, n)}")
    (meta / "classes.txt").write_text("".join(f"{c} {name}\n" for c, name in enumerate(CUB_CLASSES, start=1)))
    (meta / "images.txt").write_text("\n".join(images) + "\n")
    (meta / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (meta / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (meta / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    return root


# -- Oxford Flowers 102 --------------------------------------------------------------------
def make_oxf(root: Path, n: int = 24, size: tuple[int, int] = (28, 36)) -> Path:
    """Oxford Flowers: ``jpg/``, blue-background ``segmim/`` JPEGs, ``imagelabels.mat``, ``setid.mat``.

    Images 1..n get labels 1..3 in turn (1-based, like the official file); the
    split files list a third of them each, out of order.
    """
    from scipy.io import savemat

    (root / "jpg").mkdir(parents=True, exist_ok=True)
    (root / "segmim").mkdir(exist_ok=True)
    h, w = size
    for k in range(1, n + 1):
        Image.fromarray(noise_image(h, w, k)).save(root / "jpg" / f"image_{k:05d}.jpg", quality=95)
        seg = np.empty((h, w, 3), dtype=np.uint8)
        seg[:] = BLUE
        seg[region(h, w, k)] = (230, 40, 120)  # the flower
        Image.fromarray(seg).save(root / "segmim" / f"segmim_{k:05d}.jpg", quality=90)
    labels = np.array([[(k - 1) % 3 + 1 for k in range(1, n + 1)]], dtype=np.uint8)
    ids = np.arange(1, n + 1)
    savemat(root / "imagelabels.mat", {"labels": labels})
    savemat(
        root / "setid.mat",
        {
            "trnid": ids[ids % 3 == 1][::-1][None].astype(np.uint16),
            "valid": ids[ids % 3 == 2][None].astype(np.uint16),
            "tstid": ids[ids % 3 == 0][None].astype(np.uint16),
        },
    )
    return root


def expected_oxf_mask(k: int, size: tuple[int, int] = (28, 36)) -> np.ndarray:
    return region(*size, k)


# -- folder --------------------------------------------------------------------------------
def make_folder(root: Path, classes=("cat", "dog"), per_class: int = 5, splits: bool = False,
                size: tuple[int, int] = (20, 24)) -> Path:
    """``images/<class>/x.jpg`` and ``masks/<class>/x.png`` (0/1 masks for ``cat``, 0/255 for ``dog``)."""
    h, w = size
    k = 0
    for c, cls in enumerate(classes):
        for j in range(per_class):
            k += 1
            sub = (("train" if j < per_class - 2 else "test"),) if splits else ()
            img_dir = root.joinpath("images", *sub, cls)
            mask_dir = root.joinpath("masks", *sub, cls)
            img_dir.mkdir(parents=True, exist_ok=True)
            mask_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(noise_image(h, w, k)).save(img_dir / f"img{j}.jpg", quality=95)
            scale = 1 if c == 0 else 255
            Image.fromarray((region(h, w, k) * scale).astype(np.uint8), mode="L").save(mask_dir / f"img{j}.png")
    return root


# -- wsolevaluation's metadata layout --------------------------------------------------------------
def _write_rows(path: Path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{row}\n" for row in rows))


def _wsol_image_paths(name: str, split: str, label: int, j: int) -> str:
    """Image paths the way each dataset's metadata names them."""
    if name == "CUB":
        return f"{label + 1:03d}.Bird_{label}/Bird_{label}_{split}_{j}.jpg"
    if name == "ILSVRC":
        if split == "train":
            return f"train/n0000000{label}/n0000000{label}_{j}.JPEG"
        if split == "val":
            return f"val2/{label}/{j}.jpeg"
        return f"val/ILSVRC2012_val_{label:04d}{j:04d}.JPEG"
    return f"{split}/0cls{label}/{label:02d}{j:02d}abcdef.jpg"


def make_wsoleval(root: Path, name: str, classes: int = 3, per_class: int = 3) -> Path:
    """``metadata/<name>/train|val|test`` and the images (and OpenImages' masks) below ``root/<name>``.

    Image ``k`` is ``(18 + k % 5) x (24 + k % 7)``. CUB and ILSVRC: box
    ``region``'s rectangle, and a second box on every third image of val/test
    (ILSVRC's train split has no localization, as the real one). OpenImages:
    one or two instance masks per val/test image (the second at half
    resolution on every second image) and an ignore file on the first line.
    """
    images = root / name
    k = 0
    for split in ("train", "val", "test"):
        ids, labels, sizes, localization = [], [], [], []
        for label in range(classes):
            for j in range(per_class):
                k += 1
                h, w = 18 + k % 5, 24 + k % 7
                rel = _wsol_image_paths(name, split, label, j)
                (images / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(noise_image(h, w, k)).save(images / rel, format="JPEG", quality=95)
                ids.append(rel)
                labels.append(f"{rel},{label}")
                if name != "OpenImages" and not (name == "ILSVRC" and split == "train"):
                    sizes.append(f"{rel},{w},{h}")
                labelled = split != "train" or name == "CUB"
                if not labelled:
                    continue
                top, left = 2 + k % 5, 3 + (2 * k) % 7
                if name != "OpenImages":
                    localization.append(f"{rel},{left},{top},{left + w // 2 - 1},{top + h // 2 - 1}")
                    if k % 3 == 0:
                        localization.append(f"{rel},0,{h - 3},{w // 3},{h - 1}")
                    continue
                stem = rel[: -len(".jpg")]
                first = np.zeros((h, w), np.uint8)
                first[region(h, w, k)] = 255
                Image.fromarray(first, mode="L").save(images / f"{stem}_m0cls{label}_a1.png")
                ignore = np.zeros((h, w), np.uint8)
                ignore[:, : w // 2] = 255  # a box overlapping the object: only its part outside the object counts
                Image.fromarray(ignore, mode="L").save(images / f"{stem}_ignore.png")
                localization.append(f"{rel},{stem}_m0cls{label}_a1.png,{stem}_ignore.png")
                if k % 2 == 0:
                    second = np.zeros((h // 2 * 2, w // 2 * 2), np.uint8)
                    second[-4:, -6:] = 1
                    Image.fromarray(second[::2, ::2] * 255, mode="L").save(images / f"{stem}_m0cls{label}_b2.png")
                    localization.append(f"{rel},{stem}_m0cls{label}_b2.png,")
        folder = root / "metadata" / name / split
        _write_rows(folder / "image_ids.txt", ids)
        _write_rows(folder / "class_labels.txt", labels)
        _write_rows(folder / "image_sizes.txt", sizes)
        _write_rows(folder / "localization.txt", localization)
    return root
