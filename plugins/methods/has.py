"""Hide-and-Seek (Singh & Lee, ICCV 2017): hide random patches of every training image.

A classifier trained on whole images can rely on the most discriminative part
of an object alone (a bird's head), and its class activation maps then cover
that part only. Hide-and-Seek hides a random subset of image patches in each
training iteration, so when that part is hidden the network must find the
class in the rest of the object. Nothing is hidden at test time.

The hiding: the image is divided into a grid of ``S x S`` patches anchored at
its top-left corner (the last row and column are cut by the border), and each
patch is hidden independently with probability ``hide_prob`` (0.5 in the
paper and in wsolevaluation). The paper fills hidden pixels with the mean of
the training images, so that the first convolutions see the same expected
input at training and test time; here, as in the authors' ``hide_patch.py``
and wsolevaluation's ``has.py``, a hidden pixel is zero in the normalised
image, i.e. the dataset's normalisation mean (ImageNet's for wsolbench's
datasets unless they say otherwise).

``patch_sizes`` lists the allowed ``S``: one is drawn per image and iteration,
``0`` meaning "hide nothing". The ``paper`` profile uses the authors' mixture
``[0, 16, 32, 44, 56]`` for 224-pixel images (their released AlexNet model;
wsolevaluation tunes one grid size per backbone instead); the default ``[16]``
suits the 64-pixel images of the ``quick`` profile. The rest is CAM-Avg: class
maps from a 1x1 convolution, global average pooling, cross-entropy, the
predicted class's map localizes. On CUB the ``paper`` profile trains with
wsolevaluation's protocol (:data:`~wsolbench_plugins.methods.cam.WSOLEVAL_PROFILES`:
ResNet-50 with the last stride removed stands in for the paper's GoogLeNet and
AlexNet).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from wsolbench.errors import ConfigError
from wsolbench.interfaces import StepOutput
from wsolbench.models import CamMethod

from .cam import wsoleval_profiles

#: the paper's mixture of patch sizes (Singh & Lee, "HaS-Mixed"), for images of about 224 pixels
PAPER_PATCH_SIZES = [0, 16, 32, 44, 56]


def hiding_mask(
    n: int,
    size: Sequence[int],
    patch_sizes: Sequence[int],
    hide_prob: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``(n, 1, H, W)`` booleans, ``True`` where a pixel is hidden.

    For each image one patch size ``S`` is drawn uniformly from ``patch_sizes``;
    the ``S x S`` grid patches (anchored at the top-left corner) are hidden
    independently with probability ``hide_prob``. ``S = 0`` hides nothing.
    Random numbers come from ``generator`` (default: torch's global one, which
    ``--seed`` fixes).
    """
    h, w = (int(v) for v in size)
    hidden = torch.zeros(n, 1, h, w, dtype=torch.bool, device=device)
    choice = torch.randint(len(patch_sizes), (n,), generator=generator, device=device)
    for k, s in enumerate(patch_sizes):
        images = (choice == k).nonzero().flatten()
        if s == 0 or images.numel() == 0:
            continue
        grid = torch.rand(images.numel(), 1, math.ceil(h / s), math.ceil(w / s), generator=generator, device=device)
        cells = grid < hide_prob
        hidden[images] = cells.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)[..., :h, :w]
    return hidden


def hide(images: Tensor, hidden: Tensor) -> Tensor:
    """``images`` (normalised) with the ``hidden`` pixels set to the mean, i.e. zero."""
    return images.masked_fill(hidden, 0.0)


class HideAndSeek(CamMethod):
    """Hide-and-Seek: CAM-Avg trained on images whose random grid patches are hidden."""

    summary = "Hide-and-Seek: CAM trained on images with random grid patches hidden"
    default_pooling = "avg"
    defaults: ClassVar[dict[str, Any]] = {"patch_sizes": [16], "hide_prob": 0.5}
    profiles: ClassVar[dict[str, dict[str, Any]]] = wsoleval_profiles({"patch_sizes": PAPER_PATCH_SIZES})

    def __init__(self, num_classes: int, model: Any = None, **params: Any):
        chosen = {**self.defaults, **params}
        sizes, prob = chosen["patch_sizes"], chosen["hide_prob"]
        if (
            not isinstance(sizes, (list, tuple))
            or not sizes
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sizes)
        ):
            raise ConfigError(
                f"method.patch_sizes must be a non-empty list of patch sizes in pixels (0: hide nothing), "
                f"for example [16] or [0, 16, 32, 44, 56]; got {sizes!r}"
            )
        if not 0.0 <= prob <= 1.0:
            raise ConfigError(f"method.hide_prob must be a probability in [0, 1], got {prob!r}")
        super().__init__(num_classes, model, **params)  # builds the network: checks first
        self.patch_sizes = [int(s) for s in sizes]
        self.hide_prob = float(prob)

    @classmethod
    def label(cls, name: str, params: dict[str, Any]) -> str:
        """``has (S=16)``; ``S=0,16,32`` for a mixture of patch sizes."""
        sizes = ",".join(str(s) for s in params.get("patch_sizes", cls.defaults["patch_sizes"]))
        return f"{name} (S={sizes})"

    def training_loss(self, batch: dict[str, Tensor]) -> StepOutput:
        images = batch["image"]
        hidden = hiding_mask(len(images), images.shape[-2:], self.patch_sizes, self.hide_prob, device=images.device)
        return super().training_loss({**batch, "image": hide(images, hidden)})
