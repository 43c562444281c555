"""A trained model on new images: ``wsolbench.load``, ``Model.predict``, ``export`` and ``wsolbench predict``.

:func:`load` accepts a run directory (its ``best.pt`` and ``config.json``) or
a ``.wsol`` file (:mod:`wsolbench.runs.modelfile`) and returns a
:class:`Model`: the run's method with its weights, in evaluation mode, and
nothing a training needs (no optimizer, no dataset files). Images go through
the run's own evaluation preprocessing
(:meth:`wsolbench.interfaces.Dataset.evaluation_transform`) and maps are
computed as the engine computes them when it scores a split
(:func:`wsolbench.training.engine.evaluate`): a batch is reflect-padded to a
multiple of ``eval.pad_multiple``, the method's ``infer`` runs (channels-last
and autocast as the run used them), each map is cropped back to its image and
resized bilinearly to the image's own size. The same images in the same
batches give the maps ``wsolbench evaluate-run`` scores, bit for bit.

The box of a map is the bounding box ``(x0, y0, x1, y1)`` (inclusive pixel
coordinates) of the largest 8-connected region of pixels at or above the
threshold, the largest by pixel count; ``None`` when no pixel reaches it.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torch import Tensor

from wsolbench import RUN_SCHEMA_VERSION, __version__
from wsolbench.assembly import build_method, provenance
from wsolbench.config import RunConfig
from wsolbench.data.samples import pad_batch, read_image, transformed
from wsolbench.errors import DataError, UnknownNameError, UserError
from wsolbench.interfaces import Dataset, Method
from wsolbench.plugin_host import get_host, registry
from wsolbench.runs import rundir
from wsolbench.runs.modelfile import read_model_file, write_model_file
from wsolbench.runs.rundir import RunDir
from wsolbench.scoring.plots import prediction_overlay
from wsolbench.training.checkpoints import load_model_state
from wsolbench.training.distributed import select_device
from wsolbench.training.engine import Listener, Precision, fit_maps, tell
from wsolbench.utils import atomic_write_bytes

#: the extensions of the files taken from a folder (any file named on the command line is tried)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
#: the classes listed per image in ``predictions.csv``
TOP = 5

#: what ``load`` accepts as an image: a path, a PIL image, an (H, W[, 3 or 4]) uint8 array, a (3, H, W) uint8 tensor
ImageLike = Any


@dataclass
class Prediction:
    """What :meth:`Model.predict` returns for ``N`` images."""

    logits: Tensor  #: ``(N, K)`` class scores, on the CPU
    maps: list[np.ndarray]  #: ``N`` float32 maps in [0, 1], each at its image's own size ``(H, W)``
    boxes: list[tuple[int, int, int, int] | None]  #: ``(x0, y0, x1, y1)`` at ``threshold`` (None: empty)
    map_classes: list[int]  #: the class each map localizes (the predicted one unless one was asked for)
    threshold: float

    @property
    def probabilities(self) -> Tensor:
        """``(N, K)`` softmax of the logits."""
        return F.softmax(self.logits.float(), dim=1)

    @property
    def classes(self) -> list[int]:
        """The predicted class of each image (argmax of the logits)."""
        return self.logits.argmax(dim=1).tolist()


@dataclass
class Model:
    """A trained method ready to predict; see :func:`load`."""

    method: Method  #: the plug-in's model, in evaluation mode
    config: RunConfig  #: the run's configuration
    classes: list[str]  #: class ``k`` is ``classes[k]``
    transform: Callable[..., Any] | None  #: the dataset's evaluation preprocessing
    device: torch.device
    source: Path  #: the run directory or ``.wsol`` file it came from
    meta: dict[str, Any] = field(default_factory=dict)  #: provenance (epoch, checkpoint, plug-ins, versions)

    @property
    def threshold(self) -> float:
        """The run's threshold (``eval.threshold``), used for boxes unless another is given."""
        return self.config.eval.threshold

    def class_index(self, name: str | int) -> int:
        """The index of class ``name`` (a class name, or an index given as a number or a string of digits)."""
        if isinstance(name, str) and name in self.classes:
            return self.classes.index(name)
        if isinstance(name, int) or (isinstance(name, str) and name.isdigit()):
            if 0 <= int(name) < len(self.classes):
                return int(name)
        raise UnknownNameError("class", str(name), self.classes)

    def predict(
        self,
        images: ImageLike | Sequence[ImageLike],
        class_index: int | str | Sequence[int] | None = None,
        threshold: float | None = None,
        batch_size: int | None = None,
    ) -> Prediction:
        """Class scores, maps and boxes of ``images`` (one image or a sequence of them).

        ``class_index``: draw the map of this class (an index or a class name,
        or one index per image) instead of each image's predicted class.
        ``threshold``: the boxes' threshold (default: :attr:`threshold`).
        ``batch_size``: images per forward pass (default: the run's
        ``eval.batch_size``); as in evaluation, the images of a batch are padded
        to a common size, so a map depends slightly on its batch's largest image.
        """
        items = [decode(x) for x in (images if _is_sequence(images) else [images])]
        threshold = self.threshold if threshold is None else float(threshold)
        wanted = self._wanted_classes(class_index, len(items))
        step = batch_size or self.config.eval.batch_size
        logits, maps, used = [], [], []
        for start in range(0, len(items), step):
            chunk = items[start:start + step]
            batch_logits, batch_maps = self._forward(chunk, None if wanted is None else wanted[start:start + step])
            logits.append(batch_logits)
            maps.extend(batch_maps)
            used.extend((wanted[start:start + step] if wanted is not None else batch_logits.argmax(1).tolist()))
        all_logits = torch.cat(logits) if logits else torch.empty(0, len(self.classes))
        return Prediction(all_logits, maps, [region_box(m, threshold) for m in maps], used, threshold)

    def _wanted_classes(self, class_index: Any, n: int) -> list[int] | None:
        if class_index is None:
            return None
        if isinstance(class_index, (int, str)):
            return [self.class_index(class_index)] * n
        wanted = [self.class_index(int(c)) for c in class_index]
        if len(wanted) != n:
            raise UserError(f"class_index gives {len(wanted)} classes for {n} images")
        return wanted

    def _forward(self, images: list[Tensor], classes: list[int] | None) -> tuple[Tensor, list[np.ndarray]]:
        """One batch as :func:`wsolbench.training.engine.evaluate` runs it; maps at the images' own sizes."""
        cfg, method = self.config, self.method
        inputs = [transformed(self.transform, img, torch.zeros(1, *img.shape[-2:], dtype=torch.uint8))[0]
                  for img in images]
        batch, sizes = pad_batch(inputs, cfg.eval.pad_multiple)
        batch = batch.to(self.device)
        if cfg.train.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        precision = Precision.choose(self.device, cfg.train.amp)
        with torch.set_grad_enabled(method.needs_grad_at_inference), precision.autocast():
            logits, maps = method.infer(batch)
            if classes is not None:
                maps = method.localize_class(batch, torch.tensor(classes, device=self.device))
        maps = maps.detach().float()
        if not bool(torch.isfinite(maps).all()):
            raise UserError(f"method {cfg.method!r} produced NaN or infinite maps")
        out = [fit_maps(maps[j:j + 1], hw, tuple(image.shape[-2:]))[0].cpu().numpy()
               for j, (hw, image) in enumerate(zip(sizes, images))]
        return logits.detach().float().cpu(), out


