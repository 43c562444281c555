"""Global poolings of class maps."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from wsolbench.interfaces import Pooling


class AvgPooling(Pooling):
    """Global average pooling (Zhou et al., CVPR 2016): ``s_k = mean_{i,j} M_k[i, j]``."""

    summary = "global average pooling"
    defaults: ClassVar[dict[str, Any]] = {}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.mean(dim=(2, 3)), x
