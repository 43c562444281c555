"""Class activation map methods (CAM family)."""

from __future__ import annotations

from wsolbench.models import CamMethod


class CamAvg(CamMethod):
    """CAM-Avg (Zhou et al., CVPR 2016): class maps from a 1x1 convolution, global average pooling."""

    summary = "class activation maps with global average pooling"
    default_pooling = "avg"
