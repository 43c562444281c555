"""Post-hoc class activation maps of a trained classifier, by pytorch-grad-cam (the ``cams`` extra).

The classifier is CAM-Avg's (a backbone, a 1x1 convolution to class maps,
global average pooling, cross-entropy); only the map differs. ``cam`` names
the method with pytorch-grad-cam's own names, each computed on the
backbone's last feature maps ``A`` for the class the logits rank first (or
the class asked for):

- ``gradcam`` (Selvaraju et al., ICCV 2017): channel weights are the spatial
  mean of the score's gradient, ``ReLU(sum_k w_k A_k)``;
- ``gradcam++`` (Chattopadhay et al., WACV 2018): weights from the positive
  gradients, weighted by second- and third-order terms;
- ``xgradcam`` (Fu et al., BMVC 2020): gradients weighted by the normalised
  activations;
- ``layercam`` (Jiang et al., TIP 2021): the positive gradient weighs each
  position of each channel, not each channel;
- ``scorecam`` (Wang et al., CVPRW 2020): each channel, upsampled and min-max
  normalised, masks the image; the softmax of the masked images' scores
  weighs the channels (one forward pass per channel: slow);
- ``eigencam`` (Muhammad & Yeasin, IJCNN 2020): the first principal component
  of the features, class-agnostic;
- ``ablationcam`` (Desai & Ramaswamy, WACV 2020): a channel's weight is the
  relative drop of the score when the channel is set to zero (one forward
  pass of the head per channel).

pytorch-grad-cam min-max normalises each map and resizes it to the image
(OpenCV, bilinear). The backbone runs without autograd: the gradient-based
methods differentiate the head only, as the built-in ``gradcam`` does, and
the parameters' ``.grad`` are left as they were. The classifier is the same
network as ``cam-avg``'s and ``gradcam``'s, so ``wsolbench evaluate-run RUN
--method posthoc --set method.cam=scorecam`` scores any of them on an
existing run's weights, without training. The ``paper`` profile trains the
classifier as wsolevaluation trains CAM on CUB
(:func:`~wsolbench_plugins.methods.cam.wsoleval_profiles`), on VGG-16 with the
CAM modification (``vgg16_cam``), the network of Grad-CAM's localization
experiments; the post-hoc methods' papers explain given classifiers and train
none.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from wsolbench.errors import ConfigError, UserError

from .cam import VGG16, CamBaseline, wsoleval_profiles

#: ``method.cam`` -> the pytorch-grad-cam class that computes it
CAMS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
    "eigencam": "EigenCAM",
    "ablationcam": "AblationCAM",
}


def grad_cam_library() -> Any:
    """The ``pytorch_grad_cam`` package, or a one-paragraph error saying how to install it."""
    try:
        return importlib.import_module("pytorch_grad_cam")  # an optional extra: imported where it is used
    except ImportError as exc:
        raise UserError(
            "method posthoc computes its maps with pytorch-grad-cam, which is not installed: "
            "pip install 'wsolbench[cams]' (or pip install grad-cam)"
        ) from exc


class LastFeatures(nn.Module):
    """Images -> the backbone's last feature maps, computed without autograd, a leaf that wants gradients.

    pytorch-grad-cam's target layer: gradients start here, so none flows into the backbone.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            features = self.backbone(images)[-1].float()
        return features.requires_grad_(torch.is_grad_enabled())


class Classifier(nn.Module):
    """Images -> class scores, the form pytorch-grad-cam expects; ``features`` is its target layer."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.features = LastFeatures(backbone)
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))[0]


class PostHoc(CamBaseline):
    """CAM-Avg's classifier localized by a pytorch-grad-cam method (``method.cam``)."""

    summary = "post-hoc maps of a trained classifier: Grad-CAM, Grad-CAM++, XGrad-CAM, Layer-CAM, Score-CAM, ..."
    default_pooling = "avg"
    needs_grad_at_inference: ClassVar[bool] = True
    #: ``forward_batch``: images per forward pass of Score-CAM's and Ablation-CAM's per-channel scoring
    defaults: ClassVar[dict[str, Any]] = {"cam": "gradcam", "forward_batch": 32}
    #: the classifier trained as wsolevaluation trains CAM, on VGG-16 (on GlaS: as the other baselines)
    profiles: ClassVar[dict[str, dict[str, Any]]] = wsoleval_profiles({}, VGG16)

    def __init__(self, num_classes: int, model: Any = None, **params: Any):
        chosen = {**self.defaults, **params}
        if chosen["cam"] not in CAMS:
            raise ConfigError(f"method.cam must be one of {', '.join(CAMS)} (pytorch-grad-cam's names), "
                              f"got {chosen['cam']!r}")
        if not isinstance(chosen["forward_batch"], int) or chosen["forward_batch"] < 1:
            raise ConfigError(f"method.forward_batch must be a whole number >= 1, got {chosen['forward_batch']!r}")
        grad_cam_library()  # before the network: a missing extra fails at once
        super().__init__(num_classes, model, **params)
        self.cam = chosen["cam"]
        self.forward_batch = int(chosen["forward_batch"])

    @classmethod
    def label(cls, name: str, params: dict[str, Any]) -> str:
        """``posthoc (scorecam)``."""
        return f"{name} ({params.get('cam', cls.defaults['cam'])})"

    def class_maps(self, images: Tensor, classes: Tensor) -> Tensor:
        """``(N, H, W)`` maps in [0, 1] of class ``classes[n]`` for image ``n``, by pytorch-grad-cam."""
        lib = grad_cam_library()
        targets = [lib.utils.model_targets.ClassifierOutputTarget(int(c)) for c in classes.tolist()]
        network = Classifier(self.backbone, self.head)
        layers = [network.features]
        if self.cam == "ablationcam":
            cam = lib.AblationCAM(network, layers, ablation_layer=lib.ablation_layer.AblationLayer(),
                                  batch_size=self.forward_batch)
        else:
            cam = getattr(lib, CAMS[self.cam])(network, layers)
            cam.batch_size = self.forward_batch  # read by Score-CAM only
        was_training = self.training
        grads = {p: p.grad for p in self.parameters()}
        try:
            with torch.autocast(images.device.type, enabled=False), torch.enable_grad():
                maps = cam(images.float(), targets)
        finally:
            cam.activations_and_grads.release()  # pytorch-grad-cam's hooks, removed however it ends
            for p, g in grads.items():
                p.grad = g
            self.train(was_training)  # pytorch-grad-cam sets evaluation mode
        return torch.from_numpy(maps).to(images.device)

    def localize(self, images: Tensor, logits: Tensor | None = None) -> Tensor:
        if logits is None:
            with torch.no_grad():
                logits = self.predict(images)
        return self.class_maps(images, logits.argmax(dim=1))

    def localize_class(self, images: Tensor, classes: Tensor) -> Tensor:
        return self.class_maps(images, classes)

    def infer(self, images: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            logits = self.predict(images)
        return logits, self.localize(images, logits)