# -- loading -------------------------------------------------------------------------
def load(path: str | os.PathLike, device: str = "auto", data_root: str | None = None) -> Model:
    """The trained model in ``path``: a run directory (its ``best.pt``) or a ``.wsol`` file.

    ``device``: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
    ``data_root``: where a run's dataset is, for datasets whose class names
    are read from their files (CUB, ``folder``), when the run's manifest does
    not record them (runs made before it did); a ``.wsol`` file carries them.
    The method, pooling and dataset plug-ins that made the model must be
    installed. Loading never unpickles anything (``best.pt`` is read with
    ``weights_only=True``) and never fetches pretrained weights.
    """
    source = Path(path)
    if source.is_dir():
        run = RunDir(source, read_only=True)
        cfg = run.read_config()
        checkpoint = run.load_checkpoint(rundir.BEST)
        meta = {"checkpoint": rundir.BEST, "epoch": checkpoint.get("epoch"), "trained_with": _versions(run)}
        dataset = _dataset(cfg, data_root or cfg.data_root, meta)
        classes = _classes(dataset, run, cfg)
    elif source.is_file():
        mf = read_model_file(source)
        cfg, classes = mf.config, mf.classes
        meta = {k: v for k, v in mf.meta.items() if k not in ("config", "classes")}
        checkpoint = {"schema_version": RUN_SCHEMA_VERSION, "method": cfg.method, "model": mf.state}
        dataset = _dataset(cfg, None, meta)
    else:
        raise UserError(f"{source} is neither a run directory nor a .wsol model file")
    dev = select_device(device)
    cfg.device = device
    try:
        transform = dataset.evaluation_transform()
    except NotImplementedError as exc:
        raise UserError(f"dataset plug-in {cfg.dataset!r} cannot preprocess new images: {exc}") from exc
    method = _method(cfg, len(classes), meta)
    load_model_state(method, checkpoint, cfg)
    method = method.to(dev).eval()
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    return Model(method, cfg, classes, transform, dev, source, meta)


