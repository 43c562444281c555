"""All-ones: a constant map of ones, the baseline that shows why F1+ alone misleads."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from wsolbench.interfaces import Method


class AllOnes(Method):
    """Predicts every pixel as foreground; nothing to train and no classification.

    Its F1+ is the Dice of an all-foreground mask (high when objects are large)
    and its F1- is 0 wherever there is background. ``predict`` returns equal
    scores for every class; the engine reports its classification error as null.
    """

    summary = "constant map of ones (every pixel foreground); no training, no classification"
    trainable: ClassVar[bool] = False
    classifies: ClassVar[bool] = False

    def predict(self, images: Tensor) -> Tensor:
        return images.new_zeros(images.shape[0], self.num_classes, dtype=torch.float32)

    def localize(self, images: Tensor, logits: Tensor | None = None) -> Tensor:
        return images.new_ones(images.shape[0], *images.shape[-2:], dtype=torch.float32)
