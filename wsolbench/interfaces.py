"""The contracts every plug-in fulfils: :class:`Method`, :class:`Pooling`, :class:`Dataset`, :class:`Logger`.

Per-plug-in facts (does a method need pixel masks for training? gradients at
inference? which pooling by default? the line ``wsolbench list`` shows?) are
class attributes here, never tables kept elsewhere, and never repeated at
registration. ``wsolbench list`` reads ``summary`` from the plug-in module's
source without importing it when the class (or its base class in the same
module) assigns it a string literal (:func:`wsolbench.registry.literal_summary`);
otherwise it imports the module, which costs seconds with torch.

Batches are dictionaries:

``image``  float tensor ``(N, 3, H, W)``, normalised.
``label``  long tensor ``(N,)`` of class indices.
``mask``   float tensor ``(N, 1, H, W)`` in {0, 1}; present in training batches
           only for methods with ``needs_masks = True``.
``index``  long tensor ``(N,)``: the samples' positions in their split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


@dataclass
class ModelSpec:
    """What the run configuration says about the network (``[model]`` section)."""

    backbone: str = "resnet18"  #: a timm model name (any CNN with ``features_only``)
    pretrained: bool = False  #: ImageNet weights for the backbone
    pooling: str | None = None  #: ``None``: the method's ``default_pooling``
    pooling_params: dict[str, Any] = field(default_factory=dict)  #: the ``[pooling]`` section
    output_stride: int = 0  #: 0: the backbone's own; else passed to timm (dilated last stages)
    backbone_params: dict[str, Any] = field(default_factory=dict)  #: extra arguments of ``timm.create_model``


@dataclass
class StepOutput:
    """What a training step reports: the scalar loss and named values to log."""

    loss: Tensor  #: the scalar the optimizer minimises
    logs: dict[str, float | Tensor] = field(default_factory=dict)  #: averaged per epoch as ``train_<name>``
    logits: Tensor | None = None  #: class scores on the batch, for the training error


class Method(nn.Module):
    """A WSOL method: its model, its training loss, its class prediction and its maps.

    Subclasses set the class attributes and implement :meth:`training_loss`,
    :meth:`predict` and :meth:`localize` (or :meth:`infer` for both at once).
    They are built as ``Method(num_classes=K, model=ModelSpec(...), **params)``
    where ``params`` are :attr:`defaults` after overrides.
    """

    #: one line for ``wsolbench list``, read from the source: keep it a string literal
    summary: ClassVar[str] = ""
    #: training uses pixel masks (full supervision); only such methods receive them
    needs_masks: ClassVar[bool] = False
    #: :meth:`localize` needs autograd (e.g. Grad-CAM); evaluation enables it
    needs_grad_at_inference: ClassVar[bool] = False
    #: ``False`` for methods with nothing to train (they skip the training loop)
    trainable: ClassVar[bool] = True
    #: ``False`` for methods that make no class prediction (their ``cl_error`` is reported as null)
    classifies: ClassVar[bool] = True
    #: pooling used when the configuration names none (``None``: no pooling head)
    default_pooling: ClassVar[str | None] = None
    #: hyper-parameters and their defaults; the keys ``--set method.KEY=VALUE`` accepts
    defaults: ClassVar[dict[str, Any]] = {}
    #: configuration overrides per profile, keyed ``"paper"`` or ``"paper/<dataset>"``;
    #: values are nested dicts shaped like the TOML file (``{"train": {"lr": 0.01}}``)
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    #: settings a boolean parameter of :attr:`defaults` switches at once when it is true, keyed by the
    #: parameter's name (and ``"<name>/<profile>"`` for what applies with that profile only); shaped
    #: like :attr:`profiles`, they may reach any section: above every profile, below the user's settings
    switches: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, num_classes: int, model: ModelSpec | None = None, **params: Any):
        super().__init__()
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown parameters: {sorted(unknown)}")
        self.num_classes = num_classes
        self.model_spec = model or ModelSpec()
        self.params = {**self.defaults, **params}

    # -- identity --------------------------------------------------------------
    @classmethod
    def label(cls, name: str, params: dict[str, Any]) -> str:
        """The row name used in reports; variants of one method override this."""
        return name

    # -- training --------------------------------------------------------------
    def training_loss(self, batch: dict[str, Tensor]) -> StepOutput:
        """The loss of one batch."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, Tensor], backward: Callable[[Tensor], None]) -> StepOutput:
        """Compute the batch loss and call ``backward`` on it.

        The engine owns the optimizer step; methods that need several backward
        passes per batch (gradient accumulation) override this and call
        ``backward`` more than once.
        """
        out = self.training_loss(batch)
        backward(out.loss)
        return out

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the engine before each training epoch (``epoch`` counts from 0)."""

    def parameter_groups(self) -> list[dict[str, Any]] | None:
        """Optional optimizer parameter groups (``None``: all parameters, one group)."""
        return None

    # -- inference -------------------------------------------------------------
    def predict(self, images: Tensor) -> Tensor:
        """Class scores ``(N, K)``."""
        raise NotImplementedError

    def localize(self, images: Tensor, logits: Tensor | None = None) -> Tensor:
        """One map per image, ``(N, H, W)`` in [0, 1] at the input resolution.

        ``logits`` are this method's class scores for ``images`` when the caller
        already has them (methods that localize the predicted class reuse them:
        they localize the class the argmax of ``logits`` names).
        """
        raise NotImplementedError

    def localize_class(self, images: Tensor, classes: Tensor) -> Tensor:
        """The map of class ``classes[n]`` for image ``n``: ``(N, H, W)`` in [0, 1] (``classes``: ``(N,)`` long).

        What ``wsolbench predict --class`` and ``Model.predict(class_index=...)``
        draw. The default passes :meth:`localize` one-hot scores of those
        classes, which is right for a method that localizes the class its
        logits' argmax names (the CAM family, Grad-CAM) and for a method whose
        map does not depend on the class (its map is returned unchanged).
        A method whose map mixes the classes otherwise (min-max's ``M+``
        weighs every class map by its probability) overrides this.
        """
        scores = torch.nn.functional.one_hot(classes.long(), self.num_classes).to(images.device, torch.float32)
        return self.localize(images, scores)

    def infer(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits, maps)`` for evaluation; override to share one forward pass."""
        logits = self.predict(images)
        return logits, self.localize(images, logits)


