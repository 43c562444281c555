"""Wildcat pooling (Durand et al., CVPR 2017): modalities per class, then top and bottom regions."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from wsolbench.errors import ConfigError
from wsolbench.interfaces import Pooling


def region_count(k: float, positions: int) -> int:
    """How many positions ``k`` selects: a fraction of them when ``0 < k < 1``, a count when ``k >= 1``.

    A fraction selects at least one position; a count is capped at ``positions``;
    ``k = 0`` selects none.
    """
    if k == 0:
        return 0
    if k < 1:
        return max(1, round(k * positions))
    return min(int(k), positions)


class WildcatPooling(Pooling):
    """Wildcat: ``M`` maps per class averaged into one class map, then per class

    ``s_k = mean(top kmax values of M_k) + alpha * mean(bottom kmin values of M_k)``.

    ``kmax`` and ``kmin`` are fractions of the positions when below 1 and counts
    of positions otherwise (``kmin = 0`` drops the second term). ``dropout``
    applies to the selected (sorted) values during training. The defaults are
    the authors' published settings for PASCAL VOC (``k = 0.2``, 8 maps,
    ``alpha = 0.7``).
    """

    summary = "Wildcat: M maps per class, mean of the kmax highest + alpha x mean of the kmin lowest"
    defaults: ClassVar[dict[str, Any]] = {"modalities": 8, "kmax": 0.2, "kmin": 0.2, "alpha": 0.7, "dropout": 0.0}

    def __init__(self, num_classes: int, in_channels: int | None = None, **params: Any):
        super().__init__(num_classes, in_channels, **params)
        p = self.params
        problems = []
        if not isinstance(p["modalities"], int) or p["modalities"] < 1:
            problems.append(f"pooling.modalities must be a whole number >= 1, got {p['modalities']!r}")
        for key, low in (("kmax", 0.0), ("kmin", 0.0)):
            k = p[key]
            if not k >= low or (k >= 1 and k != int(k)) or (key == "kmax" and k == 0):
                problems.append(
                    f"pooling.{key} must be a fraction of the positions in (0, 1) or a whole number of "
                    f"positions >= 1{' (or 0 to drop the term)' if key == 'kmin' else ''}, got {k!r}"
                )
        if not 0 <= p["dropout"] < 1:
            problems.append(f"pooling.dropout must be in [0, 1), got {p['dropout']!r}")
        if problems:
            raise ConfigError("; ".join(problems))
        self.kmax, self.kmin = float(p["kmax"]), float(p["kmin"])
        self.alpha = float(p["alpha"])
        self.dropout = nn.Dropout(float(p["dropout"]))

    @property
    def modalities(self) -> int:
        return int(self.params["modalities"])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n, channels, h, w = x.shape
        if channels != self.num_classes * self.modalities:
            raise ValueError(
                f"Wildcat expects {self.num_classes} classes x {self.modalities} modalities = "
                f"{self.num_classes * self.modalities} maps, got {channels}"
            )
        class_maps = x.view(n, self.num_classes, self.modalities, h, w).mean(dim=2)
        flat = class_maps.flatten(2)
        positions = h * w
        # topk on each end gives the same values as a full sort, in O(P log k)
        kmax = region_count(self.kmax, positions)
        scores = self.dropout(flat.topk(kmax, dim=2).values).mean(dim=2)
        kmin = region_count(self.kmin, positions)
        if kmin > 0 and self.alpha != 0:
            lowest = self.dropout(flat.topk(kmin, dim=2, largest=False).values)
            scores = scores + self.alpha * lowest.mean(dim=2)
        return scores, class_maps
