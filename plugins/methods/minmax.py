"""Min-max entropy with recursive erasing (Belharbi et al., arXiv 1907.12934).

A localizer ``f`` and a classifier ``g`` share one backbone and have one
class-map head each. ``f`` turns the image ``X`` into a pseudo-binary mask
``R+``; ``g`` must classify ``X+ = X * R+`` with confidence (Eq.3) and be
unable to decide on ``X- = X * (1 - R+)`` (Eq.6, cross-entropy against the
uniform distribution); ``f`` is also trained on its own class scores (Eq.8).
Total loss (Eq.9): ``w_pos * Eq.3 + w_neg * Eq.6 + w_loc * Eq.8``.

The mask (Eq.10, Eq.11): ``M+ = sum_k softmax(f(X))_k M_k``, upsampled
bilinearly to the image size and detached (an input for ``g``, so ``f``'s head
learns from Eq.8 only), min-max normalised (per image; per batch as the
reference code does in training, with ``normalize = "batch"``), then
``R+ = sigmoid(omega * (M^ - sigma))``.

Recursive erasing (Eq.12-14, Algorithm 1), training only, at most ``u``
passes of ``f``: at pass ``t`` each sample gets the trust
``Omega(t) = exp(-t / sigma_e) * Psi(t)``, where ``Psi(t) = p^(y | X^t)`` if
``f`` classifies the current image ``X^t`` correctly and its loss is not above
the loss on the unerased image, else 0. The accumulator
``R* <- max(R*, Omega(t) R+(t))`` starts at 0 for every batch, the next image
is ``X^{t+1} = X^t * (1 - R*)``, and ``g`` finally sees ``X * R*`` and
``X * (1 - R*)``. With ``trust_mode = "paper"`` a zero trust is permanent;
with ``"reference"`` (the authors' code) only a wrong label is, and a failed
loss check skips the erasing of that pass only. A sample stops at zero
trust; the batch stops after ``u`` passes or when no sample is left.

Cost and memory: Eq.8 is back-propagated right after each pass (gradient
accumulation), so one pass's graph is alive at a time and the peak memory is
that of ``u = 0``; each further pass runs only on the samples still erasing,
so its cost follows their number. ``u = 0`` is the variant without erasing:
one pass, ``R+`` used as is (no trust), one backward of Eq.9. On a GPU the
passes wait on kernel launches; ``cuda_graphs = true`` (with ``erase_batch =
"full"``, whose passes all have one shape) replays f's forward and backward as
CUDA graphs instead; the CPU path is unchanged (docs/minmax.md: unmeasured).

Inference is a single pass: the class comes from ``g`` on ``X+`` (as in the
paper), the map is ``f``'s normalised ``M+`` (per image). The map of a named
class (``localize_class``, ``wsolbench predict --class``) is ``f``'s map of
that class alone: Eq.10 with a one-hot distribution.

Batch norm: ``f`` sees whole images at full resolution (and erased ones while
erasing), ``g`` masked images at ``classifier_scale`` of it, through the same
layers. With ``classifier_bn = "own"`` (the default) the running statistics
of the backbone's batch-norm layers follow what each sub-network sees at
inference: one set for ``f`` from its pass on the whole image (the erasing
passes update none), one for ``g`` from its passes (weights, scale and shift
stay shared). Training itself, which normalises with each batch's statistics,
is unchanged; evaluation normalises each sub-network as it was trained. With
``"shared"`` one set follows every pass, a mixture that fits neither: on the
synthetic dataset it left min-max's validation error at 21-42% where the same
weights scored about 6% normalised with their inputs' own statistics. Every
pass says what it is (f on the whole image, f on an erased image, g), and
:meth:`MinMaxEntropy.batch_norm_statistics` lends the layers that pass's set
(:data:`BN_STATISTICS`).

``reference_code = true`` switches, in the configuration, every setting in
which the authors' code (sbelharbi/wsol-min-max-entropy-interpretability)
differs from the defaults (docs/minmax.md has the table): every erasing pass
on the whole batch (``erase_batch = "full"``: a stopped sample keeps its
image, gets no trust, and its Eq.8 is back-propagated at every later pass,
averaged over all N), one set of batch-norm statistics updated by every pass,
g called on X+ then on X-, batch-wise normalisation of the training masks,
only a wrong label final, erasing from epoch 1, their bilinear resizing
(``align_corners``, g's input size rounded down), float32
(``train.amp = false``), the last of the epochs tied at the lowest validation
error (``train.select_ties = "last"``) and, with the ``paper`` profile, the
deep-stem ResNet-101 of CSAIL (timm's ``resnet101s``, the same layers; its
pretrained weights are timm's Gluon ImageNet weights, not CSAIL's, whose
checkpoint names its layers differently).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from wsolbench.errors import ConfigError
from wsolbench.interfaces import Method, ModelSpec, StepOutput
from wsolbench.models import (
    ClassMapHead,
    build_backbone,
    build_pooling,
    feature_channels,
    minmax_normalize,
)

TRUST_MODES = ("paper", "reference")
NORMALIZATIONS = ("image", "batch")
CLASSIFIER_BATCHES = ("joint", "separate")
CLASSIFIER_BNS = ("own", "shared")
ERASE_BATCHES = ("compact", "full")
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
#: for each ``classifier_bn``, the running statistics a pass of each kind reads and updates: f's set
#: (``"localizer"``), g's own set (``"classifier"``) or none (``None``, see :meth:`MinMaxEntropy.batch_norm_statistics`)
BN_STATISTICS: dict[str, dict[str, str | None]] = {
    "own": {"localizer": "localizer", "erasing": None, "classifier": "classifier"},
    "shared": {"localizer": "localizer", "erasing": "localizer", "classifier": "localizer"},
}

#: ``images -> (scores (N, K), class_maps (N, K, h, w))``
Localizer = Callable[[Tensor], tuple[Tensor, Tensor]]


# -- the equations ----------------------------------------------------------------
def uniform_target_loss(logits: Tensor) -> Tensor:
    """Eq.6 per sample: cross-entropy against the uniform target, ``-(1/K) sum_k log p(k | x)``.

    Its minimum, ``log K``, is reached exactly when the prediction is uniform
    (maximal entropy).
    """
    return -F.log_softmax(logits.float(), dim=1).mean(dim=1)


def positive_map(scores: Tensor, class_maps: Tensor) -> Tensor:
    """Eq.10: ``M+ = sum_k p(k | x) M_k`` with ``p`` the softmax of ``scores``; ``(N, 1, h, w)``."""
    return weighted_map(F.softmax(scores.float(), dim=1), class_maps)


def weighted_map(weights: Tensor, class_maps: Tensor) -> Tensor:
    """``sum_k weights_k M_k``, ``(N, 1, h, w)``: Eq.10 with any class distribution ``weights`` ``(N, K)``."""
    return torch.einsum("nk,nkhw->nhw", weights.float(), class_maps.float()).unsqueeze(1)


def resize(maps: Tensor, size: tuple[int, int], align_corners: bool = False) -> Tensor:
    """Bilinear resize of ``(N, C, h, w)`` to ``size``; ``align_corners=True`` is the reference code's sampling."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=align_corners)


