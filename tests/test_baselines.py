"""Grad-CAM against independent gradients, All-ones through the evaluation path, U-Net, training masks."""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from torch import nn
from wsolbench_plugins.methods.gradcam import grad_cam

from wsolbench import assembly, config
from wsolbench.errors import ConfigError
from wsolbench.interfaces import Method, ModelSpec, StepOutput
from wsolbench.models import minmax_normalize, upsample
from wsolbench.testing import build_method, make_batch
from wsolbench.training import engine, runner

#: timm's smallest ResNet (five stages at strides 2 to 32, 0.4 M parameters), for tests that train
SMALL = ModelSpec(backbone="test_resnet", pretrained=False)

# -- Grad-CAM -------------------------------------------------------------------
def reference_grad_cam(features: torch.Tensor, score_fn, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM the long way: backward() from each image's class score into retained features."""
    maps = []
    for n in range(features.shape[0]):
        a = features[n : n + 1].detach().clone().requires_grad_(True)
        score_fn(a)[0, classes[n]].backward()
        weights = a.grad.mean(dim=(2, 3), keepdim=True)
        maps.append(torch.relu((weights * a).sum(1))[0].detach())
    return torch.stack(maps)


def test_grad_cam_matches_backward_on_a_tiny_nonlinear_network():
    torch.manual_seed(0)
    head = nn.Sequential(nn.Conv2d(4, 6, 1), nn.ReLU(), nn.Conv2d(6, 3, 1)).double()
    score_fn = lambda a: torch.logsumexp(4 * head(a).flatten(2), dim=2) / 4  # noqa: E731
    features = torch.randn(3, 4, 5, 7, dtype=torch.float64)
    classes = torch.tensor([2, 0, 1])
    maps = grad_cam(score_fn, features, classes)
    assert all(p.grad is None for p in head.parameters())  # only the features' gradient is taken
    expected = reference_grad_cam(features, score_fn, classes)
    assert maps.shape == (3, 5, 7)
    assert torch.allclose(maps.double(), expected, atol=1e-6)
    assert (maps > 0).any() and (maps == 0).any()  # the ReLU acts


def test_grad_cam_of_an_average_pooled_linear_head_is_the_rectified_cam():
    """With s_c = mean(W_c . A) + b_c, dy_c/dA_k = W_ck / (hw): Grad-CAM = ReLU(sum_k W_ck A_k) / (hw)."""
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 2, 1).double()
    features = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    maps = grad_cam(lambda a: conv(a).mean(dim=(2, 3)), features, torch.tensor([1, 0]))
    cam = torch.einsum("kc,nchw->nkhw", conv.weight[:, :, 0, 0], features)
    expected = torch.relu(torch.stack([cam[0, 1], cam[1, 0]])) / 15
    assert torch.allclose(maps.double(), expected.detach(), atol=1e-12)


def test_gradcam_method_localizes_with_independent_gradients_and_leaves_nothing_behind():
    torch.manual_seed(0)
    method = build_method("gradcam", num_classes=3, model=SMALL)
    method.train()
    images = torch.randn(4, 3, 40, 56)
    method(images)  # move the batch-norm statistics away from their initial values
    method.eval()
    with torch.no_grad():  # under no_grad as well: localize turns autograd on for itself
        logits, maps = method.infer(images)
    features = method.backbone(images)[-1].detach()
    expected = reference_grad_cam(features, lambda a: method.head(a)[0], logits.argmax(1))
    expected = minmax_normalize(upsample(expected.unsqueeze(1), (40, 56)).squeeze(1))
    assert torch.allclose(maps, expected, atol=1e-5)
    method.zero_grad(set_to_none=True)
    maps = method.localize(images, logits)
    assert not maps.requires_grad and maps.grad_fn is None
    assert all(p.grad is None for p in method.parameters())
    for module in method.modules():
        assert not (module._forward_hooks or module._backward_hooks or module._forward_pre_hooks)


# -- All-ones -------------------------------------------------------------------
def tiny_config(method: str, tmp_path, *extra: str) -> config.RunConfig:
    sets = [TINY[i + 1] for i in range(0, len(TINY) - 2, 2) if TINY[i] == "--set"]
    return config.resolve(
        method, "synthetic", "quick",
        options={"output_dir": str(tmp_path), "run_name": method, "device": "cpu", "train": {"epochs": 1}},
        sets=sets + list(extra),
    )


