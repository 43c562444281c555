"""Grad-CAM (Selvaraju et al., ICCV 2017): post-hoc maps from the gradients of a trained classifier."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from wsolbench.models import minmax_normalize, upsample

from .cam import CamBaseline


def grad_cam(score_fn: Callable[[Tensor], Tensor], features: Tensor, classes: Tensor) -> Tensor:
    """Grad-CAM maps ``(N, h, w)`` of ``features`` ``(N, C, h, w)`` for one class per image.

    ``score_fn`` maps the features to class scores ``(N, K)``. With ``A`` the
    features and ``y_c`` the score of image ``n``'s class ``c``:
    ``w_{c,k} = mean_{i,j} dy_c / dA_k[i, j]`` and the map is
    ``ReLU(sum_k w_{c,k} A_k)``. The gradient is taken with respect to a detached
    copy of the features, so no module hook is needed, nothing upstream of the
    features enters the graph, no parameter's ``.grad`` is touched, and the graph
    is freed before returning. Each image's score must depend on its own
    features only (true of any network in evaluation mode).
    """
    with torch.enable_grad():
        leaf = features.detach().requires_grad_(True)
        scores = score_fn(leaf)
        chosen = scores.gather(1, classes.view(-1, 1).to(scores.device)).sum()
        (grad,) = torch.autograd.grad(chosen, leaf)
    weights = grad.float().mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * leaf.detach().float()).sum(dim=1))


class GradCam(CamBaseline):
    """A CAM-style classifier (global average pooling by default) localized with Grad-CAM.

    Training is the CAM method's; at inference the map of the predicted class is
    Grad-CAM on the backbone's last feature maps, upsampled to the input and
    min-max normalised.
    """

    summary = "post-hoc Grad-CAM on the last feature maps of a trained classifier"
    default_pooling = "avg"
    needs_grad_at_inference: ClassVar[bool] = True

    def scores(self, features: Tensor) -> Tensor:
        return self.head(features)[0]

    def _maps(self, features: Tensor, logits: Tensor, size: tuple[int, int]) -> Tensor:
        maps = grad_cam(self.scores, features, logits.argmax(dim=1))
        return minmax_normalize(upsample(maps.unsqueeze(1), size).squeeze(1))

    def localize(self, images: Tensor, logits: Tensor | None = None) -> Tensor:
        with torch.no_grad():
            features = self.backbone(images)[-1]
            if logits is None:
                logits = self.scores(features)
        return self._maps(features, logits, images.shape[-2:])

    def infer(self, images: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            features = self.backbone(images)[-1]
            logits = self.scores(features)
        return logits, self._maps(features, logits, images.shape[-2:])
