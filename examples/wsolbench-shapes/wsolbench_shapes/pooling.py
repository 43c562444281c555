"""Generalized-mean (GeM) pooling (Radenović, Tolias & Chum, TPAMI 2018).

``GeM_p(x) = ( mean_{i,j} x[i, j]^p )^(1/p)`` per channel: the mean for
``p = 1``, tending to the maximum as ``p`` grows. The exponent is learned by
default (``learn_p``), starting at ``p`` (3, the paper's initial value).

GeM is defined for non-negative activations, so this head pools the
backbone's features (clamped at ``eps``, as in the paper), not the signed class
maps, and then classifies: ``s_k = w_k . GeM_p(x) + b_k``. Its class maps are
the CAMs ``M_k = w_k . x + b_k`` of the same weights; with ``p = 1`` the scores
are exactly the average of these maps, i.e. CAM-Avg. (timm, which wsolbench
builds on, has no GeM layer; the formula is one line.)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsolbench.errors import ConfigError
from wsolbench.interfaces import Pooling


class GemPooling(Pooling):
    """GeM over the positions of each feature channel, then a linear classifier; CAMs as class maps."""

    summary = "generalized-mean (GeM) pooling of features (exponent p, learned), linear classifier, CAM maps"
    consumes_features: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {"p": 3.0, "learn_p": True, "eps": 1e-6}

    def __init__(self, num_classes: int, in_channels: int | None = None, **params: Any):
        super().__init__(num_classes, in_channels, **params)
        if in_channels is None:
            raise ValueError("the GeM pooling consumes features: give in_channels")
        p, eps = float(self.params["p"]), float(self.params["eps"])
        if not p > 0:
            raise ConfigError(f"pooling.p must be a positive exponent, got {self.params['p']!r}")
        if not eps > 0:
            raise ConfigError(f"pooling.eps must be positive, got {self.params['eps']!r}")
        self.eps = eps
        self.p = nn.Parameter(torch.tensor(p), requires_grad=bool(self.params["learn_p"]))
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def gem(self, x: Tensor) -> Tensor:
        """``(N, C, h, w)`` -> ``(N, C)``: the generalized mean of each channel (in float32 at least).

        Half precision is avoided: ``x ** p`` overflows it for ordinary activations.
        """
        dtype = torch.promote_types(x.dtype, torch.float32)
        p = self.p.to(dtype)
        return x.to(dtype).clamp_min(self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.gem(x)
        weight = self.classifier.weight.flatten(1).to(pooled.dtype)
        scores = F.linear(pooled, weight, self.classifier.bias.to(pooled.dtype))
        return scores.to(x.dtype), self.classifier(x)