def test_allones_scores_f1_neg_zero_and_f1_pos_of_an_all_foreground_mask(tmp_path):
    cfg = tiny_config("allones", tmp_path)
    result = runner.run(cfg)
    results = json.loads((result.run_dir.path / "results.json").read_text())
    test = assembly.build_dataset(cfg).split("test")
    masks = [test[i]["mask"][0] >= 0.5 for i in range(len(test))]
    dice_all_foreground = [2 * m.sum().item() / (m.sum().item() + m.numel()) for m in masks]
    assert results["f1_neg"] == 0.0  # every test image has background, none of it predicted
    assert results["f1_pos"] == pytest.approx(100 * sum(dice_all_foreground) / len(masks), abs=1e-6)
    assert results["cl_error"] is None and results["valid_error"] is None and results["best_epoch"] == -1
    assert not (result.run_dir.path / "metrics.jsonl").exists()  # nothing was trained

    from wsolbench.cli.console import out
    from wsolbench.cli.run import print_results

    with out.capture() as captured:
        print_results(results, str(result.run_dir.path))
    lines = captured.get().splitlines()
    rows = {cells[1].strip(): cells[2].strip() for cells in (line.split("│") for line in lines) if len(cells) > 3}
    assert rows["F1+"] == f"{results['f1_pos']:.2f}"
    assert rows["Err."] == rows["Top-1 Loc"] == rows["Top-5 Loc"] == "-"  # no class prediction
    assert results["top1_loc"] is None and results["gt_known_loc"] is not None


# -- U-Net ----------------------------------------------------------------------
def test_unet_learns_the_masks_and_maps_are_its_probabilities():
    torch.manual_seed(0)
    method = build_method("unet", num_classes=2, model=SMALL, decoder_channels=[32, 16, 16, 16])
    assert method.needs_masks
    batch = make_batch(2, (32, 32), n=4)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-2)
    method.train()
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        out = method.training_step(batch, lambda loss: loss.backward())
        losses.append(float(out.logs["pixel_loss"]))
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]
    method.eval()
    with torch.no_grad():
        _, foreground = method(batch["image"])
        maps = method.localize(batch["image"])
    assert torch.allclose(maps, torch.sigmoid(foreground).squeeze(1))  # probabilities, not min-max scaled
    inside = maps[batch["mask"][:, 0] > 0.5].mean()
    outside = maps[batch["mask"][:, 0] < 0.5].mean()
    assert inside > outside + 0.2


def test_unet_decoder_width_per_skip_connection():
    with pytest.raises(ConfigError, match="needs 4 widths"):
        build_method("unet", decoder_channels=[32, 16])


# -- who sees training masks ------------------------------------------------------
class Spy(Method):
    """Records the keys of every training batch it receives."""

    seen: ClassVar[list[set[str]]]

    def __init__(self, num_classes: int, model=None, **params):
        super().__init__(num_classes, model, **params)
        self.weight = nn.Parameter(torch.ones(num_classes))
        type(self).seen = []

    def training_loss(self, batch):
        type(self).seen.append(set(batch))
        if "mask" in batch:
            assert batch["mask"].shape[-2:] == batch["image"].shape[-2:]
        logits = self.weight * batch["image"].mean(dim=(1, 2, 3))[:, None]
        return StepOutput(F.cross_entropy(logits, batch["label"]), logits=logits.detach())


class MaskSpy(Spy):
    needs_masks = True


@pytest.mark.parametrize("spy, gets_masks", [(Spy, False), (MaskSpy, True)])
def test_engine_gives_training_masks_only_to_methods_that_need_them(spy, gets_masks, tmp_path):
    cfg = tiny_config("cam-avg", tmp_path)
    dataset = assembly.build_dataset(cfg)
    device = torch.device("cpu")
    loader = engine.make_loader(dataset.split("train"), cfg, True, device)
    assert "mask" in next(iter(loader))  # the loader has masks; the engine decides who gets them
    method = spy(num_classes=dataset.num_classes)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    engine.train_one_epoch(method, loader, optimizer, engine.Precision.choose(device, False), cfg, 0)
    assert len(spy.seen) == len(loader)
    assert all(("mask" in keys) == gets_masks for keys in spy.seen)


# -- profiles ---------------------------------------------------------------------
BASELINES = ["cam-avg", "cam-max", "cam-lse", "wildcat", "deepmil", "gradcam", "unet"]


@pytest.mark.parametrize("name", BASELINES)
def test_paper_profile_is_the_papers_baseline_setup(name):
    cfg = config.resolve(name, "synthetic", "paper")
    assert (cfg.model.backbone, cfg.model.pretrained) == ("resnet18", True)
    assert cfg.train.nesterov and cfg.train.momentum > 0
    quick = config.resolve(name, "synthetic", "quick")
    assert quick.model.pretrained is False  # the quick profile trains from scratch (no download)


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_train_with_the_global_paper_settings_and_160_epochs_on_glas(name):
    for dataset in ("synthetic", "glas", "cub"):
        train = dataclasses.asdict(config.resolve(name, dataset, "paper").train)
        expected = {**config.PROFILES["paper"]["train"], **({"epochs": 160} if dataset == "glas" else {})}
        assert {key: train[key] for key in expected} == expected, dataset