def _versions(run: RunDir) -> dict[str, Any]:
    """The versions of wsolbench, torch, timm and the plug-ins that trained the run (its manifest)."""
    try:
        return run.read_manifest().get("versions", {})
    except rundir.RunDirError:
        return {}


def _classes(dataset: Dataset, run: RunDir, cfg: RunConfig) -> list[str]:
    """The run's class names: its manifest's (runs record them), else its dataset's (older runs)."""
    try:
        recorded = run.read_manifest().get("classes")
    except rundir.RunDirError:
        recorded = None
    if isinstance(recorded, list) and all(isinstance(c, str) for c in recorded):
        return recorded
    try:
        return list(dataset.classes)
    except DataError as exc:
        raise UserError(
            f"the class names of run {run.path} come from the files of its dataset {cfg.dataset!r}, which cannot be "
            f"read ({exc}). Give the dataset's folder (--data-root PATH, or data_root= in Python), or use a .wsol "
            f"file exported where the data is: it carries the class names."
        ) from exc


def _dataset(cfg: RunConfig, root: str | None, meta: dict[str, Any]) -> Dataset:
    """The run's dataset plug-in with its settings; its files are not needed for its preprocessing."""
    try:
        return registry("dataset").create(cfg.dataset, root=root, seed=cfg.seed, **cfg.dataset_params)
    except UnknownNameError as exc:
        raise UserError(_missing_plugin(exc, meta)) from exc


def _method(cfg: RunConfig, num_classes: int, meta: dict[str, Any]) -> Method:
    """The run's method, without fetching pretrained weights (the checkpoint replaces them)."""
    cfg = RunConfig.from_dict(cfg.to_dict())
    cfg.model.pretrained = False
    try:
        return build_method(cfg, num_classes)
    except UnknownNameError as exc:
        raise UserError(_missing_plugin(exc, meta)) from exc


def _missing_plugin(exc: UnknownNameError, meta: dict[str, Any]) -> str:
    made = meta.get("provided_by", {}).get(exc.kind, {})
    where = (f" The model was made with the {exc.kind} of {made['distribution']} {made.get('version', '')}; "
             f"install that distribution." if made.get("distribution") else "")
    return f"this model needs the {exc.kind} plug-in {exc.name!r}, which is not installed. {exc}{where}"