def normalize_maps(maps: Tensor, per: str = "image") -> Tensor:
    """Min-max normalisation to [0, 1] of each image's map (``"image"``) or of the whole batch (``"batch"``)."""
    if per == "batch":
        return minmax_normalize(maps.reshape(1, -1)).view_as(maps)
    return minmax_normalize(maps)


@torch.no_grad()
def relevance_mask(
    scores: Tensor,
    class_maps: Tensor,
    size: tuple[int, int],
    omega: float = 8.0,
    sigma: float = 0.5,
    normalize: str = "image",
    align_corners: bool = False,
) -> tuple[Tensor, Tensor]:
    """Eq.10-11 without gradient: ``(R+, M^)``, both ``(N, 1, H, W)`` in [0, 1].

    ``M^`` is ``M+`` upsampled to ``size`` and min-max normalised;
    ``R+ = sigmoid(omega * (M^ - sigma))``.
    """
    normalized = normalize_maps(resize(positive_map(scores, class_maps), tuple(size), align_corners), normalize)
    return torch.sigmoid(omega * (normalized - sigma)), normalized


def trust_coefficients(
    logits: Tensor, labels: Tensor, loss: Tensor, loss0: Tensor, step: int, sigma_e: float
) -> tuple[Tensor, Tensor]:
    """Eq.12-14 at pass ``step``: ``(Omega, trusted)``.

    ``Omega = exp(-step / sigma_e) * Psi`` with ``Psi = p(y | X^t)`` where
    ``trusted`` (the prediction is ``y`` and ``loss <= loss0``), else 0.
    """
    probs = F.softmax(logits.detach().float(), dim=1)
    p_true = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    trusted = (probs.argmax(dim=1) == labels) & (loss <= loss0)
    return torch.where(trusted, p_true, torch.zeros_like(p_true)) * math.exp(-step / sigma_e), trusted


