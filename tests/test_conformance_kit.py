"""The conformance kit catches what it promises to catch: each check against a plug-in that breaks it."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch.nn.functional as F
from torch import Tensor, nn
from wsolbench_plugins.datasets.synthetic import Synthetic

from wsolbench.interfaces import Method, Pooling, StepOutput
from wsolbench.models import minmax_normalize, select_class_maps
from wsolbench.plugin_host import registry
from wsolbench.registry import Entry
from wsolbench.testing import check_dataset, check_method, check_pooling


class TinyCam(Method):
    """A correct method small enough for these tests: one 1x1 convolution gives the class maps."""

    def __init__(self, num_classes: int, model: Any = None, **params: Any):
        super().__init__(num_classes, model, **params)
        self.conv = nn.Conv2d(3, num_classes, kernel_size=1)

    def training_loss(self, batch: dict[str, Tensor]) -> StepOutput:
        logits = self.conv(batch["image"]).mean(dim=(2, 3))
        loss = F.cross_entropy(logits, batch["label"])
        return StepOutput(loss, {}, logits.detach())

    def predict(self, images: Tensor) -> Tensor:
        return self.conv(images).mean(dim=(2, 3))

    def localize(self, images: Tensor, logits: Tensor | None = None) -> Tensor:
        maps = self.conv(images)
        chosen = maps.mean(dim=(2, 3)) if logits is None else logits
        return minmax_normalize(select_class_maps(maps, chosen.argmax(dim=1))).detach()


class RawMaps(TinyCam):
    def localize(self, images: Tensor, logits: Tensor | None = None) -> Tensor:
        return (super().localize(images, logits) - 0.5) * 3


class SwappedAxes(TinyCam):
    def localize(self, images: Tensor, logits: Tensor | None = None) -> Tensor:
        return super().localize(images, logits).transpose(1, 2)


class PeeksAtMasks(TinyCam):
    def training_loss(self, batch: dict[str, Tensor]) -> StepOutput:
        out = super().training_loss(batch)
        return StepOutput(out.loss + 0 * batch["mask"].sum(), out.logs, out.logits)


class DivergingLoss(TinyCam):
    def training_loss(self, batch: dict[str, Tensor]) -> StepOutput:
        out = super().training_loss(batch)
        return StepOutput(out.loss * float("nan"), out.logs, out.logits)


class LeavesGradients(TinyCam):
    needs_grad_at_inference = True

    def localize(self, images: Tensor, logits: Tensor | None = None) -> Tensor:
        self.conv(images).sum().backward()  # a gradient-based method that forgets to clean up
        return super().localize(images, logits)


class AssumesContiguousMemory(TinyCam):
    """Reads the images' storage in row-major order, as a hand-written kernel might."""

    def _contiguous_view(self, images: Tensor) -> Tensor:
        n, c, h, w = images.shape
        return images.as_strided((n, c, h, w), (c * h * w, h * w, w, 1))

    def training_loss(self, batch: dict[str, Tensor]) -> StepOutput:
        return super().training_loss(dict(batch, image=self._contiguous_view(batch["image"])))

    def predict(self, images: Tensor) -> Tensor:
        return super().predict(self._contiguous_view(images))

    def localize(self, images: Tensor, logits: Tensor | None = None) -> Tensor:
        return super().localize(self._contiguous_view(images), logits)


class TinyAvg(Pooling):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.mean(dim=(2, 3)), x


class MixesTheBatch(TinyAvg):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        scores, maps = super().forward(x)
        return scores - scores.mean(dim=0, keepdim=True), maps


class DetachesItsInput(TinyAvg):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return super().forward(x.detach())


class PooledMaps(TinyAvg):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        scores, maps = super().forward(x)
        return scores, maps.mean(dim=(2, 3), keepdim=True)


SMALL = {"image_size": 24, "n_train": 3, "n_valid": 2, "n_test": 2}


class LyingLabels(Synthetic):
    def split_labels(self, name: str) -> list[int]:
        return [(y + 1) % self.num_classes for y in super().split_labels(name)]


class SoftMasks(Synthetic):
    def split(self, name: str, train: bool | None = None) -> Any:
        items = super().split(name, train)
        return [{**items[i], "mask": items[i]["mask"] * 0.5} for i in range(len(items))]


class RaggedTraining(Synthetic):
    def split(self, name: str, train: bool | None = None) -> Any:
        items = super().split(name, train)
        return [{**items[i], "image": items[i]["image"][:, i:, :]} for i in range(len(items))]


class BoxesOutside(Synthetic):
    def split(self, name: str, train: bool | None = None) -> Any:
        items = super().split(name, train)
        return [{**items[i], "boxes": items[i]["boxes"] + 1000} for i in range(len(items))]


class FloatIgnore(Synthetic):
    def split(self, name: str, train: bool | None = None) -> Any:
        items = super().split(name, train)
        return [{**items[i], "ignore": items[i]["mask"]} for i in range(len(items))]


@pytest.fixture
def registered(monkeypatch):
    """Register ``cls`` under ``name`` in the ``kind`` registry for one test."""

    def add(kind: str, name: str, cls: type) -> str:
        monkeypatch.setitem(registry(kind)._entries, name, Entry(name, cls))
        return name

    return add


def test_correct_tiny_plugins_pass(registered):
    check_method(registered("method", "tiny-cam", TinyCam))
    check_pooling(registered("pooling", "tiny-avg", TinyAvg))


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (RawMaps, "not within [0, 1]"),
        (SwappedAxes, "expected (N, H, W) = (2, 64, 48)"),
        (PeeksAtMasks, "does not declare needs_masks = True"),
        (DivergingLoss, "the training loss is nan"),
        (LeavesGradients, "inference left gradients"),
        (AssumesContiguousMemory, "differ between channels-last and contiguous tensors"),
    ],
)
def test_check_method_names_what_is_wrong(registered, cls, message):
    with pytest.raises(AssertionError, match=f"method 'broken' \\({cls.__name__}\\).*{re.escape(message)}"):
        check_method(registered("method", "broken", cls))


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (MixesTheBatch, "depend on the other images"),
        (DetachesItsInput, "no gradient reaches the input"),
        (PooledMaps, "expected (N, K, h, w)"),
    ],
)
def test_check_pooling_names_what_is_wrong(registered, cls, message):
    with pytest.raises(AssertionError, match=f"pooling 'broken'.*{re.escape(message)}"):
        check_pooling(registered("pooling", "broken", cls))


def test_check_dataset_passes_the_synthetic_set_and_names_what_is_wrong(registered):
    check_dataset(registered("dataset", "fine", Synthetic), **SMALL)
    for cls, message in [(LyingLabels, "but split_labels says"), (SoftMasks, "mask values must be 0 or 1"),
                         (RaggedTraining, "training items of split 'train' differ in size"),
                         (BoxesOutside, "boxes must be inclusive (x0, y0, x1, y1)"),
                         (FloatIgnore, "ignore must be a bool tensor")]:
        with pytest.raises(AssertionError, match=f"dataset 'broken'.*{re.escape(message)}"):
            check_dataset(registered("dataset", "broken", cls), **SMALL)


def test_a_method_gets_masks_only_when_it_declares_it(registered):
    class NeedsMasks(PeeksAtMasks):
        needs_masks = True

    check_method(registered("method", "supervised", NeedsMasks))
