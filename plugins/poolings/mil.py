"""Gated-attention multiple-instance pooling (Ilse et al., ICML 2018), one attention per class."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from wsolbench.errors import ConfigError
from wsolbench.interfaces import Pooling


class GatedAttentionPooling(Pooling):
    """Attention-based deep MIL over the spatial positions of the backbone's features.

    Each position ``p`` is an instance with features ``h_p`` (``C`` channels).
    Ilse et al.'s gated attention, adapted to ``K`` classes with one attention
    distribution per class:

    ``e_{k,p} = w_k^T ( tanh(V h_p) * sigmoid(U h_p) )``, ``a_{k,p} = softmax_p(e_{k,p})``,
    ``z_k = sum_p a_{k,p} h_p``, ``s_k = c_k^T z_k + b_k``.

    The class maps are the attention weights ``a_k`` (each sums to 1 over the
    positions). ``gated = false`` drops the sigmoid gate (plain attention).
    """

    summary = "gated-attention deep MIL (Ilse et al.) over positions, one attention map per class"
    consumes_features: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {"attention_dim": 128, "gated": True}

    def __init__(self, num_classes: int, in_channels: int | None = None, **params: Any):
        super().__init__(num_classes, in_channels, **params)
        if in_channels is None:
            raise ValueError("the MIL pooling consumes features: give in_channels")
        dim = self.params["attention_dim"]
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"pooling.attention_dim must be a whole number >= 1, got {dim!r}")
        self.attention_v = nn.Linear(in_channels, dim)
        self.attention_u = nn.Linear(in_channels, dim) if self.params["gated"] else None
        self.attention_w = nn.Linear(dim, num_classes)
        # row k of the weight is class k's classifier c_k, applied to its own bag z_k only
        self.classifier = nn.Linear(in_channels, num_classes)

    def attention(self, instances: Tensor) -> Tensor:
        """``(N, P, C)`` instances -> ``(N, P, K)`` attention weights, summing to 1 over ``P``."""
        hidden = torch.tanh(self.attention_v(instances))
        if self.attention_u is not None:
            hidden = hidden * torch.sigmoid(self.attention_u(instances))
        return torch.softmax(self.attention_w(hidden), dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n, _, h, w = x.shape
        instances = x.flatten(2).transpose(1, 2)  # (N, P, C)
        weights = self.attention(instances)  # (N, P, K)
        bags = torch.einsum("npk,npc->nkc", weights, instances)
        scores = (bags * self.classifier.weight).sum(dim=2) + self.classifier.bias
        return scores, weights.transpose(1, 2).reshape(n, self.num_classes, h, w)