@dataclass
class Erasure:
    """The outcome of :func:`recursive_erasing` on one batch."""

    accumulated: Tensor  #: ``R*``, ``(N, 1, H, W)`` in [0, 1]
    depth: int  #: passes of the localizer over the batch (1..u)
    passes: int  #: sample-passes: the sum over passes of the samples still erasing
    loss0: Tensor  #: Eq.8 per sample on the unerased images (detached)
    loss_sum: Tensor  #: Eq.8 summed over every sample-pass that was back-propagated, divided by N (detached)


def recursive_erasing(
    localizer: Localizer,
    images: Tensor,
    labels: Tensor,
    backward: Callable[[Tensor], None],
    *,
    depth: int = 4,
    sigma_e: float = 10.0,
    omega: float = 8.0,
    sigma: float = 0.5,
    trust_mode: str = "paper",
    normalize: str = "image",
    weight: float = 1.0,
    batch: str = "compact",
    align_corners: bool = False,
    observe: Callable[[int, Tensor, Tensor, Tensor], None] | None = None,
) -> Erasure:
    """Algorithm 1: accumulate trusted masks over at most ``depth`` passes of ``localizer``.

    After each pass, ``backward(weight * sum_i L_i / N)`` is called on Eq.8 of
    the samples in that pass (``N``: the batch size, so every sample-pass
    weighs the same and the first pass is the batch mean), which frees the
    pass's graph. With ``batch = "compact"``, samples whose trust is
    exhausted leave the batch: the next pass runs on the others only. With
    ``"full"`` (the reference code) every pass runs on the whole batch: a
    stopped sample keeps its last image, gets zero trust, and its Eq.8 is
    back-propagated again at every later pass (and, with ``normalize =
    "batch"``, its map shares the batch's min-max range).
    ``observe(t, rows, trust, accumulated)``, if given, sees each pass
    (``rows``: the batch positions in the pass).
    """
    if depth < 1:
        raise ValueError("recursive_erasing needs depth >= 1 (u = 0 means no erasing at all)")
    if trust_mode not in TRUST_MODES:
        raise ConfigError(f"trust_mode must be one of {TRUST_MODES}, not {trust_mode!r}")
    if batch not in ERASE_BATCHES:
        raise ConfigError(f"erase_batch must be one of {ERASE_BATCHES}, not {batch!r}")
    n = images.shape[0]
    size = tuple(images.shape[-2:])
    accumulated = torch.zeros(n, 1, *size, device=images.device, dtype=torch.float32)
    rows = torch.arange(n, device=images.device)
    alive = torch.ones(n, dtype=torch.bool, device=images.device)  # "full": the samples still erasing
    x, y = images, labels
    loss0 = None
    loss_sum = torch.zeros((), device=images.device)
    passes = 0
    for t in range(depth):
        scores, class_maps = localizer(x)
        losses = F.cross_entropy(scores.float(), y, reduction="none")
        backward(losses.sum() * (weight / n))
        losses = losses.detach()
        loss_sum = loss_sum + losses.sum() / n
        if loss0 is None:
            loss0 = losses
        trust, trusted = trust_coefficients(scores, y, losses, loss0[rows], t, sigma_e)
        # paper: zero trust is final; reference code: only a wrong label is final
        keep = trusted if trust_mode == "paper" else scores.detach().argmax(dim=1) == y
        if batch == "full":
            trusted, keep = trusted & alive, keep & alive
            trust = trust * alive
        mask, _ = relevance_mask(scores, class_maps, size, omega, sigma, normalize, align_corners)
        current = torch.maximum(accumulated[rows], trust.view(-1, 1, 1, 1) * mask)
        accumulated[rows] = current
        passes += int(rows.numel())
        if observe is not None:
            observe(t, rows, trust, accumulated)
        if t + 1 == depth or not bool(keep.any()):
            break
        erased = torch.where(trusted.view(-1, 1, 1, 1), x * (1 - current).to(x.dtype), x)
        if batch == "full":
            x, alive = erased, keep
        else:
            x, y, rows = erased[keep], y[keep], rows[keep]
    return Erasure(accumulated, t + 1, passes, loss0, loss_sum)


