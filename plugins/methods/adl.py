"""ADL (Choe & Shim, CVPR 2019): attention-based dropout layers inside the backbone.

An attention-based dropout layer reads the self-attention map of its input
feature maps, their mean over channels ``A``, and in each training step either
hides the most discriminative region (the *drop mask*: 0 where
``A >= drop_threshold * max A`` of that image, 1 elsewhere), so that the later
layers must learn from the rest of the object, or stresses it (the *importance
map* ``sigmoid(A)``), so that classification stays accurate. It multiplies the
feature maps by the one chosen: the drop mask with probability ``drop_rate``,
drawn once per layer and step for the whole batch (as in the authors' code and
wsolevaluation's). At evaluation the layer is the identity. It has no
parameters; the rest is CAM-Avg, whose map of the predicted class localizes.

Where the layers go (``positions``): ``"auto"`` puts them where wsolevaluation
puts them in ResNet-50 (after the first block of the third stage, after the
first and the last block of the fourth), i.e. after the first block of the
backbone's second-to-last stage and after the first and last blocks of its last
stage, whatever the backbone (ResNets, EfficientNets); a list of module names
of the timm feature extractor (``"layer4.0"``, ``"blocks.6.0"``) places them
after those modules. The ``paper`` profile uses wsolevaluation's
``adl_drop_rate = 0.75`` and ``adl_threshold = 0.9`` (its ``config.py``), and on
CUB its training protocol
(:data:`~wsolbench_plugins.methods.cam.WSOLEVAL_PROFILES`); ADL's own paper
used ResNet-50-SE and VGG-GAP, for which ResNet-50 stands in. Hand-written:
neither timm nor torchvision has the layer, and it is five lines.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from wsolbench.errors import ConfigError
from wsolbench.models import CamMethod

from .cam import wsoleval_profiles


def drop_mask(features: Tensor, drop_threshold: float) -> Tensor:
    """``(N, 1, h, w)``: 0 where the channel mean reaches ``drop_threshold`` times its image's maximum, else 1."""
    attention = features.mean(dim=1, keepdim=True)
    peak = attention.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    return (attention < drop_threshold * peak).to(features.dtype)


def importance_map(features: Tensor) -> Tensor:
    """``(N, 1, h, w)``: the sigmoid of the channel mean."""
    return torch.sigmoid(features.mean(dim=1, keepdim=True))


class AttentionDropout(nn.Module):
    """The attention-based dropout layer: identity in evaluation; in training, a drop mask or the importance map."""

    def __init__(self, drop_rate: float, drop_threshold: float):
        super().__init__()
        self.drop_rate = drop_rate
        self.drop_threshold = drop_threshold

    def forward(self, features: Tensor) -> Tensor:
        if not self.training:
            return features
        dropping = bool(torch.rand(()) < self.drop_rate)  # torch's global generator: --seed fixes it
        chosen = drop_mask(features, self.drop_threshold) if dropping else importance_map(features)
        return features * chosen

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, drop_threshold={self.drop_threshold}"


def stages(backbone: nn.Module) -> list[tuple[str, nn.Sequential]]:
    """The backbone's stages of blocks, by name: its sequential children (or those of its one sequential child)."""
    top = [(name, m) for name, m in backbone.named_children() if isinstance(m, nn.Sequential) and len(m)]
    if len(top) == 1 and all(isinstance(m, nn.Sequential) for m in top[0][1].children()):
        name, outer = top[0]
        return [(f"{name}.{k}", m) for k, m in outer.named_children() if len(m)]
    return top


def auto_positions(backbone: nn.Module) -> list[str]:
    """After the first block of the second-to-last stage and the first and last blocks of the last stage."""
    found = stages(backbone)
    if len(found) < 2:
        raise ConfigError(
            "method.positions = 'auto' needs a backbone made of stages of blocks (ResNets, EfficientNets, ...); "
            "name the modules after which the dropout layers go, e.g. --set 'method.positions=[\"layer4.0\"]'"
        )
    (before, _), (last, final) = found[-2], found[-1]
    names = [f"{before}.0", f"{last}.0", f"{last}.{len(final) - 1}"]
    return list(dict.fromkeys(names))


class Adl(CamMethod):
    """ADL: CAM-Avg with attention-based dropout layers after some blocks of the backbone (training only)."""

    summary = "ADL: attention-based dropout layers in the backbone (drop mask or importance map per step)"
    default_pooling = "avg"
    defaults: ClassVar[dict[str, Any]] = {"drop_rate": 0.75, "drop_threshold": 0.9, "positions": "auto"}
    profiles: ClassVar[dict[str, dict[str, Any]]] = wsoleval_profiles({"drop_rate": 0.75, "drop_threshold": 0.9})

    def __init__(self, num_classes: int, model: Any = None, **params: Any):
        chosen = {**self.defaults, **params}
        for key in ("drop_rate", "drop_threshold"):
            if not isinstance(chosen[key], (int, float)) or not 0.0 <= chosen[key] <= 1.0:
                raise ConfigError(f"method.{key} must be a number in [0, 1], got {chosen[key]!r}")
        positions = chosen["positions"]
        if positions != "auto" and not (
            isinstance(positions, (list, tuple)) and positions and all(isinstance(p, str) for p in positions)
        ):
            raise ConfigError(
                f"method.positions must be 'auto' or a non-empty list of module names of the backbone "
                f"(for example [\"layer3.0\", \"layer4.0\"]); got {positions!r}"
            )
        super().__init__(num_classes, model, **params)
        names = auto_positions(self.backbone) if positions == "auto" else list(positions)
        for name in names:
            parent_name, _, child = name.rpartition(".")
            try:
                parent = self.backbone.get_submodule(parent_name)
                block = parent.get_submodule(child)
            except AttributeError as exc:
                known = [n for n, _ in self.backbone.named_modules() if n][:12]
                raise ConfigError(
                    f"method.positions: the backbone {self.model_spec.backbone!r} has no module {name!r}; "
                    f"its modules are named like {', '.join(known)} ..."
                ) from exc
            layer = AttentionDropout(float(chosen["drop_rate"]), float(chosen["drop_threshold"]))
            setattr(parent, child, nn.Sequential(block, layer))
        self.positions = names
