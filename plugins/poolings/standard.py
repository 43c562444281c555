"""Global poolings of class maps: average, max and log-sum-exp."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from wsolbench.errors import ConfigError
from wsolbench.interfaces import Pooling


class AvgPooling(Pooling):
    """Global average pooling (Zhou et al., CVPR 2016): ``s_k = mean_{i,j} M_k[i, j]``."""

    summary = "global average pooling of class maps (CAM)"
    defaults: ClassVar[dict[str, Any]] = {}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.mean(dim=(2, 3)), x


class MaxPooling(Pooling):
    """Global max pooling (Oquab et al., CVPR 2015): ``s_k = max_{i,j} M_k[i, j]``."""

    summary = "global max pooling of class maps"
    defaults: ClassVar[dict[str, Any]] = {}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.amax(dim=(2, 3)), x


class LsePooling(Pooling):
    """Log-sum-exp pooling (Pinheiro & Collobert, CVPR 2015; Sun et al., CVPR 2016).

    ``s_k = (1/r) log( mean_{i,j} exp(r M_k[i, j]) )`` with sharpness ``r > 0``:
    it tends to the maximum as ``r`` grows and to the mean as ``r`` shrinks.
    Computed as ``(logsumexp(r M_k) - log(h w)) / r``, which never overflows.
    """

    summary = "log-sum-exp pooling of class maps, sharpness r (max as r grows, mean as r shrinks)"
    defaults: ClassVar[dict[str, Any]] = {"r": 10.0}

    def __init__(self, num_classes: int, in_channels: int | None = None, **params: Any):
        super().__init__(num_classes, in_channels, **params)
        self.r = float(self.params["r"])
        if not (self.r > 0 and math.isfinite(self.r)):
            raise ConfigError(f"pooling.r must be a positive number (the LSE sharpness), got {self.params['r']!r}")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        positions = x.shape[-2] * x.shape[-1]
        scores = (torch.logsumexp(self.r * x.flatten(2), dim=2) - math.log(positions)) / self.r
        return scores, x
