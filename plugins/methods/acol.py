"""ACoL (Zhang et al., CVPR 2018): adversarial complementary learning with two classifiers.

Classifier A maps the backbone's features to class maps and classifies by
pooling them (CAM). Its map of the class, min-max normalised per image, is
thresholded at ``threshold``: the features are set to zero where it is at or
above it, and classifier B, of the same shape, classifies these erased
features, so it must find the class in the regions A did not use. Both are
trained with cross-entropy (the loss is the sum). The class is the label in
training and the predicted class at evaluation. The map is the per-pixel
maximum of the two classifiers' normalised maps of the predicted class
(ACoL's fusion); the scores are A's.

Each classifier is, as in ACoL's code and wsolevaluation's, two 3x3
convolutions of ``hidden_channels`` channels with ReLUs and a 1x1 convolution
to the classes (``hidden_channels = 0``: the 1x1 convolution alone, as CAM),
then the pooling (global average by default). The erasing is not
differentiated through (the map is detached, as in both codes).

The ``paper`` profile uses wsolevaluation's ``acol_threshold = 0.7`` (its
``config.py``) and 1024 hidden channels, and on CUB its training protocol
(:func:`~wsolbench_plugins.methods.cam.wsoleval_profiles`) on the paper's VGG-16
as wsolevaluation builds it for ACoL: up to conv5_3 without pool5 (stride 16),
the classifiers' 3x3 convolutions in place of CAM's conv6 (``vgg16_cam`` with
``backbone_params.conv6 = false``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsolbench.errors import ConfigError
from wsolbench.interfaces import StepOutput
from wsolbench.models import (
    CamMethod,
    ClassMapHead,
    build_pooling,
    feature_channels,
    minmax_normalize,
    select_class_maps,
    upsample,
)

from .cam import VGG16, wsoleval_profiles


def erase(features: Tensor, attention: Tensor, threshold: float) -> Tensor:
    """``features`` ``(N, C, h, w)`` set to zero where ``attention`` ``(N, h, w)`` is at least ``threshold``."""
    keep = (attention < threshold).unsqueeze(1).to(features.dtype)
    return features * keep


class AcolClassifier(nn.Module):
    """Features -> (two 3x3 convolutions with ReLU) -> class maps -> pooling: ``(scores, class_maps)``."""

    def __init__(self, in_channels: int, hidden: int, num_classes: int, pooling: nn.Module):
        super().__init__()
        if hidden:
            self.body = nn.Sequential(
                nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(),
                nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            )
        else:
            self.body = nn.Identity()
        self.head = ClassMapHead(hidden or in_channels, num_classes, pooling)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.body(features))


class Acol(CamMethod):
    """ACoL: classifier A on the features, classifier B on them erased where A's map is high; their maps fused."""

    summary = "ACoL: a second classifier on features erased where the first one's map is high"
    default_pooling = "avg"
    defaults: ClassVar[dict[str, Any]] = {"threshold": 0.7, "hidden_channels": 1024}
    profiles: ClassVar[dict[str, dict[str, Any]]] = wsoleval_profiles(
        {"threshold": 0.7, "hidden_channels": 1024}, {**VGG16, "backbone_params": {"conv6": False}})

    def __init__(self, num_classes: int, model: Any = None, **params: Any):
        chosen = {**self.defaults, **params}
        if not isinstance(chosen["threshold"], (int, float)) or not 0.0 <= chosen["threshold"] <= 1.0:
            raise ConfigError(f"method.threshold must be a number in [0, 1], got {chosen['threshold']!r}")
        hidden = chosen["hidden_channels"]
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 0:
            raise ConfigError(f"method.hidden_channels must be a whole number >= 0 (0: no hidden layers), got {hidden!r}")
        super().__init__(num_classes, model, **params)
        self.threshold = float(chosen["threshold"])
        channels = feature_channels(self.backbone)[-1]
        del self.head  # CAM's single classifier: ACoL has two
        heads = []
        for _ in range(2):
            pooling = build_pooling(self.model_spec, num_classes, hidden or channels, self.default_pooling)
            heads.append(AcolClassifier(channels, hidden, num_classes, pooling))
        self.classifier_a, self.classifier_b = heads

    def branches(self, images: Tensor, classes: Tensor | None = None) -> dict[str, Tensor]:
        """Both classifiers' outputs and the erased features B saw; ``classes=None``: A's predicted classes."""
        features = self.backbone(images)[-1]
        scores_a, maps_a = self.classifier_a(features)
        if classes is None:
            classes = scores_a.argmax(dim=1)
        attention = minmax_normalize(select_class_maps(maps_a.detach().float(), classes))
        erased = erase(features, attention, self.threshold)
        scores_b, maps_b = self.classifier_b(erased)
        return {"scores_a": scores_a, "maps_a": maps_a, "scores_b": scores_b, "maps_b": maps_b, "erased": erased}

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """A's scores and the fused class maps: per class, the maximum of A's and B's normalised maps."""
        out = self.branches(images)
        fused = torch.maximum(minmax_normalize(out["maps_a"].float().flatten(0, 1)),
                              minmax_normalize(out["maps_b"].float().flatten(0, 1)))
        return out["scores_a"], fused.view_as(out["maps_a"])

    def training_loss(self, batch: dict[str, Tensor]) -> StepOutput:
        labels = batch["label"]
        out = self.branches(batch["image"], labels)
        loss_a = F.cross_entropy(out["scores_a"].float(), labels)
        loss_b = F.cross_entropy(out["scores_b"].float(), labels)
        loss = loss_a + loss_b
        logs = {"loss": loss.detach(), "loss_a": loss_a.detach(), "loss_b": loss_b.detach()}
        return StepOutput(loss, logs, out["scores_a"].detach())

    def maps_from(self, class_maps: Tensor, logits: Tensor, size: tuple[int, int]) -> Tensor:
        chosen = select_class_maps(class_maps.float(), logits.argmax(dim=1))
        return minmax_normalize(upsample(chosen.unsqueeze(1), size).squeeze(1))
