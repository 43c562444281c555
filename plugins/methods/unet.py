"""U-Net (Ronneberger et al., MICCAI 2015) trained with the pixel masks: the fully supervised upper bound."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsolbench.errors import ConfigError
from wsolbench.interfaces import Method, ModelSpec, StepOutput
from wsolbench.models import (
    ClassMapHead,
    build_backbone,
    build_pooling,
    feature_channels,
    upsample,
)

from .cam import PAPER_BASELINE_PROFILES


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by batch norm and ReLU (U-Net's unit)."""
    layers: list[nn.Module] = []
    for cin in (in_channels, out_channels):
        layers += [nn.Conv2d(cin, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(True)]
    return nn.Sequential(*layers)


class UNetDecoder(nn.Module):
    """The expanding path over an encoder's stages, deepest first.

    At each step the running features are upsampled (bilinear) to the size of
    the next shallower stage, concatenated with it (the skip connection) and
    passed through :func:`conv_block`. Upsampling to the skip's own size rather
    than by a fixed factor of 2 makes it work with dilated encoders
    (``output_stride``), whose deep stages share one resolution.
    """

    def __init__(self, encoder_channels: list[int], widths: list[int]):
        super().__init__()
        if len(widths) != len(encoder_channels) - 1:
            raise ConfigError(
                f"method.decoder_channels needs {len(encoder_channels) - 1} widths for this backbone "
                f"(one per skip connection; its stages have {encoder_channels} channels), got {list(widths)}"
            )
        blocks = []
        running = encoder_channels[-1]
        for skip, width in zip(reversed(encoder_channels[:-1]), widths):
            blocks.append(conv_block(running + skip, width))
            running = width
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = running

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = block(torch.cat([upsample(x, skip.shape[-2:]), skip], dim=1))
        return x


class UNet(Method):
    """A U-Net over every stage of a timm encoder, trained on the pixel masks.

    Loss: ``pixel_weight`` x binary cross-entropy of the foreground logits
    against the mask + ``class_weight`` x cross-entropy of the class scores,
    which come from a pooled head (the configured pooling, global average by
    default) on the deepest features. The map is the foreground probability
    (sigmoid), upsampled to the input: it is already in [0, 1] and is not
    min-max normalised, so 0.5 keeps its meaning.
    """

    summary = "U-Net trained with the pixel masks (full supervision, the upper bound)"
    needs_masks: ClassVar[bool] = True
    default_pooling: ClassVar[str | None] = "avg"
    defaults: ClassVar[dict[str, Any]] = {
        "decoder_channels": [256, 128, 64, 32],
        "pixel_weight": 1.0,
        "class_weight": 1.0,
    }
    profiles: ClassVar[dict[str, dict[str, Any]]] = PAPER_BASELINE_PROFILES

    def __init__(self, num_classes: int, model: ModelSpec | None = None, **params: Any):
        super().__init__(num_classes, model, **params)
        self.encoder = build_backbone(self.model_spec)
        channels = feature_channels(self.encoder)
        self.decoder = UNetDecoder(channels, list(self.params["decoder_channels"]))
        self.segmentation = nn.Conv2d(self.decoder.out_channels, 1, kernel_size=1)
        pooling = build_pooling(self.model_spec, num_classes, channels[-1], self.default_pooling)
        self.head = ClassMapHead(channels[-1], num_classes, pooling)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(class scores (N, K), foreground logits (N, 1, H, W))``."""
        features = self.encoder(images)
        logits, _ = self.head(features[-1])
        foreground = upsample(self.segmentation(self.decoder(features)), images.shape[-2:])
        return logits, foreground

    def training_loss(self, batch: dict[str, Tensor]) -> StepOutput:
        logits, foreground = self(batch["image"])
        pixel = F.binary_cross_entropy_with_logits(foreground.float(), batch["mask"].float())
        classification = F.cross_entropy(logits.float(), batch["label"])
        loss = self.params["pixel_weight"] * pixel + self.params["class_weight"] * classification
        logs = {"loss": loss.detach(), "pixel_loss": pixel.detach(), "class_loss": classification.detach()}
        return StepOutput(loss, logs, logits.detach())

    def predict(self, images: Tensor) -> Tensor:
        features = self.encoder(images)
        return self.head(features[-1])[0]

    def localize(self, images: Tensor, logits: Tensor | None = None) -> Tensor:
        return self.infer(images)[1]

    def infer(self, images: Tensor) -> tuple[Tensor, Tensor]:
        logits, foreground = self(images)
        return logits, torch.sigmoid(foreground.float()).squeeze(1)
