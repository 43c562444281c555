"""Class activation map methods (CAM family): one backbone, a class-map head, a pooling.

They differ only in the pooling that turns class maps into class scores; each
localizes with its predicted class's map, upsampled and min-max normalised.
"""

from __future__ import annotations

from typing import Any, ClassVar

from wsolbench.models import CamMethod

#: What the paper's baselines change in the global ``paper`` profile
#: (:data:`wsolbench.config.PROFILES`, which also says where its values come
#: from): 160 epochs on GlaS (Belharbi et al., supplementary B.2).
PAPER_BASELINE_PROFILES: dict[str, dict[str, Any]] = {
    "paper/glas": {"train": {"epochs": 160}},
}


class CamBaseline(CamMethod):
    """A CAM method with the paper's baseline settings (:data:`PAPER_BASELINE_PROFILES`)."""

    profiles: ClassVar[dict[str, dict[str, Any]]] = PAPER_BASELINE_PROFILES


class CamAvg(CamBaseline):
    """CAM-Avg (Zhou et al., CVPR 2016): class maps from a 1x1 convolution, global average pooling."""

    summary = "class activation maps with global average pooling"
    default_pooling = "avg"


class CamMax(CamBaseline):
    """CAM-Max (Oquab et al., CVPR 2015): class maps pooled by their global maximum."""

    summary = "class activation maps with global max pooling"
    default_pooling = "max"


class CamLse(CamBaseline):
    """CAM-LSE (Pinheiro & Collobert 2015; Sun et al. 2016): log-sum-exp pooling, sharpness ``pooling.r``."""

    summary = "class activation maps with log-sum-exp pooling"
    default_pooling = "lse"


class Wildcat(CamBaseline):
    """Wildcat (Durand et al., CVPR 2017): ``pooling.modalities`` maps per class, top/bottom region pooling."""

    summary = "Wildcat: multi-map class-wise pooling with top and bottom regions"
    default_pooling = "wildcat"


class DeepMil(CamBaseline):
    """Deep MIL (Ilse et al., ICML 2018), adapted to K classes: each class's attention map localizes."""

    summary = "attention-based deep MIL (gated attention); the attention map localizes"
    default_pooling = "mil"
