"""Each pooling against its formula on small hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from wsolbench import config
from wsolbench.errors import ConfigError
from wsolbench.plugin_host import registry

# one image, two classes, 2x3 positions
X = torch.tensor(
    [[[[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]],
      [[-3.0, 0.0, 2.0], [1.5, -0.5, 6.0]]]],
    dtype=torch.float64,
)


def pooling(name: str, num_classes: int = 2, in_channels: int | None = None, **params):
    return registry("pooling").create(name, num_classes=num_classes, in_channels=in_channels, **params).double()


def test_avg_and_max_against_their_formulas():
    scores, maps = pooling("avg")(X)
    assert torch.allclose(scores, torch.tensor([[5.5 / 6, 6.0 / 6]], dtype=torch.float64))
    scores, maps = pooling("max")(X)
    assert torch.equal(scores, torch.tensor([[4.0, 6.0]], dtype=torch.float64))
    assert maps is X  # the class maps are the input maps


def lse_by_hand(x: torch.Tensor, r: float) -> torch.Tensor:
    return torch.log(torch.exp(r * x.flatten(2)).mean(2)) / r


@pytest.mark.parametrize("r", [0.5, 1.0, 3.0])
def test_lse_equals_its_formula(r):
    scores, _ = pooling("lse", r=r)(X)
    assert torch.allclose(scores, lse_by_hand(X, r), atol=1e-12)


def test_lse_tends_to_max_and_to_mean():
    lse = lambda r: pooling("lse", r=r)(X)[0]  # noqa: E731
    maximum, mean = X.amax((2, 3)), X.mean((2, 3))
    # log(mean exp(r x)) / r lies in [max - log(P)/r, max]
    assert torch.all(lse(1e4) <= maximum) and torch.allclose(lse(1e4), maximum, atol=math.log(6) / 1e4 + 1e-12)
    assert torch.allclose(lse(1e-6), mean, atol=1e-5)
    values = torch.stack([lse(r) for r in (1e-3, 0.1, 1.0, 10.0, 100.0)])
    assert torch.all(values.diff(dim=0) > 0)  # strictly between mean and max, increasing with r


def test_lse_does_not_overflow_and_rejects_bad_sharpness():
    scores, _ = pooling("lse", r=10.0)(X.float() * 1000)
    assert torch.isfinite(scores).all()
    with pytest.raises(ConfigError, match="pooling.r"):
        pooling("lse", r=0.0)


def test_wildcat_with_kmax_one_position_and_alpha_zero_is_max_pooling():
    wildcat = pooling("wildcat", modalities=1, kmax=1, kmin=1, alpha=0.0)
    scores, maps = wildcat(X)
    max_scores, _ = pooling("max")(X)
    assert torch.equal(scores, max_scores)
    assert torch.equal(maps, X)


def test_wildcat_formula_with_modalities_counts_and_fractions():
    # two modalities per class: channel order is class-major (class 0: channels 0, 1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 2, 3, generator=g, dtype=torch.float64)
    class_maps = torch.stack([x[0, 0:2].mean(0), x[0, 2:4].mean(0)])  # (2, 2, 3)
    expected = []
    for k in range(2):
        values = sorted(class_maps[k].flatten().tolist(), reverse=True)
        top, bottom = values[:3], values[-2:]  # kmax = 0.5 of 6 positions, kmin = 2 positions
        expected.append(sum(top) / 3 + 0.6 * sum(bottom) / 2)
    wildcat = pooling("wildcat", modalities=2, kmax=0.5, kmin=2, alpha=0.6)
    assert wildcat.modalities == 2
    scores, maps = wildcat(x)
    assert torch.allclose(scores, torch.tensor([expected], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(maps[0], class_maps)


def test_wildcat_kmin_term_contributes_when_alpha_is_positive():
    without = pooling("wildcat", modalities=1, kmax=2, kmin=1, alpha=0.0)(X)[0]
    with_min = pooling("wildcat", modalities=1, kmax=2, kmin=1, alpha=0.5)(X)[0]
    lowest = X.flatten(2).amin(2)
    assert torch.allclose(with_min - without, 0.5 * lowest)
    assert not torch.allclose(with_min, without)


def test_wildcat_dropout_acts_in_training_only():
    wildcat = pooling("wildcat", modalities=1, kmax=3, kmin=3, alpha=0.7, dropout=0.5)
    wildcat.eval()
    reference = pooling("wildcat", modalities=1, kmax=3, kmin=3, alpha=0.7)(X)[0]
    assert torch.equal(wildcat(X)[0], reference)
    wildcat.train()
    torch.manual_seed(0)
    draws = torch.stack([wildcat(X)[0] for _ in range(20)])
    assert not torch.allclose(draws, reference.expand_as(draws))


@pytest.mark.parametrize(
    "params", [{"kmax": 0}, {"kmax": 2.5}, {"kmin": -1}, {"modalities": 0}, {"dropout": 1.0}]
)
def test_wildcat_rejects_bad_settings(params):
    with pytest.raises(ConfigError):
        pooling("wildcat", **params)


def test_wildcat_settings_from_the_command_line():
    cfg = config.resolve("wildcat", "synthetic", "quick", sets=["pooling.kmax=3", "pooling.alpha=0"])
    assert cfg.pooling_params["kmax"] == 3.0 and cfg.pooling_params["modalities"] == 8
    wildcat = pooling("wildcat", **cfg.pooling_params)
    spread = torch.arange(24.0, dtype=torch.float64).view(1, 1, 4, 6).expand(1, 16, 4, 6)
    assert wildcat(spread)[0][0, 0].item() == pytest.approx((23 + 22 + 21) / 3)  # a count of 3 positions


def test_gated_attention_against_its_formula():
    torch.manual_seed(0)
    channels, classes = 5, 3
    mil = pooling("mil", num_classes=classes, in_channels=channels, attention_dim=4)
    assert mil.consumes_features
    x = torch.randn(2, channels, 3, 4, dtype=torch.float64)
    scores, maps = mil(x)
    assert maps.shape == (2, classes, 3, 4)
    assert torch.allclose(maps.sum(dim=(2, 3)), torch.ones(2, classes, dtype=torch.float64))
    for n in range(2):
        instances = x[n].flatten(1).T  # (P, C)
        gate = torch.tanh(instances @ mil.attention_v.weight.T + mil.attention_v.bias) * torch.sigmoid(
            instances @ mil.attention_u.weight.T + mil.attention_u.bias
        )
        for k in range(classes):
            e = gate @ mil.attention_w.weight[k] + mil.attention_w.bias[k]
            a = torch.exp(e) / torch.exp(e).sum()
            assert torch.allclose(maps[n, k].flatten(), a)
            z = (a[:, None] * instances).sum(0)
            assert scores[n, k].item() == pytest.approx((z @ mil.classifier.weight[k] + mil.classifier.bias[k]).item())


def test_gated_attention_is_a_bag_function():
    """Permuting the positions permutes the attention maps and leaves the scores unchanged."""
    torch.manual_seed(1)
    mil = pooling("mil", num_classes=2, in_channels=6, attention_dim=8, gated=False)
    assert mil.attention_u is None
    x = torch.randn(1, 6, 4, 4, dtype=torch.float64)
    perm = torch.randperm(16)
    shuffled = x.flatten(2)[..., perm].view_as(x)
    scores, maps = mil(x)
    scores2, maps2 = mil(shuffled)
    assert torch.allclose(scores, scores2)
    assert torch.allclose(maps.flatten(2)[..., perm], maps2.flatten(2))
    uniform = mil(torch.ones(1, 6, 4, 4, dtype=torch.float64))[1]
    assert torch.allclose(uniform, torch.full_like(uniform, 1 / 16))