# -- the method -------------------------------------------------------------------
class LocalizerPass(torch.nn.Module):
    """f as one module: the shared backbone, then f's head; ``images -> (scores, class_maps)``.

    The unit a CUDA graph captures (``cuda_graphs``); it is built on demand
    and never registered in the method, so the checkpoint's names stay as
    they are.
    """

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.backbone(images)[-1])


class MinMaxEntropy(Method):
    """Min-max entropy WSOL with recursive erasing and trust coefficients."""

    summary: ClassVar[str] = "min-max entropy with recursive erasing (Belharbi et al.); u=0: no erasing"
    default_pooling = "wildcat"
    defaults: ClassVar[dict[str, Any]] = {
        "u": 4,  #: maximum localizer passes of the recursive erasing; 0: no erasing
        "sigma_e": 10.0,  #: slope of the trust decay exp(-t / sigma_e)
        "omega": 8.0,  #: sharpness of the pseudo-binarisation (Eq.11)
        "sigma": 0.5,  #: threshold of the pseudo-binarisation (Eq.11)
        "w_pos": 1.0,  #: weight of Eq.3, cross-entropy of g on X+
        "w_neg": 1.0,  #: weight of Eq.6, uniform-target cross-entropy of g on X-
        "w_loc": 1.0,  #: weight of Eq.8, cross-entropy of f on X (and on each erased image)
        "erase_start_epoch": 0,  #: first epoch with erasing (the reference code uses 1)
        "trust_mode": "paper",  #: "paper": zero trust is final; "reference": only a wrong label is
        "classifier_scale": 0.5,  #: g sees the image resized by this factor (the reference code's 0.5)
        "normalize": "image",  #: min-max of the training masks per "image" or per "batch" (reference code)
        "classifier_batch": "joint",  #: "joint": X+ and X- through g in one call; "separate": one call each
        "classifier_bn": "own",  #: "own": g keeps its own batch-norm running statistics; "shared": one set for f and g
        "erase_batch": "compact",  #: "compact": stopped samples leave the erasing batch; "full": they stay (reference code)
        "align_corners": False,  #: bilinear resizing of maps and of g's input with align_corners (reference code: true)
        "reference_code": False,  #: true: the authors' code in every setting it differs in (see ``switches``)
        "cuda_graphs": False,  #: on CUDA, f's erasing passes replayed as CUDA graphs (needs erase_batch = "full")
    }
    #: ``method.reference_code = true``: every setting in which the authors' code differs from
    #: wsolbench's default, switched at once (docs/minmax.md, the faithfulness table)
    switches: ClassVar[dict[str, dict[str, Any]]] = {
        "reference_code": {
            "method": {
                "erase_batch": "full", "classifier_bn": "shared", "classifier_batch": "separate",
                "normalize": "batch", "trust_mode": "reference", "erase_start_epoch": 1, "align_corners": True,
            },
            "train": {"amp": False, "select_ties": "last"},
        },
        # the CSAIL ResNet-101: deep stem of three 3x3 convolutions (64, 64, 128), strided 1x1 shortcuts
        "reference_code/paper": {"model": {"backbone": "resnet101s"}},
    }
    profiles: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {
            "model": {"backbone": "resnet101", "pretrained": True},
            "pooling": {"modalities": 5, "kmax": 0.09, "kmin": 0.09, "alpha": 0.0, "dropout": 0.85},
        },
        "paper/glas": {"pooling": {"dropout": 0.75}},
        # the 8-epoch smoke profile: erasing from epoch 3, chosen on the synthetic set's validation
        # split (seeds 0-2, u = 4): start 0 / 1 / 3 gave validation F1- 76.0 / 82.7 / 87.5 and PxAP
        # 35.1 / 47.7 / 52.3; erasing from the start made the localizer's maps of one class cover
        # the background on two of three seeds
        "quick": {"method": {"erase_start_epoch": 3}},
    }

    def __init__(self, num_classes: int, model: ModelSpec | None = None, **params: Any):
        super().__init__(num_classes, model, **params)
        self._check_params()
        self.epoch = 0
        self.backbone = build_backbone(self.model_spec, out_indices=(-1,))
        channels = feature_channels(self.backbone)[-1]

        def head() -> ClassMapHead:
            return ClassMapHead(
                channels, num_classes, build_pooling(self.model_spec, num_classes, channels, self.default_pooling)
            )

        self.loc_head = head()  # the localizer f
        self.cls_head = head()  # the classifier g
        # g's running statistics (classifier_bn = "own"), lent to the backbone's batch-norm layers during g's passes
        self.cls_bn_stats = torch.nn.Module()
        if self.params["classifier_bn"] == "own":
            for i, layer in enumerate(self._batch_norms()):
                for key in BN_BUFFERS:
                    self.cls_bn_stats.register_buffer(f"{key}_{i}", getattr(layer, key).clone())
        # f's running statistics while a pass lends the layers another set (None outside every pass)
        self._localizer_bn: list[list[Tensor | None]] | None = None
        # cuda_graphs: f's pass captured per (running statistics, shape, dtype, strides, device)
        self._graphs: dict[tuple, Callable[[Tensor], tuple[Tensor, Tensor]]] = {}

    # -- batch-norm running statistics ---------------------------------------------------
    def _batch_norms(self) -> list[torch.nn.modules.batchnorm._BatchNorm]:
        """The backbone's batch-norm layers that keep running statistics, in a fixed order."""
        return [m for m in self.backbone.modules()
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]

    @contextlib.contextmanager
    def batch_norm_statistics(self, kind: str) -> Iterator[None]:
        """Inside: the backbone's batch-norm layers read and update the running statistics of a ``kind`` pass.

        ``kind`` is ``"localizer"`` (f on the whole image), ``"erasing"`` (f on
        an erased image) or ``"classifier"`` (g); :data:`BN_STATISTICS` names
        the set for each. f's set is the layers' own buffers, g's is
        ``cls_bn_stats``. With none, a layer in training normalises with the
        batch's statistics and updates nothing (``num_batches_tracked``
        included); in evaluation, which updates nothing, it reads f's set.
        The set follows from ``kind`` alone, so contexts nest in any order:
        the innermost decides, and leaving one restores what was there.
        """
        owner = BN_STATISTICS[self.params["classifier_bn"]][kind]
        outermost = self._localizer_bn is None
        if outermost and owner == "localizer":  # outside every pass the layers hold f's set
            yield
            return
        layers = self._batch_norms()
        present = [[getattr(layer, key) for key in BN_BUFFERS] for layer in layers]
        if outermost:
            self._localizer_bn = present
        try:
            for i, (layer, localizer_set) in enumerate(zip(layers, self._localizer_bn)):
                if owner == "classifier":
                    stats = [getattr(self.cls_bn_stats, f"{key}_{i}") for key in BN_BUFFERS]
                elif owner is None and layer.training:
                    stats = [None] * len(BN_BUFFERS)
                else:
                    stats = localizer_set
                for key, value in zip(BN_BUFFERS, stats):
                    setattr(layer, key, value)
            yield
        finally:
            for layer, stats in zip(layers, present):
                for key, value in zip(BN_BUFFERS, stats):
                    setattr(layer, key, value)
            if outermost:
                self._localizer_bn = None

    def _erasing_localizer(self) -> Localizer:
        """``f`` for the erasing: its first pass sees the whole image, the later ones erased images."""
        passes = 0

        def localizer(images: Tensor) -> tuple[Tensor, Tensor]:
            nonlocal passes
            passes += 1
            kind = "localizer" if passes == 1 else "erasing"
            if self.params["cuda_graphs"] and images.is_cuda and not torch.is_autocast_enabled("cuda"):
                return self._graphed_localizer(images, kind)
            return self.localizer(images, kind)

        return localizer

    def _graphed_localizer(self, images: Tensor, kind: str) -> tuple[Tensor, Tensor]:
        """f's pass of ``kind`` through a CUDA graph of its forward and backward, captured on first use.

        ``torch.cuda.make_graphed_callables`` records the pass once per input
        shape and set of running statistics (one graph with ``classifier_bn =
        "shared"``, two with ``"own"``: the erasing passes update none) and
        then replays it with one launch, where the eager pass launches every
        kernel from Python. The capture's warm-up passes leave no trace: the
        running statistics and the CUDA random state are put back. Graphs
        read and write the tensors they were captured with (parameters,
        running statistics), which optimiser steps and ``load_state_dict``
        update in place; under autocast (``train.amp``) the eager pass runs.
        """
        owner = BN_STATISTICS[self.params["classifier_bn"]][kind]
        key = (owner, tuple(images.shape), images.dtype, images.stride(), images.device)
        graphed = self._graphs.get(key)
        if graphed is None:
            saved = [buffer.detach().clone() for buffer in self.buffers()]
            rng = torch.cuda.get_rng_state(images.device)
            with self.batch_norm_statistics(kind):
                graphed = torch.cuda.make_graphed_callables(LocalizerPass(self.backbone, self.loc_head),
                                                            (images.detach().clone(),))
            with torch.no_grad():
                for buffer, value in zip(self.buffers(), saved):
                    buffer.copy_(value)
            torch.cuda.set_rng_state(rng, images.device)
            self._graphs[key] = graphed
        return graphed(images)

    def _check_params(self) -> None:
        p = self.params
        problems = []
        if not isinstance(p["u"], int) or p["u"] < 0:
            problems.append(f"method.u must be an integer >= 0, not {p['u']!r}")
        if p["sigma_e"] <= 0:
            problems.append("method.sigma_e must be > 0")
        if not 0 < p["classifier_scale"] <= 1:
            problems.append("method.classifier_scale must be in (0, 1]")
        for key, choices in (("trust_mode", TRUST_MODES), ("normalize", NORMALIZATIONS),
                             ("classifier_batch", CLASSIFIER_BATCHES), ("classifier_bn", CLASSIFIER_BNS),
                             ("erase_batch", ERASE_BATCHES)):
            if p[key] not in choices:
                problems.append(f"method.{key} must be one of {', '.join(choices)}, not {p[key]!r}")
        if p["cuda_graphs"] and p["erase_batch"] != "full":
            problems.append('method.cuda_graphs needs method.erase_batch = "full": a CUDA graph replays one fixed '
                            'shape, and the compact batch shrinks from pass to pass')
        if min(p["w_pos"], p["w_neg"], p["w_loc"]) < 0:
            problems.append("the loss weights method.w_pos, w_neg, w_loc must be >= 0")
        if problems:
            raise ConfigError("; ".join(problems))

    @classmethod
    def label(cls, name: str, params: dict[str, Any]) -> str:
        code = ", reference code" if params.get("reference_code") else ""
        return f"{name} (u={params.get('u', cls.defaults['u'])}{code})"

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    # -- the two sub-networks ---------------------------------------------------------
    def localizer(self, images: Tensor, kind: str = "localizer") -> tuple[Tensor, Tensor]:
        """``f``: ``(scores, class_maps)`` of the localizer's head; ``kind``: ``"erasing"`` on an erased image."""
        with self.batch_norm_statistics(kind):
            features = self.backbone(images)[-1]
        return self.loc_head(features)

    def classify(self, images: Tensor) -> Tensor:
        """``g``: class scores of the image resized by ``classifier_scale``."""
        scale = self.params["classifier_scale"]
        if scale != 1 and self.params["align_corners"]:  # the reference code: the size rounded down, corners aligned
            images = resize(images, (int(images.shape[-2] * scale), int(images.shape[-1] * scale)), True)
        elif scale != 1:
            images = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
        with self.batch_norm_statistics("classifier"):
            features = self.backbone(images)[-1]
        return self.cls_head(features)[0]

    def classify_pair(self, positive: Tensor, negative: Tensor) -> tuple[Tensor, Tensor]:
        """``g`` on ``X+`` and on ``X-``: one call on both (``classifier_batch = "joint"``) or one call each.

        One call is cheaper (larger convolutions, one pass through the
        network's layers); its batch-norm statistics in training are those of
        ``X+`` and ``X-`` together, where two calls normalise each by its own.
        """
        if self.params["classifier_batch"] == "separate":
            return self.classify(positive), self.classify(negative)
        logits = self.classify(torch.cat([positive, negative]))
        return logits[: positive.shape[0]], logits[positive.shape[0]:]

    def mask(self, scores: Tensor, class_maps: Tensor, size: tuple[int, int], normalize: str = "image") -> tuple[Tensor, Tensor]:
        p = self.params
        return relevance_mask(scores, class_maps, size, p["omega"], p["sigma"], normalize, p["align_corners"])

    # -- training ---------------------------------------------------------------------
    def erasing_depth(self) -> int:
        """The maximum erasing depth in the current epoch (0 before ``erase_start_epoch``)."""
        return self.params["u"] if self.epoch >= self.params["erase_start_epoch"] else 0

    def training_step(self, batch: dict[str, Tensor], backward: Callable[[Tensor], None]) -> StepOutput:
        p = self.params
        images, labels = batch["image"], batch["label"]
        n = images.shape[0]
        depth = self.erasing_depth()
        if depth == 0:
            scores, class_maps = self.localizer(images)
            loss_loc = F.cross_entropy(scores.float(), labels)
            relevant, _ = self.mask(scores, class_maps, images.shape[-2:], p["normalize"])
            logs: dict[str, Any] = {"erase_depth": 0.0, "erase_passes": 0.0, "loss_loc_passes": loss_loc.detach()}
        else:
            erasure = recursive_erasing(
                self._erasing_localizer(), images, labels, backward, depth=depth, sigma_e=p["sigma_e"], omega=p["omega"],
                sigma=p["sigma"], trust_mode=p["trust_mode"], normalize=p["normalize"], weight=p["w_loc"],
                batch=p["erase_batch"], align_corners=p["align_corners"],
            )
            relevant = erasure.accumulated
            loss_loc = erasure.loss0.mean()
            logs = {"erase_depth": float(erasure.depth), "erase_passes": erasure.passes / n,
                    "loss_loc_passes": erasure.loss_sum}
        relevant = relevant.to(images.dtype)
        logits_pos, logits_neg = self.classify_pair(images * relevant, images * (1 - relevant))
        loss_pos = F.cross_entropy(logits_pos.float(), labels)
        loss_neg = uniform_target_loss(logits_neg).mean()
        classifier_loss = p["w_pos"] * loss_pos + p["w_neg"] * loss_neg
        if depth == 0:
            backward(classifier_loss + p["w_loc"] * loss_loc)
        else:
            backward(classifier_loss)  # Eq.8 was back-propagated during the erasing
        total = (classifier_loss + p["w_loc"] * loss_loc).detach()
        logs.update(
            loss_pos=loss_pos.detach(), loss_neg=loss_neg.detach(), loss_loc=loss_loc.detach(),
            mask_area=relevant.detach().float().mean(),
        )
        return StepOutput(total, logs, logits_pos.detach())

    # -- inference: one pass, never any erasing ---------------------------------------
    def _forward_maps(self, images: Tensor) -> tuple[Tensor, Tensor]:
        scores, class_maps = self.localizer(images)
        return self.mask(scores, class_maps, images.shape[-2:], "image")

    def predict(self, images: Tensor) -> Tensor:
        relevant, _ = self._forward_maps(images)
        return self.classify(images * relevant.to(images.dtype))

    def localize(self, images: Tensor, logits: Tensor | None = None) -> Tensor:
        return self._forward_maps(images)[1].squeeze(1)

    def localize_class(self, images: Tensor, classes: Tensor) -> Tensor:
        """``f``'s map of the given class: Eq.10 with the one-hot distribution of ``classes`` in place of
        ``f``'s probabilities, upsampled and min-max normalised per image like ``M+``."""
        _, class_maps = self.localizer(images)
        weights = F.one_hot(classes.long().to(class_maps.device), self.num_classes)
        maps = resize(weighted_map(weights, class_maps), tuple(images.shape[-2:]), self.params["align_corners"])
        return normalize_maps(maps).squeeze(1)

    def infer(self, images: Tensor) -> tuple[Tensor, Tensor]:
        relevant, normalized = self._forward_maps(images)
        return self.classify(images * relevant.to(images.dtype)), normalized.squeeze(1)