# -- export ----------------------------------------------------------------------------
def export(run_dir: str | os.PathLike, output: str | os.PathLike, data_root: str | None = None) -> Path:
    """Write the run in ``run_dir`` (its ``best.pt``) to the ``.wsol`` file ``output``; returns its path.

    The file holds the weights, the configuration, the class names and the
    plug-ins and versions that made it (:mod:`wsolbench.runs.modelfile`).
    """
    target = Path(output)
    if target.exists():
        raise UserError(f"{target} already exists; choose another file name")
    model = load(run_dir, device="cpu", data_root=data_root)
    cfg = model.config
    try:
        provided_by = RunDir(run_dir, read_only=True).read_results().get("provided_by") or provenance(cfg)
    except rundir.RunDirError:
        provided_by = provenance(cfg)
    meta = {
        "config": RunConfig.from_dict({**cfg.to_dict(), "device": "auto", "data_root": None}).to_dict(),
        "classes": model.classes,
        "method_label": cfg.label or cfg.method,
        "checkpoint": model.meta.get("checkpoint"),
        "epoch": model.meta.get("epoch"),
        "provided_by": provided_by,
        "trained_with": model.meta.get("trained_with", {}),
        "exported_with": {"wsolbench": __version__, "torch": torch.__version__,
                          "plugins": get_host().loaded_versions()},
    }
    return write_model_file(target, meta, model.method.state_dict())


