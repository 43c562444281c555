"""The plug-in's own tests: wsolbench's conformance kit, and the method and pooling against their definitions.

They test the installed package (``pip install ./examples/wsolbench-hide-and-seek``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from wsolbench_hide_and_seek.method import hide, hiding_mask

from wsolbench.errors import ConfigError
from wsolbench.plugin_host import registry
from wsolbench.testing import (
    TINY_MODEL,
    build_method,
    check_method,
    check_pooling,
    make_batch,
)


def test_registered_with_wsolbench():
    assert registry("method").get("hide-and-seek").distribution == "wsolbench-hide-and-seek"
    assert registry("method").get("has").name == "hide-and-seek"
    assert registry("pooling").get("gem").distribution == "wsolbench-hide-and-seek"


def test_conformance_kit():
    # with this plug-in's pooling; `wsolbench run --method hide-and-seek` tries the default one
    check_method("hide-and-seek", model=dataclasses.replace(TINY_MODEL, pooling="gem"), patch_sizes=[0, 8])
    check_pooling("gem")
    check_pooling("gem", p=1.0, learn_p=False)


def _cells(hidden: torch.Tensor, s: int) -> torch.Tensor:
    """Per image, the ``s x s`` grid cells of a ``(N, 1, H, W)`` mask: ``(N, rows, cols, s*s)`` (zero-padded)."""
    n, _, h, w = hidden.shape
    padded = F.pad(hidden.float(), (0, -w % s, 0, -h % s), value=-1.0)
    return padded.unfold(2, s, s).unfold(3, s, s)[:, 0].flatten(3)


@pytest.mark.parametrize("size", [(64, 64), (50, 70)])
def test_hiding_is_whole_grid_patches_with_the_given_probability(size):
    g = torch.Generator().manual_seed(0)
    hidden = hiding_mask(400, size, [16], 0.5, generator=g)
    assert hidden.shape == (400, 1, *size) and hidden.dtype == torch.bool
    cells = _cells(hidden, 16)
    inside = cells >= 0  # the padding of border cells is -1
    cell_hidden = (cells == 1).sum(-1)
    cell_size = inside.sum(-1)
    assert torch.all((cell_hidden == 0) | (cell_hidden == cell_size)), "a patch was hidden in part"
    fraction = (cell_hidden > 0).float().mean().item()
    # 400 images x 16-25 patches of probability 0.5: the fraction is 0.5 +- 0.004 (one standard deviation)
    assert abs(fraction - 0.5) < 0.02


def test_hiding_probability_and_patch_size_zero():
    size = (32, 48)
    assert not hiding_mask(8, size, [8], 0.0).any()
    assert hiding_mask(8, size, [8], 1.0).all()
    assert not hiding_mask(8, size, [0], 1.0).any()


def test_a_mixture_draws_one_patch_size_per_image():
    g = torch.Generator().manual_seed(1)
    hidden = hiding_mask(300, (48, 48), [0, 8, 24], 1.0, generator=g)
    # with hide_prob 1 every patch is hidden unless S = 0: images are all hidden or all visible
    per_image = hidden.flatten(1).float().mean(1)
    assert set(per_image.tolist()) == {0.0, 1.0}
    assert 0.2 < (per_image == 0).float().mean().item() < 0.45  # S = 0 drawn for about a third of them
    g = torch.Generator().manual_seed(2)
    hidden = hiding_mask(300, (48, 48), [8, 24], 0.5, generator=g)
    # each image is made of whole 8x8 patches; those drawn with S = 24 also of whole 24x24 patches
    coarse = _cells(hidden, 24)
    uniform24 = ((coarse == 1).sum(-1) % (24 * 24) == 0).all(-1).all(-1)
    fine = _cells(hidden, 8)
    assert torch.all(((fine == 1).sum(-1) % 64) == 0)
    assert 0.35 < uniform24.float().mean().item() < 0.65


def test_hidden_pixels_take_the_normalised_mean_zero():
    images = torch.randn(2, 3, 16, 16)
    hidden = hiding_mask(2, (16, 16), [4], 0.5, generator=torch.Generator().manual_seed(3))
    out = hide(images, hidden)
    assert torch.all(out[hidden.expand_as(out)] == 0)
    assert torch.equal(out[~hidden.expand_as(out)], images[~hidden.expand_as(out)])


def test_training_sees_hidden_images_and_testing_whole_ones():
    method = build_method("hide-and-seek", num_classes=2, patch_sizes=[8])
    batch = make_batch(2, (32, 32), n=4, masks=False)
    torch.manual_seed(5)
    out = method.training_loss(batch)
    torch.manual_seed(5)
    hidden = hiding_mask(4, (32, 32), [8], 0.5)
    logits, _ = method(hide(batch["image"], hidden))
    assert hidden.any() and not hidden.all()
    assert torch.allclose(out.loss, F.cross_entropy(logits, batch["label"]), atol=1e-6)
    method.eval()
    with torch.no_grad():
        torch.manual_seed(6)
        first = method.predict(batch["image"])
        torch.manual_seed(7)
        second = method.predict(batch["image"])
        whole, _ = method(batch["image"])
    assert torch.equal(first, second) and torch.equal(first, whole)


def test_label_names_the_patch_sizes():
    cls = registry("method").resolve("hide-and-seek")
    assert cls.label("hide-and-seek", {"patch_sizes": [0, 16, 32]}) == "hide-and-seek (S=0,16,32)"
    assert cls.label("hide-and-seek", cls.defaults) == "hide-and-seek (S=16)"


@pytest.mark.parametrize("params", [{"patch_sizes": []}, {"patch_sizes": [-4]}, {"patch_sizes": [8.5]},
                                    {"hide_prob": 1.5}])
def test_bad_parameters_are_refused(params):
    with pytest.raises(ConfigError):
        build_method("hide-and-seek", **params)


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