class Pooling(nn.Module):
    """Turns maps into class scores.

    ``forward(x)`` returns ``(scores, class_maps)``: scores ``(N, K)`` and one
    map per class ``(N, K, h, w)`` (what localization reads).

    A pooling with ``consumes_features = False`` receives per-class maps made by
    a 1x1 convolution with ``num_classes * modalities`` output channels. One with
    ``consumes_features = True`` (attention MIL) receives the backbone's
    features, ``in_channels`` of them, and owns its parameters.
    """

    #: one line for ``wsolbench list``, read from the source: keep it a string literal
    summary: ClassVar[str] = ""
    #: ``True``: receives the backbone's features (``in_channels``) instead of per-class maps
    consumes_features: ClassVar[bool] = False
    #: hyper-parameters and their defaults; the keys ``--set pooling.KEY=VALUE`` accepts
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, num_classes: int, in_channels: int | None = None, **params: Any):
        super().__init__()
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown parameters: {sorted(unknown)}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.params = {**self.defaults, **params}

    @property
    def modalities(self) -> int:
        """Maps per class expected on input (1 unless the pooling says otherwise)."""
        return 1

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """``(scores, class_maps)`` from maps (or features) ``x`` of shape ``(N, C, h, w)``."""
        raise NotImplementedError


@dataclass
class SplitInfo:
    """Counts for one split (what ``data verify`` prints)."""

    name: str
    size: int
    per_class: dict[str, int]


