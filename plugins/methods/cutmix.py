"""CutMix (Yun et al., ICCV 2019): train on images with a box pasted from another image.

In a training step, with probability ``cutmix_prob`` (and ``beta > 0``), the
batch is mixed: ``lambda`` is drawn from ``Beta(beta, beta)``, a box of area
about ``(1 - lambda)`` of the image, centred at a uniform position and clipped
at the border, is cut from a random permutation of the batch and pasted into
every image. The loss is the cross-entropy with each image's own label
weighted by the share of its pixels left and with the pasted image's label
weighted by the share pasted (the clipped box's area, as in the authors' code,
not the drawn ``lambda``). Otherwise the step is CAM-Avg's. Evaluation is
CAM-Avg's: the predicted class's map localizes.

The ``paper`` profile uses wsolevaluation's ``cutmix_beta = 1`` and
``cutmix_prob = 1`` (its ``config.py``; CutMix's paper used the same for
ImageNet classification), and on CUB its training protocol
(:data:`~wsolbench_plugins.methods.cam.WSOLEVAL_PROFILES`; ResNet-50 as in
CutMix's WSOL experiment). The box follows CutMix's ``rand_bbox``: side
``int(size * sqrt(1 - lambda))``, half-sides ``side // 2`` either way of the
centre. Random numbers come from torch's global generator (``--seed``), the
permutation included. Hand-written: timm's ``Mixup`` mixes labels as soft
targets, folds the probability and the box rule into its own options and
cannot return the pasted area per batch.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from wsolbench.errors import ConfigError
from wsolbench.interfaces import StepOutput
from wsolbench.models import CamMethod

from .cam import wsoleval_profiles


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: a box of sides ``int(side * sqrt(1 - lam))`` at a uniform centre, clipped at the border."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(height, (), generator=generator))
    cx = int(torch.randint(width, (), generator=generator))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y0, y1, x0, x1


def paste(images: Tensor, order: Tensor, box: tuple[int, int, int, int]) -> tuple[Tensor, float]:
    """Images with ``box`` taken from ``images[order]``, and the share of each image's area pasted."""
    y0, y1, x0, x1 = box
    mixed = images.clone()
    mixed[:, :, y0:y1, x0:x1] = images[order, :, y0:y1, x0:x1]
    return mixed, (y1 - y0) * (x1 - x0) / (images.shape[-2] * images.shape[-1])


class CutMix(CamMethod):
    """CutMix: CAM-Avg trained on images with a box pasted from another image of the batch, labels mixed by area."""

    summary = "CutMix: CAM trained on images with pasted boxes, labels weighted by the pasted area"
    default_pooling = "avg"
    defaults: ClassVar[dict[str, Any]] = {"beta": 1.0, "cutmix_prob": 1.0}
    profiles: ClassVar[dict[str, dict[str, Any]]] = wsoleval_profiles({"beta": 1.0, "cutmix_prob": 1.0})

    def __init__(self, num_classes: int, model: Any = None, **params: Any):
        chosen = {**self.defaults, **params}
        if not isinstance(chosen["beta"], (int, float)) or chosen["beta"] < 0:
            raise ConfigError(f"method.beta must be a number >= 0 (0: no mixing), got {chosen['beta']!r}")
        if not isinstance(chosen["cutmix_prob"], (int, float)) or not 0.0 <= chosen["cutmix_prob"] <= 1.0:
            raise ConfigError(f"method.cutmix_prob must be a probability in [0, 1], got {chosen['cutmix_prob']!r}")
        super().__init__(num_classes, model, **params)
        self.beta = float(chosen["beta"])
        self.cutmix_prob = float(chosen["cutmix_prob"])

    def mix(self, images: Tensor) -> tuple[Tensor, Tensor, float] | None:
        """``(mixed images, the permutation, the share pasted)``, or ``None`` when this step does not mix."""
        if self.beta <= 0 or not bool(torch.rand(()) < self.cutmix_prob):
            return None
        beta = torch.tensor(self.beta)
        lam = float(torch.distributions.Beta(beta, beta).sample())
        order = torch.randperm(len(images)).to(images.device)
        box = cutmix_box(images.shape[-2], images.shape[-1], lam)
        mixed, pasted = paste(images, order, box)
        return mixed, order, pasted

    def training_loss(self, batch: dict[str, Tensor]) -> StepOutput:
        mixing = self.mix(batch["image"])
        if mixing is None:
            return super().training_loss(batch)
        mixed, order, pasted = mixing
        labels = batch["label"]
        logits, _ = self(mixed)
        logits = logits.float()
        loss = (1.0 - pasted) * F.cross_entropy(logits, labels) + pasted * F.cross_entropy(logits, labels[order])
        return StepOutput(loss, {"loss": loss.detach()}, logits.detach())
