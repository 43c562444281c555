"""SPG (Zhang et al., ECCV 2018): self-produced guidance from the classifier's own attention map.

The classifier is CAM-Avg's (class maps by a 1x1 convolution on the last
stage, global average pooling, cross-entropy). Its map of the class (the label
in training), upsampled to the image and min-max normalised, is the
*attention*. Its confident regions become a pixel-level target, the
*guidance* (:func:`guidance_mask`): foreground (1) where the attention is
above a high threshold, background (0) where it is below a low one, ignored in
between. Three auxiliary branches, each a one-channel map trained by binary
cross-entropy on the known pixels of a guidance mask, feed the finer object
extent back into the shared layers:

- ``B2`` on the output of the second-to-last stage (ResNet-50: ``layer3``),
  guided by the attention with thresholds ``thresholds[0]`` (0.7, 0.01);
- ``B1`` on the output of that stage's first block (``layer3.0``), guided by
  ``sigmoid(B2)`` with ``thresholds[1]`` (0.5, 0.05);
- ``C`` on the output of the last stage, guided by the mean of ``sigmoid(B1)``
  and ``sigmoid(B2)`` with ``thresholds[2]`` (0.7, 0.1).

``B1`` and ``B2`` each start with their own 3x3 convolution of
``hidden_channels`` (1024) and a ReLU and then share a 3x3 convolution, a ReLU
and a 1x1 convolution to one channel; ``C`` is a 3x3 convolution of
``hidden_channels / 2`` (512), a ReLU and a 1x1 convolution. These are the
layers and values of wsolevaluation's ResNet-50 SPG (its ``resnet.py``,
``method/spg.py`` and ``config.py``). A foreground with fewer than
``min_foreground`` pixels (30, at 224 x 224 there) takes the pixels above 0.7
times the map's maximum instead; background wins where both hold. Guidance is
never differentiated through (the masks are thresholds of detached maps). The
loss is the sum of the four terms. At evaluation the branches are not run: the
predicted class's map localizes, as in wsolevaluation.

Where wsolbench differs: the maps are upsampled to the training image's size
(wsolevaluation: the 224-pixel crop, the same thing there) and any backbone
made of stages of blocks works (the branches go after the first block and the
end of its second-to-last stage, and on its last). The ``paper`` profile uses
wsolevaluation's thresholds and, on CUB, its training protocol on ResNet-50
without the last stride (:func:`~wsolbench_plugins.methods.cam.wsoleval_profiles`),
standing in for the paper's Inception-v3.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsolbench.errors import ConfigError
from wsolbench.interfaces import StepOutput
from wsolbench.models import CamMethod, minmax_normalize, select_class_maps, upsample

from .adl import stages
from .cam import wsoleval_profiles

#: a guidance pixel that is neither foreground nor background: left out of the loss
IGNORED = -1.0
#: wsolevaluation's ``spg_threshold_{1,2,3}{h,l}``: (high, low) for B2, B1 and C
PAPER_THRESHOLDS = [[0.7, 0.01], [0.5, 0.05], [0.7, 0.1]]
#: a too-small foreground is taken above this share of the map's maximum instead
FALLBACK_RATIO = 0.7


def guidance_mask(attention: Tensor, high: float, low: float, min_foreground: int = 30) -> Tensor:
    """``(N, 1, H, W)`` targets from maps in [0, 1]: 1 above ``high``, 0 below ``low``, :data:`IGNORED` between.

    An image with fewer than ``min_foreground`` pixels above ``high`` takes as
    foreground the pixels above :data:`FALLBACK_RATIO` times its maximum. The
    background is set last, so it wins where both hold.
    """
    attention = attention.detach().float()
    flat = attention.flatten(1)
    foreground = flat > high
    small = foreground.sum(dim=1) < min_foreground
    fallback = flat > FALLBACK_RATIO * flat.amax(dim=1, keepdim=True)
    foreground = torch.where(small.unsqueeze(1), fallback, foreground)
    mask = torch.full_like(flat, IGNORED)
    mask[foreground] = 1.0
    mask[flat < low] = 0.0
    return mask.view_as(attention)


def guided_loss(logits: Tensor, mask: Tensor) -> Tensor:
    """Binary cross-entropy of one-channel ``logits`` against ``mask``, averaged over its known pixels (0 if none)."""
    known = mask != IGNORED
    if not bool(known.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits.float()[known], mask[known])


def _conv_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]


class Spg(CamMethod):
    """SPG: CAM-Avg with three guided one-channel branches (after ``layer3.0``, ``layer3``, ``layer4``)."""

    summary = "SPG: CAM with auxiliary maps trained on the attention's confident foreground and background"
    default_pooling = "avg"
    defaults: ClassVar[dict[str, Any]] = {"thresholds": PAPER_THRESHOLDS, "hidden_channels": 1024,
                                          "min_foreground": 30}
    profiles: ClassVar[dict[str, dict[str, Any]]] = wsoleval_profiles({"thresholds": PAPER_THRESHOLDS,
                                                                       "hidden_channels": 1024})

    def __init__(self, num_classes: int, model: Any = None, **params: Any):
        chosen = {**self.defaults, **params}
        pairs = chosen["thresholds"]
        if not (isinstance(pairs, (list, tuple)) and len(pairs) == 3 and all(
                isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p)
                and 0 <= p[1] <= p[0] <= 1 for p in pairs)):
            raise ConfigError(f"method.thresholds must be three [high, low] pairs with 0 <= low <= high <= 1, for "
                              f"B2, B1 and C (the paper's: {PAPER_THRESHOLDS}); got {pairs!r}")
        for key in ("hidden_channels", "min_foreground"):
            value = chosen[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < (2 if key == "hidden_channels" else 0):
                raise ConfigError(f"method.{key} must be a whole number >= {2 if key == 'hidden_channels' else 0}, "
                                  f"got {value!r}")
        super().__init__(num_classes, model, **params)
        self.thresholds = [(float(h), float(lo)) for h, lo in pairs]
        self.min_foreground = int(chosen["min_foreground"])
        found = stages(self.backbone)
        if len(found) < 2:
            raise ConfigError(f"spg needs a backbone made of stages of blocks (ResNets, EfficientNets, ...); "
                              f"{self.model_spec.backbone!r} is not")
        self.split_stage = found[-2][0]
        mid, last = self._channels()
        hidden = chosen["hidden_channels"]
        self.branch_b1 = nn.Sequential(*_conv_relu(mid, hidden))
        self.branch_b2 = nn.Sequential(*_conv_relu(mid, hidden))
        self.branch_b_shared = nn.Sequential(*_conv_relu(hidden, hidden), nn.Conv2d(hidden, 1, 1))
        self.branch_c = nn.Sequential(*_conv_relu(last, hidden // 2), nn.Conv2d(hidden // 2, 1, 1))

    def _run(self, module: nn.Module, x: Tensor, prefix: str, taps: dict[str, Tensor]) -> Tensor:
        """``module``'s children in order; the stage to split runs its first block alone, tapped before and after."""
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if full == self.split_stage:
                x = taps["first_block"] = child[0](x)
                x = taps["stage"] = child[1:](x)
            elif self.split_stage.startswith(full + ".") and isinstance(child, nn.Sequential):
                x = self._run(child, x, full + ".", taps)
            else:
                x = child(x)
        return x

    def _channels(self) -> tuple[int, int]:
        """Channels of the split stage's output and of the last stage's, by one small forward pass."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            taps: dict[str, Tensor] = {}
            last = self._run(self.backbone, torch.zeros(1, 3, 64, 64), "", taps)
        self.train(was_training)
        return taps["stage"].shape[1], last.shape[1]

    def branches(self, images: Tensor) -> dict[str, Tensor]:
        """Scores, class maps and the three branches' one-channel logit maps (at their layers' resolution)."""
        taps: dict[str, Tensor] = {}
        features = self._run(self.backbone, images, "", taps)
        scores, maps = self.head(features)
        return {
            "scores": scores, "maps": maps,
            "b1": self.branch_b_shared(self.branch_b1(taps["first_block"])),
            "b2": self.branch_b_shared(self.branch_b2(taps["stage"])),
            "c": self.branch_c(features),
        }

    def training_loss(self, batch: dict[str, Tensor]) -> StepOutput:
        images, labels = batch["image"], batch["label"]
        out = self.branches(images)
        size = images.shape[-2:]
        attention = minmax_normalize(upsample(select_class_maps(out["maps"].detach().float(), labels)[:, None], size))
        b1, b2, c = (upsample(out[k].float(), size) for k in ("b1", "b2", "c"))
        fused = (torch.sigmoid(b1) + torch.sigmoid(b2)).detach() / 2
        (h1, l1), (h2, l2), (h3, l3) = self.thresholds
        terms = {
            "loss_cls": F.cross_entropy(out["scores"].float(), labels),
            "loss_b2": guided_loss(b2, guidance_mask(attention, h1, l1, self.min_foreground)),
            "loss_b1": guided_loss(b1, guidance_mask(torch.sigmoid(b2), h2, l2, self.min_foreground)),
            "loss_c": guided_loss(c, guidance_mask(fused, h3, l3, self.min_foreground)),
        }
        loss = sum(terms.values())
        return StepOutput(loss, {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}},
                          out["scores"].detach())