class Dataset:
    """A dataset: class names, splits of ``(image, label, mask)``, default transforms.

    Built as ``Dataset(root=PATH_OR_NONE, seed=S, **params)``. :meth:`split`
    returns a :class:`torch.utils.data.Dataset` whose items are dictionaries
    ``{"image": (3,H,W) float, "label": int, "mask": (1,H',W') float, "index": int}``.
    Training items are random crops and flips of equal size; evaluation items
    are whole images (their masks at the original resolution, which can differ
    from the image's when the evaluation transform resizes it). Items may add
    ``"boxes"``, int64 ``(K, 4)`` ground-truth boxes ``(x0, y0, x1, y1)``,
    inclusive pixel coordinates in the mask's frame (without them, scoring
    takes one box per connected component of the mask), and ``"ignore"``, a
    bool tensor of the mask's shape whose pixels the pixel metrics leave out;
    ``wsolbench.data.samples.SampleDataset`` makes both follow the transforms.
    """

    #: one line for ``wsolbench list``, read from the source: keep it a string literal
    summary: ClassVar[str] = ""
    #: ``False`` for datasets that need no files (generated on the fly)
    needs_root: ClassVar[bool] = True
    #: where to obtain the data, shown when the root is missing
    homepage: ClassVar[str] = ""
    #: the expected layout below the root, shown when the root is wrong
    layout: ClassVar[str] = ""
    #: parameters and their defaults; the keys ``--set dataset.KEY=VALUE`` accepts
    defaults: ClassVar[dict[str, Any]] = {}
    #: configuration overrides per profile, keyed ``"quick"`` or ``"paper"`` (shaped like the TOML file)
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    #: the splits :meth:`split` serves
    split_names: ClassVar[tuple[str, ...]] = ("train", "valid", "test")
    #: dense-CRF parameters (keys of :class:`wsolbench.crf.CrfParams`); ``None``: natural-image ones
    crf_params: ClassVar[dict[str, Any] | None] = None
    #: the validation metric of ``eval.select = "localization"`` (the dataset's protocol); may be a property
    localization_metric: ClassVar[str] = "maxboxaccv2"

    @property
    def report_name(self) -> str:
        """The dataset's name in ``results.json`` and report columns: the plug-in's name unless the plug-in
        serves several datasets (``wsoleval/CUB``); the run's ``dataset`` setting by default (``""``)."""
        return ""

    def __init__(self, root: str | None = None, seed: int = 0, **params: Any):
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown parameters: {sorted(unknown)}")
        self.root = root
        self.seed = seed
        self.params = {**self.defaults, **params}

    @property
    def classes(self) -> list[str]:
        """The class names; label ``k`` is ``classes[k]``."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """``len(classes)``."""
        return len(self.classes)

    def split(self, name: str, train: bool | None = None) -> torch.utils.data.Dataset:
        """The items of split ``name`` with training (``train=True``) or evaluation transforms.

        ``train=None`` picks training transforms for ``"train"`` only.
        """
        raise NotImplementedError

    def split_labels(self, name: str) -> list[int]:
        """Labels of a split without decoding images (for counts and samplers)."""
        raise NotImplementedError

    def evaluation_transform(self) -> Callable[..., Any] | None:
        """The preprocessing of evaluation images (resizing, normalisation), as the evaluation split applies it.

        Called as ``transform(image, mask)`` on a ``tv_tensors.Image`` (uint8
        ``(3, H, W)``) and a ``tv_tensors.Mask``; returns both (see
        :func:`wsolbench.data.samples.transformed`). ``None``: the image is only
        scaled to [0, 1]. A trained model applies it to new images
        (``wsolbench predict``, ``wsolbench.load``), so a plug-in should build
        it from its parameters alone, without reading its files. The default
        takes the transform of the last split (``split_names[-1]``, built with
        ``train=False``), which works for splits made with
        :class:`wsolbench.data.samples.SampleDataset` but may need the files.
        """
        items = self.split(self.split_names[-1], train=False)
        if not hasattr(items, "transform"):
            raise NotImplementedError(
                f"{type(self).__name__} does not say how it preprocesses evaluation images: implement "
                f"Dataset.evaluation_transform"
            )
        return items.transform

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data this dataset serves, as JSON values (optional to override).

        The run's manifest keeps the SHA-256 of this dictionary (and its
        ``basis``), and ``wsolbench report`` warns when the runs of one table
        disagree, so two runs on different copies of a dataset can be told
        apart. The default describes data generated from parameters: the
        class, the parameters and each split's size (the run's seed is in the
        manifest already). Datasets read from files describe the files:
        :class:`wsolbench.data.files.FileDataset` lists every split's images
        and masks with their sizes in bytes.
        """
        return {
            "basis": "parameters",
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "params": self.params,
            "sizes": {name: len(self.split_labels(name)) for name in self.split_names},
        }

    def describe(self) -> list[SplitInfo]:
        """Image counts per split and class (what ``wsolbench data verify`` prints)."""
        out = []
        for name in self.split_names:
            labels = self.split_labels(name)
            counts = {c: 0 for c in self.classes}
            for y in labels:
                counts[self.classes[y]] += 1
            out.append(SplitInfo(name, len(labels), counts))
        return out


@dataclass(frozen=True)
class Event:
    """Something a run reports as it goes (see :data:`EVENTS` for the kinds): progress displays and loggers receive them."""

    kind: str  #: a key of :data:`EVENTS`
    phase: str = ""  #: ``train``, ``valid``, or the split being scored
    epoch: int = -1
    total: int = 0  #: epochs (``training_started``) or batches (``phase_started``)
    logs: dict[str, Any] = field(default_factory=dict)  #: figures of ``epoch_ended``, the picture of ``overlays_drawn``


#: the kinds of :class:`Event`, in the order a run sends them
EVENTS = {
    "training_started": "training starts at ``epoch`` (0, or the epoch a resumed run continues from) of ``total``",
    "phase_started": "a pass over ``phase`` (``train``, ``valid``, ``test`` or another split) of ``total`` batches",
    "step": "one batch of the current phase is done",
    "epoch_ended": "``epoch`` is done; ``logs`` is its metrics row (as in ``metrics.jsonl``), with ``improved`` "
    "(a new best model), ``images_per_s`` (training) and ``lr``",
    "overlays_drawn": "after a validation, when loggers listen: ``logs['image']`` is an ``(H, W, 3)`` uint8 picture "
    "of the first validation images with their true and predicted masks",
    "stopped_early": "no better validation error for ``logs['stale']`` validations (``train.patience``): training stops",
}


class Logger:
    """An experiment logger: receives a run's :class:`Event` values on the main process.

    Built as ``Logger(run_dir=PATH, config=DICT)`` (the run directory and the
    run's resolved configuration as in ``config.json``) when a run names it in
    ``loggers`` (``wsolbench run --logger NAME``). A logger that raises is
    reported once and then left out; it never stops the run.
    """

    #: one line for ``wsolbench list``, read from the source: keep it a string literal
    summary: ClassVar[str] = ""

    def __init__(self, run_dir: Any, config: dict[str, Any]):
        self.run_dir = run_dir
        self.config = config

    def log(self, event: Event) -> None:
        """Receive one event (most loggers keep ``epoch_ended`` and ``overlays_drawn``)."""

    def close(self) -> None:
        """The run has ended (completed, failed or interrupted): flush and release files."""