# -- images ------------------------------------------------------------------------------
def decode(image: ImageLike) -> Tensor:
    """A ``(3, H, W)`` uint8 RGB tensor from a path, a PIL image, an array or a tensor.

    Greyscale images are repeated over the three channels; the alpha channel of
    RGBA images is dropped (Pillow's ``convert("RGB")``). An unreadable or
    truncated file raises :class:`wsolbench.errors.DataError` naming it.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3, 4) or image.dtype != torch.uint8:
            raise UserError(f"an image tensor must be (3, H, W) uint8, not {tuple(image.shape)} {image.dtype}")
        return image[:3].expand(3, -1, -1).contiguous()
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise UserError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4) uint8, not {array.shape} {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return torch.from_numpy(array[..., :3].copy()).permute(2, 0, 1).contiguous()  # a copy: arrays may be read-only


def _is_sequence(images: Any) -> bool:
    return isinstance(images, (list, tuple))


def region_box(heat: np.ndarray, threshold: float) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)``, inclusive, of the largest 8-connected region where ``heat >= threshold``.

    The largest by pixel count (ties: the first in row-major order); ``None``
    when no pixel reaches the threshold.
    """
    labels, count = ndimage.label(heat >= threshold, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    rows, cols = ndimage.find_objects(labels)[int(np.argmax(sizes))]
    return cols.start, rows.start, cols.stop - 1, rows.stop - 1


def collect_images(inputs: Iterable[str | os.PathLike]) -> list[tuple[str, Path]]:
    """``(id, path)`` of the images named by ``inputs`` (files, and folders searched recursively).

    A file's id is its name without extension; an image in a folder has its
    path below that folder without extension (``a/b`` for ``FOLDER/a/b.png``),
    so ids match a dataset's ids and ``<id>.npy`` mirrors the folder. Files in
    folders are taken when their extension is one of :data:`IMAGE_EXTENSIONS`.
    """
    found: list[tuple[str, Path]] = []
    for given in map(Path, inputs):
        if given.is_dir():
            files = sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise UserError(f"{given} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            found += [(p.relative_to(given).with_suffix("").as_posix(), p) for p in files]
        elif given.is_file():
            found.append((given.stem, given))
        else:
            raise UserError(f"{given} is neither an image file nor a folder")
    seen: dict[str, Path] = {}
    for image_id, path in found:
        if image_id in seen:
            raise UserError(f"two images would share the id {image_id!r}: {seen[image_id]} and {path}; rename one "
                            f"or predict them separately")
        seen[image_id] = path
    return found


# -- the command's files -------------------------------------------------------------------
MAPS = "maps"
OVERLAYS = "overlays"
PREDICTIONS = "predictions.csv"


def predict_files(
    model: Model,
    images: Sequence[tuple[str, Path]],
    output: str | os.PathLike,
    class_index: int | None = None,
    threshold: float | None = None,
    batch_size: int | None = None,
    listener: Listener | None = None,
) -> list[tuple[Path, str]]:
    """Predict ``images`` (from :func:`collect_images`) and write ``output``'s files; returns the failures.

    ``output/maps/<id>.npy`` (the map at the image's size, the ``evaluate
    --scoremaps`` contract), ``output/overlays/<id>.png`` and
    ``output/predictions.csv``. A file that cannot be decoded is skipped and
    returned with its reason, ``(path, reason)``; every other image is
    predicted. ``listener`` hears ``phase_started`` (phase ``predict``) and a
    ``step`` per batch.
    """
    out = Path(output)
    _check_output(out, model.source)
    step = batch_size or model.config.eval.batch_size
    rows: list[dict[str, Any]] = []
    failures: list[tuple[Path, str]] = []
    tell(listener, "phase_started", phase="predict", total=-(-len(images) // step))
    for start in range(0, len(images), step):
        decoded = []
        for image_id, path in images[start:start + step]:
            try:
                decoded.append((image_id, decode(path)))
            except DataError as exc:
                failures.append((path, str(exc)))
        if decoded:
            result = model.predict([img for _, img in decoded], class_index, threshold, batch_size=len(decoded))
            rows += _write_batch(model, out, decoded, result)
        tell(listener, "step")
    _write_csv(out / PREDICTIONS, rows)
    return failures


def _check_output(out: Path, source: Path) -> None:
    if source.is_dir() and (out.resolve() == source.resolve() or source.resolve() in out.resolve().parents):
        raise UserError(f"--output {out} is inside the run directory {source}, which predict never changes; "
                        f"choose a folder elsewhere")
    if (out / PREDICTIONS).exists():
        raise UserError(f"{out} already holds {PREDICTIONS}; choose another --output")
    try:
        (out / MAPS).mkdir(parents=True, exist_ok=True)
        (out / OVERLAYS).mkdir(exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder {out}: {exc.strerror or exc}") from exc


def _write_batch(model: Model, out: Path, decoded: list[tuple[str, Tensor]], result: Prediction) -> list[dict]:
    rows = []
    probs = result.probabilities
    top = min(TOP, len(model.classes))
    for j, (image_id, image) in enumerate(decoded):
        heat, box = result.maps[j], result.boxes[j]
        for folder in (MAPS, OVERLAYS):  # ids of images in subfolders keep their folders
            (out / folder / image_id).parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, heat)
        atomic_write_bytes(out / MAPS / f"{image_id}.npy", buf.getvalue())
        picture = prediction_overlay(image.permute(1, 2, 0).numpy(), heat, result.threshold, box)
        Image.fromarray(picture).save(out / OVERLAYS / f"{image_id}.png")
        p, order = probs[j].topk(top)
        pred = int(order[0])
        rows.append({
            "id": image_id, "pred": pred, "class": model.classes[pred], "probability": round(float(p[0]), 6),
            "top5": ";".join(model.classes[int(k)] for k in order),
            "top5_probability": ";".join(f"{float(v):.6f}" for v in p),
            "map_class": model.classes[result.map_classes[j]],
            "x0": box[0] if box else "", "y0": box[1] if box else "",
            "x1": box[2] if box else "", "y1": box[3] if box else "",
            "width": int(image.shape[-1]), "height": int(image.shape[-2]),
        })
    return rows


#: the columns of ``predictions.csv``
COLUMNS = ("id", "pred", "class", "probability", "top5", "top5_probability", "map_class", "x0", "y0", "x1", "y1",
           "width", "height")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
