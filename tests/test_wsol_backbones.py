"""WSOL's published backbones: VGG-16 with the CAM modification and ResNet-50 without its last stride.

Each is checked against the same network built independently from torchvision's
models, with the same weights (random: pretrained weights cannot be downloaded here).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from wsolbench import config, models
from wsolbench.errors import ConfigError
from wsolbench.interfaces import ModelSpec
from wsolbench.testing import check_method


def _image(size=(64, 96)):
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))


def test_vgg16_cam_is_vgg16_without_pool5_then_conv6_and_relu():
    torch.manual_seed(0)
    ours = models.build_backbone(ModelSpec("vgg16_cam"), out_indices=(-1,)).eval()
    reference = torchvision.models.vgg16().features[:30].eval()  # conv1_1 ... conv5_3 and its ReLU; [30] is pool5
    body = list(ours.body.parameters())
    assert [p.shape for p in body] == [p.shape for p in reference.parameters()]
    with torch.no_grad():
        for mine, theirs in zip(body, reference.parameters()):
            theirs.copy_(mine)
        x = _image()
        (out,) = ours(x)
        expected = F.relu(F.conv2d(reference(x), ours.conv6.weight, ours.conv6.bias, padding=1))
    assert out.shape == (2, 1024, 4, 6)  # stride 16
    assert ours.conv6.kernel_size == (3, 3) and ours.feature_info.channels() == [1024]
    torch.testing.assert_close(out, expected)
    short = models.build_backbone(ModelSpec("vgg16_cam", backbone_params={"conv6": False})).eval()
    short.body.load_state_dict(ours.body.state_dict())
    with torch.no_grad():
        (conv5,) = short(x)
        torch.testing.assert_close(conv5, reference(x))
    assert short.conv6 is None and short.feature_info.channels() == [512]


def test_resnet50_without_the_last_stride_is_not_dilated():
    torch.manual_seed(0)
    ours = models.build_backbone(ModelSpec("resnet50", output_stride=16, backbone_params={"dilate": False}),
                                 out_indices=(-1,)).eval()
    with torch.no_grad():  # timm zeroes each block's last batch-norm scale: residual branches would add nothing
        for m in ours.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    dilated = models.build_backbone(ModelSpec("resnet50", output_stride=16), out_indices=(-1,)).eval()
    dilated.load_state_dict(ours.state_dict())
    # wsolevaluation's ResNet-50: torchvision's with the first block of the last stage at stride 1
    reference = torchvision.models.resnet50().eval()
    reference.layer4[0].conv2.stride = (1, 1)
    reference.layer4[0].downsample[0].stride = (1, 1)
    missing, unexpected = reference.load_state_dict(ours.state_dict(), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    assert all(m.dilation == (1, 1) for m in ours.modules() if isinstance(m, torch.nn.Conv2d))
    assert any(m.dilation == (2, 2) for m in dilated.modules() if isinstance(m, torch.nn.Conv2d))
    x = _image()
    with torch.no_grad():
        body = torch.nn.Sequential(*list(reference.children())[:-2])
        expected = body(x)
        (out,) = ours(x)
        (other,) = dilated(x)
    assert out.shape == (2, 2048, 4, 6)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(other, expected, atol=1e-3)  # timm's output_stride dilates: another network


def test_bad_backbone_settings_are_one_paragraph_errors():
    with pytest.raises(ConfigError, match="output_stride = 0"):
        models.build_backbone(ModelSpec("vgg16_cam", output_stride=8))
    with pytest.raises(ConfigError, match="dilate must be true or false"):
        models.build_backbone(ModelSpec("resnet18", output_stride=16, backbone_params={"dilate": "no"}))


@pytest.mark.parametrize(("name", "params"), [("posthoc", {}), ("acol", {"hidden_channels": 16})])
def test_methods_train_on_vgg16_cam_through_the_conformance_kit(name, params):
    conv6 = name != "acol"
    check_method(name, model=ModelSpec("vgg16_cam", backbone_params={"conv6": conv6}), size=(32, 48), **params)


def test_the_backbones_resolve_through_the_paper_profiles():
    acol = config.resolve("acol", "cub", "paper")
    assert (acol.model.backbone, acol.model.output_stride, acol.model.backbone_params) == ("vgg16_cam", 0,
                                                                                         {"conv6": False})
    posthoc = config.resolve("posthoc", "cub", "paper")
    assert (posthoc.model.backbone, posthoc.model.backbone_params) == ("vgg16_cam", {})
    for name in ("has", "adl", "cutmix"):
        cfg = config.resolve(name, "cub", "paper")
        assert (cfg.model.backbone, cfg.model.output_stride, cfg.model.backbone_params) == ("resnet50", 16,
                                                                                          {"dilate": False})
