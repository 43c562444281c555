"""HaS, ADL, CutMix, ACoL and SPG: each method's mechanism on hand-made tensors, one step, its paper profile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from wsolbench_plugins.methods.acol import erase
from wsolbench_plugins.methods.adl import AttentionDropout
from wsolbench_plugins.methods.cutmix import cutmix_box, paste
from wsolbench_plugins.methods.has import hide, hiding_mask
from wsolbench_plugins.methods.spg import IGNORED, guidance_mask, guided_loss

from wsolbench import config
from wsolbench.errors import ConfigError
from wsolbench.interfaces import ModelSpec
from wsolbench.models import minmax_normalize, select_class_maps
from wsolbench.plugin_host import registry
from wsolbench.testing import build_method, check_method, make_batch

NEW = ["has", "adl", "cutmix", "acol", "spg"]


@pytest.mark.parametrize("name", NEW)
def test_one_training_step_through_the_conformance_kit(name):
    check_method(name)


# -- the paper profiles, through the configuration --------------------------------
#: wsolevaluation's CUB protocol (README and issue #60), written out here rather than read from the code:
#: ResNet-50 without its last stride, undilated, or VGG-16 as ACoL uses it (up to conv5_3, no conv6)
RESNET50 = {"backbone": "resnet50", "pretrained": True, "output_stride": 16, "backbone_params": {"dilate": False}}
VGG16_ACOL = {"backbone": "vgg16_cam", "pretrained": True, "output_stride": 0, "backbone_params": {"conv6": False}}
CUB_TRAIN = {"epochs": 50, "batch_size": 32, "weight_decay": 5e-4, "lr_step": 15}
PAPER_PARAMS = {
    "has": {"patch_sizes": [0, 16, 32, 44, 56], "hide_prob": 0.5},
    "adl": {"drop_rate": 0.75, "drop_threshold": 0.9, "positions": "auto"},
    "cutmix": {"beta": 1.0, "cutmix_prob": 1.0},
    "acol": {"threshold": 0.7, "hidden_channels": 1024},
    # wsolevaluation's spg_threshold_{1,2,3}{h,l} and its branches' 1024 channels
    "spg": {"thresholds": [[0.7, 0.01], [0.5, 0.05], [0.7, 0.1]], "hidden_channels": 1024, "min_foreground": 30},
}


@pytest.mark.parametrize("name", NEW)
def test_paper_profile_on_cub_is_wsolevaluations(name):
    cfg = config.resolve(name, "cub", "paper")
    got = {"backbone": cfg.model.backbone, "pretrained": cfg.model.pretrained,
           "output_stride": cfg.model.output_stride, "backbone_params": cfg.model.backbone_params,
           "epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size, "weight_decay": cfg.train.weight_decay,
           "lr_step": cfg.train.lr_step}
    assert got == {**(VGG16_ACOL if name == "acol" else RESNET50), **CUB_TRAIN}
    assert cfg.method_params == PAPER_PARAMS[name]
    # the shared settings stay the global profile's
    assert (cfg.train.lr, cfg.train.schedule, cfg.train.lr_gamma, cfg.train.nesterov) == (1e-3, "step", 0.1, True)


@pytest.mark.parametrize("name", NEW)
def test_paper_profile_on_glas_trains_like_the_other_baselines(name):
    cfg = config.resolve(name, "glas", "paper")
    assert (cfg.model.backbone, cfg.train.epochs, cfg.train.batch_size) == ("resnet18", 160, 8)
    assert cfg.method_params == PAPER_PARAMS[name]


def test_has_is_also_known_as_hide_and_seek():
    assert registry("method").get("hide-and-seek").name == "has"
    assert registry("method").get("has").distribution == "wsolbench"


# -- HaS ----------------------------------------------------------------------------
def _cells(hidden: torch.Tensor, s: int) -> torch.Tensor:
    """Per image, the ``s x s`` grid cells of a ``(N, 1, H, W)`` mask: ``(N, rows, cols, s*s)`` (padding -1)."""
    _, _, h, w = hidden.shape
    padded = F.pad(hidden.float(), (0, -w % s, 0, -h % s), value=-1.0)
    return padded.unfold(2, s, s).unfold(3, s, s)[:, 0].flatten(3)


@pytest.mark.parametrize("size", [(64, 64), (50, 70)])
def test_has_hides_whole_grid_patches_with_the_given_probability(size):
    hidden = hiding_mask(400, size, [16], 0.5, generator=torch.Generator().manual_seed(0))
    assert hidden.shape == (400, 1, *size) and hidden.dtype == torch.bool
    cells = _cells(hidden, 16)
    cell_hidden, cell_size = (cells == 1).sum(-1), (cells >= 0).sum(-1)
    assert torch.all((cell_hidden == 0) | (cell_hidden == cell_size)), "a patch was hidden in part"
    # 400 images x 16-25 patches of probability 0.5: the fraction is 0.5 +- 0.004 (one standard deviation)
    assert abs((cell_hidden > 0).float().mean().item() - 0.5) < 0.02


def test_has_probability_zero_one_and_patch_size_zero():
    assert not hiding_mask(8, (32, 48), [8], 0.0).any()
    assert hiding_mask(8, (32, 48), [8], 1.0).all()
    assert not hiding_mask(8, (32, 48), [0], 1.0).any()


def test_has_draws_one_patch_size_per_image():
    hidden = hiding_mask(300, (48, 48), [0, 8, 24], 1.0, generator=torch.Generator().manual_seed(1))
    per_image = hidden.flatten(1).float().mean(1)
    assert set(per_image.tolist()) == {0.0, 1.0}  # with probability 1 an image is all hidden unless S = 0
    assert 0.2 < (per_image == 0).float().mean().item() < 0.45  # S = 0 for about a third


def test_has_fills_hidden_pixels_with_the_mean_of_the_normalised_images():
    images = torch.randn(2, 3, 16, 16)
    hidden = hiding_mask(2, (16, 16), [4], 0.5, generator=torch.Generator().manual_seed(3))
    out = hide(images, hidden)
    every = hidden.expand_as(out)
    assert torch.all(out[every] == 0) and torch.equal(out[~every], images[~every])


def test_has_hides_in_training_only():
    method = build_method("has", num_classes=2, patch_sizes=[8])
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
    assert registry("method").resolve("has").label("has", {"patch_sizes": [0, 16]}) == "has (S=0,16)"


# -- ADL ----------------------------------------------------------------------------
def _features() -> torch.Tensor:
    """Two images, two channels, 2 x 3 positions: channel means 0..5 (image 0) and -1..4 (image 1)."""
    base = torch.arange(6.0).view(1, 2, 3)
    x = torch.stack([torch.cat([base, base]), torch.cat([base - 2, base])])  # means: base, base - 1
    return x


def test_adl_is_the_identity_in_evaluation():
    layer = AttentionDropout(drop_rate=1.0, drop_threshold=0.5).eval()
    x = _features()
    assert torch.equal(layer(x), x)


def test_adl_drop_mask_hides_where_the_attention_reaches_the_threshold():
    layer = AttentionDropout(drop_rate=1.0, drop_threshold=0.8).train()  # always the drop mask
    x = _features()
    out = layer(x)
    # image 0: means 0..5, 0.8 * 5 = 4: positions with mean >= 4 (4, 5) are zero
    # image 1: means -1..4, 0.8 * 4 = 3.2: positions with mean >= 3.2 (only 4) are zero
    keep = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.float32).view(2, 1, 2, 3)
    assert torch.equal(out, x * keep)


def test_adl_importance_map_is_the_sigmoid_of_the_channel_mean():
    layer = AttentionDropout(drop_rate=0.0, drop_threshold=0.8).train()  # never the drop mask
    x = _features()
    means = torch.stack([torch.arange(6.0), torch.arange(6.0) - 1]).view(2, 1, 2, 3)
    assert torch.allclose(layer(x), x / (1 + torch.exp(-means)))


def test_adl_chooses_the_drop_mask_with_probability_drop_rate_once_per_step():
    layer = AttentionDropout(drop_rate=0.75, drop_threshold=0.8).train()
    x = _features() + 10.0  # no zero feature: only the drop mask gives zeros
    torch.manual_seed(0)
    dropped = [bool((layer(x) == 0).any()) for _ in range(2000)]
    assert abs(sum(dropped) / 2000 - 0.75) < 0.03  # 0.75 +- 0.01 (one standard deviation)


def test_adl_layers_sit_where_wsolevaluation_puts_them():
    method = build_method("adl", model=ModelSpec(backbone="resnet50"))
    assert method.positions == ["layer3.0", "layer4.0", "layer4.2"]
    layers = [n for n, m in method.named_modules() if isinstance(m, AttentionDropout)]
    assert layers == ["backbone.layer3.0.1", "backbone.layer4.0.1", "backbone.layer4.2.1"]
    named = build_method("adl", positions=["layer2.1"])
    assert [n for n, m in named.named_modules() if isinstance(m, AttentionDropout)] == ["backbone.layer2.1.1"]
    with pytest.raises(ConfigError, match="no module 'layer9.0'"):
        build_method("adl", positions=["layer9.0"])
    with pytest.raises(ConfigError):
        build_method("adl", drop_rate=1.5)


def test_adl_method_in_evaluation_is_cam_on_the_same_weights():
    method = build_method("adl").eval()
    images = make_batch(2, (32, 32), n=2, masks=False)["image"]
    with torch.no_grad():
        logits, maps = method(images)
        features = images
        for name, module in method.backbone.named_children():
            features = module(features)
        plain_logits, plain_maps = method.head(features)
    assert torch.equal(logits, plain_logits) and torch.equal(maps, plain_maps)


# -- CutMix -------------------------------------------------------------------------
def test_cutmix_label_weights_equal_the_pasted_area():
    n, h, w = 4, 20, 30
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, h, w).clone()  # image k is all k
    order = torch.tensor([1, 2, 3, 0])
    g = torch.Generator().manual_seed(0)
    for lam in (0.0, 0.3, 0.7, 0.95):
        box = cutmix_box(h, w, lam, generator=g)
        mixed, pasted = paste(images, order, box)
        from_other = (mixed[:, 0] == order.view(n, 1, 1).float()).float().mean(dim=(1, 2))
        assert torch.allclose(from_other, torch.full((n,), pasted))
        assert torch.equal(mixed[mixed != images], images[order][mixed != images])


def test_cutmix_box_follows_the_drawn_lambda_away_from_the_border():
    torch.manual_seed(0)
    sides = []
    for _ in range(300):
        y0, y1, x0, x1 = cutmix_box(100, 100, 0.75)  # side int(100 * sqrt(0.25)) = 50, half 25 each way
        assert 0 <= y0 <= y1 <= 100 and 0 <= x0 <= x1 <= 100
        sides.append((y1 - y0, x1 - x0))
    assert max(sides) == (50, 50) and all(a <= 50 and b <= 50 for a, b in sides)


def test_cutmix_loss_weights_the_two_labels_by_area():
    method = build_method("cutmix", num_classes=3)
    batch = make_batch(3, (32, 32), n=4, masks=False)
    torch.manual_seed(3)
    out = method.training_loss(batch)
    torch.manual_seed(3)
    mixed, order, pasted = method.mix(batch["image"])
    logits, _ = method(mixed)
    expected = (1 - pasted) * F.cross_entropy(logits, batch["label"]) + pasted * F.cross_entropy(
        logits, batch["label"][order])
    assert 0 < pasted < 1 and torch.allclose(out.loss, expected, atol=1e-6)


def test_cutmix_probability_and_beta_zero_leave_the_batch_alone():
    images = make_batch(2, (16, 16), n=4, masks=False)["image"]
    assert build_method("cutmix", cutmix_prob=0.0).mix(images) is None
    assert build_method("cutmix", beta=0.0).mix(images) is None
    half = build_method("cutmix", cutmix_prob=0.5)
    torch.manual_seed(0)
    mixed = sum(half.mix(images) is not None for _ in range(1000))
    assert abs(mixed / 1000 - 0.5) < 0.05
    with pytest.raises(ConfigError):
        build_method("cutmix", cutmix_prob=2.0)


# -- ACoL ---------------------------------------------------------------------------
def test_acol_erase_zeroes_where_the_map_reaches_the_threshold():
    features = torch.arange(1.0, 13.0).view(1, 3, 2, 2)
    attention = torch.tensor([[[0.2, 0.7], [0.9, 0.69]]])
    out = erase(features, attention, 0.7)
    expected = features.clone()
    expected[:, :, 0, 1] = 0
    expected[:, :, 1, 0] = 0
    assert torch.equal(out, expected)


def test_acol_second_classifier_sees_zeros_where_the_first_map_exceeds_the_threshold():
    method = build_method("acol", num_classes=3, hidden_channels=8, threshold=0.6).train()
    images = make_batch(3, (32, 32), n=2, masks=False)["image"]
    labels = torch.tensor([2, 0])
    seen = {}
    original = method.classifier_b.forward
    method.classifier_b.forward = lambda x: seen.setdefault("b", x.detach().clone()) is not None and original(x)
    out = method.branches(images, labels)
    features = method.backbone(images)[-1]
    maps_a = method.classifier_a(features)[1]
    attention = minmax_normalize(select_class_maps(maps_a, labels))
    high = attention >= 0.6
    assert high.any() and (~high).any()
    assert torch.all(seen["b"].permute(1, 0, 2, 3)[:, high] == 0)
    assert torch.allclose(seen["b"].permute(1, 0, 2, 3)[:, ~high], features.detach().permute(1, 0, 2, 3)[:, ~high])
    loss = method.training_loss({"image": images, "label": labels}).loss
    expected = F.cross_entropy(out["scores_a"], labels) + F.cross_entropy(out["scores_b"], labels)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_acol_map_is_the_maximum_of_both_normalised_maps():
    method = build_method("acol", num_classes=3, hidden_channels=0).eval()
    images = make_batch(3, (32, 32), n=2, masks=False)["image"]
    with torch.no_grad():
        out = method.branches(images)
        logits, fused = method(images)
    assert torch.equal(logits, out["scores_a"])
    for n in range(2):
        for k in range(3):
            a, b = out["maps_a"][n, k], out["maps_b"][n, k]
            na, nb = (a - a.min()) / (a.max() - a.min()), (b - b.min()) / (b.max() - b.min())
            assert torch.allclose(fused[n, k], torch.maximum(na, nb), atol=1e-6)
    with pytest.raises(ConfigError):
        build_method("acol", threshold=-0.1)


# -- SPG ----------------------------------------------------------------------------
def test_spg_guidance_is_foreground_above_high_background_below_low_ignored_between():
    attention = torch.tensor([[0.9, 0.75, 0.7, 0.5], [0.3, 0.1, 0.09, 0.0]]).view(1, 1, 2, 4)
    mask = guidance_mask(attention, high=0.7, low=0.1, min_foreground=0)
    x = IGNORED
    assert torch.equal(mask, torch.tensor([[1, 1, x, x], [x, x, 0, 0]], dtype=torch.float32).view(1, 1, 2, 4))


def test_spg_small_foreground_falls_back_to_a_share_of_the_maximum_and_background_wins():
    # one pixel above 0.7 (< 2 wanted): the foreground is what exceeds 0.7 * 0.8 = 0.56
    attention = torch.tensor([0.8, 0.6, 0.5, 0.2]).view(1, 1, 1, 4)
    assert guidance_mask(attention, 0.7, 0.1, min_foreground=2).flatten().tolist() == [1, 1, IGNORED, IGNORED]
    # a faint map: its fallback foreground (> 0.7 * 0.05) lies below the low threshold, so it is background
    faint = torch.tensor([0.05, 0.04, 0.0, 0.0]).view(1, 1, 1, 4)
    assert guidance_mask(faint, 0.7, 0.1, min_foreground=2).flatten().tolist() == [0, 0, 0, 0]
    # per image: the second image alone falls back (0.4 < 0.7 * 0.6)
    both = torch.stack([torch.tensor([0.9, 0.8, 0.0, 0.0]), torch.tensor([0.6, 0.4, 0.0, 0.0])]).view(2, 1, 1, 4)
    assert guidance_mask(both, 0.7, 0.1, 2).flatten(1).tolist() == [[1, 1, 0, 0], [1, IGNORED, 0, 0]]


def test_spg_guided_loss_is_the_cross_entropy_of_the_known_pixels():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0]).view(1, 1, 1, 4)
    mask = torch.tensor([1.0, 0.0, IGNORED, 1.0]).view(1, 1, 1, 4)
    by_hand = -(torch.log(torch.sigmoid(torch.tensor(2.0))) + torch.log(1 - torch.sigmoid(torch.tensor(-1.0)))
                + torch.log(torch.sigmoid(torch.tensor(3.0)))) / 3
    assert torch.allclose(guided_loss(logits, mask), by_hand)
    nothing = logits.clone().requires_grad_(True)
    zero = guided_loss(nothing, torch.full_like(mask, IGNORED))
    zero.backward()
    assert zero.item() == 0.0 and torch.equal(nothing.grad, torch.zeros_like(logits))


def test_spg_branches_sit_after_the_first_block_and_at_the_ends_of_the_last_two_stages():
    method = build_method("spg", num_classes=3, hidden_channels=8).eval()
    images = make_batch(3, (32, 32), n=2, masks=False)["image"]
    b = method.backbone
    with torch.no_grad():
        x = b.maxpool(b.act1(b.bn1(b.conv1(images))))
        x = b.layer2(b.layer1(x))
        first = b.layer3[0](x)
        stage = b.layer3(x)
        last = b.layer4(stage)
        out = method.branches(images)
        assert method.split_stage == "layer3"
        assert torch.allclose(out["b1"], method.branch_b_shared(method.branch_b1(first)), atol=1e-5)
        assert torch.allclose(out["b2"], method.branch_b_shared(method.branch_b2(stage)), atol=1e-5)
        assert torch.allclose(out["c"], method.branch_c(last), atol=1e-5)
        logits, maps = method(images)  # evaluation: the CAM alone, on the same features
        assert torch.allclose(logits, out["scores"], atol=1e-5) and torch.allclose(maps, out["maps"], atol=1e-5)


def test_spg_loss_is_the_classification_loss_plus_the_three_guided_losses():
    method = build_method("spg", num_classes=3, hidden_channels=8, min_foreground=2).train()
    batch = make_batch(3, (32, 32), n=2, masks=False)
    out = method.training_loss(batch)
    method.eval()  # the same numbers without batch-norm statistics changing between the two passes
    with torch.no_grad():
        got = method.training_loss(batch)
        parts = method.branches(batch["image"])
    up = {k: F.interpolate(parts[k], size=(32, 32), mode="bilinear", align_corners=False) for k in ("b1", "b2", "c")}
    cam = F.interpolate(parts["maps"][torch.arange(2), batch["label"]][:, None], size=(32, 32), mode="bilinear",
                        align_corners=False)
    lo, hi = cam.amin(dim=(2, 3), keepdim=True), cam.amax(dim=(2, 3), keepdim=True)
    attention = (cam - lo) / (hi - lo)
    fused = (torch.sigmoid(up["b1"]) + torch.sigmoid(up["b2"])) / 2
    expected = (F.cross_entropy(parts["scores"], batch["label"])
                + guided_loss(up["b2"], guidance_mask(attention, 0.7, 0.01, 2))
                + guided_loss(up["b1"], guidance_mask(torch.sigmoid(up["b2"]), 0.5, 0.05, 2))
                + guided_loss(up["c"], guidance_mask(fused, 0.7, 0.1, 2)))
    assert torch.allclose(got.loss, expected, atol=1e-5)
    assert set(out.logs) == {"loss", "loss_cls", "loss_b1", "loss_b2", "loss_c"}
    with pytest.raises(ConfigError, match="three \\[high, low\\] pairs"):
        build_method("spg", thresholds=[[0.1, 0.7], [0.5, 0.05], [0.7, 0.1]])
