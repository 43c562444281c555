"""The plug-in's own tests: wsolbench's conformance kit, and the dataset and pooling against their definitions.

They test the installed package (``pip install ./examples/wsolbench-shapes``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from wsolbench_shapes.dataset import draw

from wsolbench.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsolbench.errors import ConfigError
from wsolbench.plugin_host import registry
from wsolbench.testing import TINY_MODEL, check_dataset, check_method, check_pooling


def test_registered_with_wsolbench():
    assert registry("dataset").get("shapes").distribution == "wsolbench-shapes"
    assert registry("pooling").get("gem").distribution == "wsolbench-shapes"


def test_conformance_kit():
    check_dataset("shapes", image_size=32, n_train=4, n_valid=2, n_test=2)
    check_method("cam-avg", model=dataclasses.replace(TINY_MODEL, pooling="gem"))
    check_pooling("gem")
    check_pooling("gem", p=1.0, learn_p=False)


def test_shapes_are_discs_and_squares_whose_masks_are_their_pixels():
    for index in range(20):
        image, label, mask = draw(3, "train", index, 48)
        assert label == index % 2 and image.shape == (48, 48, 3) and mask.shape == (48, 48)
        ys, xs = mask.nonzero()
        height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        filled = mask.sum() / (height * width)
        # a square fills its bounding box; a disc pi / 4 of it (up to the pixel grid)
        assert filled == 1.0 if label == 1 else abs(filled - 3.14159 / 4) < 0.06, (index, filled)
        assert abs(int(height) - int(width)) <= 1


def test_items_are_the_drawings_normalised_and_depend_on_seed_split_and_index():
    data = registry("dataset").create("shapes", seed=5, image_size=32, n_train=3)
    item = data.split("train")[2]
    image, label, mask = draw(5, "train", 2, 32)
    pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(item["image"], (pixels - mean) / std)
    assert item["label"] == label == 0 and torch.equal(item["mask"][0].bool(), torch.from_numpy(mask))
    assert data.split_labels("train") == [0, 1, 0]
    assert not (draw(5, "train", 2, 32)[0] == draw(6, "train", 2, 32)[0]).all()
    assert not (draw(5, "train", 2, 32)[0] == draw(5, "test", 2, 32)[0]).all()


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError):
        registry("dataset").create("shapes", image_size=8)
    with pytest.raises(ConfigError):
        registry("dataset").create("shapes", n_valid=0)


def _gem_pooling(**params):
    return registry("pooling").create("gem", num_classes=2, in_channels=3, **params).double()


def test_gem_against_its_formula():
    pooling = _gem_pooling(p=2.5)
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64) * 3
    x[0, 0, 0, 0] = -1.0  # clamped to eps
    scores, maps = pooling(x)
    weight, bias = pooling.classifier.weight.flatten(1), pooling.classifier.bias
    expected = torch.empty(2, 2, dtype=torch.float64)
    for n in range(2):
        for k in range(2):
            total = bias[k].clone()
            for c in range(3):
                values = [max(float(v), 1e-6) ** 2.5 for v in x[n, c].flatten()]
                total += weight[k, c] * (sum(values) / len(values)) ** (1 / 2.5)
            expected[n, k] = total
    assert torch.allclose(scores, expected, atol=1e-9)
    cams = torch.einsum("kc,nchw->nkhw", weight, x) + bias.view(1, 2, 1, 1)
    assert torch.allclose(maps, cams, atol=1e-12)


def test_gem_is_cam_avg_at_p_one_and_tends_to_max():
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    pooling = _gem_pooling(p=1.0)
    scores, maps = pooling(x)
    assert torch.allclose(scores, maps.mean(dim=(2, 3)), atol=1e-12)  # average of the CAMs
    assert torch.allclose(_gem_pooling(p=200.0).gem(x), x.amax(dim=(2, 3)), atol=0.03)
    means = torch.stack([_gem_pooling(p=p).gem(x) for p in (1.0, 2.0, 4.0, 8.0)])
    assert torch.all(means.diff(dim=0) > 0)  # the generalized mean grows with p


def test_gem_learns_its_exponent_unless_fixed():
    assert _gem_pooling().p.requires_grad
    assert not _gem_pooling(learn_p=False).p.requires_grad
    with pytest.raises(ConfigError):
        _gem_pooling(p=0.0)
