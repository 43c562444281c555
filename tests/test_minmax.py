"""Min-max entropy with recursive erasing: each equation on hand-made tensors, then the method."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from wsolbench_plugins.methods.minmax import (
    LocalizerPass,
    MinMaxEntropy,
    positive_map,
    recursive_erasing,
    relevance_mask,
    trust_coefficients,
    uniform_target_loss,
)

from wsolbench import config
from wsolbench.errors import ConfigError, UnknownNameError
from wsolbench.interfaces import ModelSpec
from wsolbench.plugin_host import registry
from wsolbench.testing import TINY_MODEL, build_method


# -- Eq.6 --------------------------------------------------------------------------
def test_uniform_target_loss_is_minimal_at_a_uniform_prediction():
    k = 5
    uniform = torch.full((3, k), 0.7, requires_grad=True)
    loss = uniform_target_loss(uniform)
    torch.testing.assert_close(loss, torch.full((3,), math.log(k)))
    loss.sum().backward()
    torch.testing.assert_close(uniform.grad, torch.zeros(3, k))  # a stationary point
    torch.manual_seed(0)
    logits = torch.randn(200, k) * 3
    others = uniform_target_loss(logits)
    assert (others > math.log(k) + 1e-6).all()  # every other prediction costs more
    # the same number as a cross-entropy against the soft uniform target
    torch.testing.assert_close(others, F.cross_entropy(logits, torch.full((200, k), 1 / k), reduction="none"))


# -- Eq.10, Eq.11 --------------------------------------------------------------------
def test_positive_map_weights_each_class_map_by_its_softmax():
    torch.manual_seed(0)
    scores, maps = torch.randn(2, 3), torch.randn(2, 3, 4, 5)
    out = positive_map(scores, maps)
    assert out.shape == (2, 1, 4, 5)
    for i in range(2):
        p = scores[i].softmax(0)
        expected = sum(p[k] * maps[i, k] for k in range(3))
        torch.testing.assert_close(out[i, 0], expected)


def test_mask_is_in_unit_interval_detached_and_follows_eq11():
    torch.manual_seed(0)
    scores = torch.randn(3, 2, requires_grad=True)
    maps = torch.randn(3, 2, 4, 4, requires_grad=True)
    with torch.no_grad():
        maps[2] = 1.5  # a constant map: must not give NaN
    mask, normalized = relevance_mask(scores, maps, (16, 12), omega=8.0, sigma=0.5)
    assert mask.shape == normalized.shape == (3, 1, 16, 12)
    assert not mask.requires_grad and mask.grad_fn is None and not normalized.requires_grad
    assert torch.isfinite(mask).all() and mask.min() >= 0 and mask.max() <= 1
    for i in range(2):  # per image: each map spans [0, 1]
        up = F.interpolate(positive_map(scores, maps)[i : i + 1].detach(), size=(16, 12), mode="bilinear")
        expected = (up - up.min()) / (up.max() - up.min())
        torch.testing.assert_close(normalized[i : i + 1], expected)
        torch.testing.assert_close(mask[i : i + 1], torch.sigmoid(8.0 * (expected - 0.5)))
    assert torch.equal(normalized[2], torch.zeros(1, 16, 12))
    # per batch (the reference code): one range for the batch, not per image
    _, batch_norm = relevance_mask(scores[:2], maps[:2], (16, 12), normalize="batch")
    assert batch_norm.min() == 0 and batch_norm.max() == 1
    per_image_ranges = batch_norm.flatten(1).amax(1) - batch_norm.flatten(1).amin(1)
    assert (per_image_ranges < 1 - 1e-6).any()


# -- Eq.12-14 ------------------------------------------------------------------------
def test_trust_coefficients_follow_eq13_and_eq14():
    logits = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 0.0], [2.0, 0.0]])
    labels = torch.zeros(4, dtype=torch.long)
    loss = F.cross_entropy(logits, labels, reduction="none")
    loss0 = torch.stack([loss[0], loss[1], loss[2] - 0.1, loss[3]])  # sample 2: the loss went up
    trust, trusted = trust_coefficients(logits, labels, loss, loss0, step=3, sigma_e=10.0)
    assert trusted.tolist() == [True, False, False, True]
    p = logits.softmax(1)[:, 0]
    expected = torch.tensor([p[0], 0.0, 0.0, p[3]]) * math.exp(-0.3)
    torch.testing.assert_close(trust, expected)


# -- Algorithm 1 on a hand-made localizer -----------------------------------------------
RIGHT, RIGHT_HIGHER_LOSS, RIGHT_LOWER_LOSS, WRONG = [2.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 2.0]


class ScriptedLocalizer:
    """Scores scripted per (sample, pass); sample ``i``'s image carries ``i`` as channel 1 / channel 0.

    Erasing multiplies both channels by the same factor, so the sample stays
    identifiable whatever was erased. Records the samples and images of each call.
    """

    def __init__(self, script: dict[int, list[list[float]]], size: int = 4):
        self.script = script
        self.seen: Counter[int] = Counter()
        self.calls: list[list[int]] = []
        self.images: list[dict[int, torch.Tensor]] = []
        gen = torch.Generator().manual_seed(0)
        self.maps = torch.randn(len(script), 2, size, size, generator=gen)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = (x[:, 1, 0, 0] / x[:, 0, 0, 0]).round().long().tolist()
        self.calls.append(ids)
        self.images.append({i: x[j].clone() for j, i in enumerate(ids)})
        scores = torch.tensor([self.script[i][self.seen[i]] for i in ids])
        self.seen.update(ids)
        return scores, self.maps[ids]

    @staticmethod
    def batch(n: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.ones(n, 2, size, size)
        images[:, 1] = torch.arange(n, dtype=torch.float).view(n, 1, 1)
        return images, torch.zeros(n, dtype=torch.long)


def _erase(script, depth=4, trust_mode="paper", batch="compact"):
    loc = ScriptedLocalizer(script)
    images, labels = ScriptedLocalizer.batch(len(script))
    steps, losses = [], []

    def observe(t, rows, trust, accumulated):
        steps.append((t, rows.tolist(), trust.clone(), accumulated.clone()))

    out = recursive_erasing(loc, images, labels, losses.append, depth=depth, trust_mode=trust_mode, batch=batch,
                            observe=observe)
    return loc, out, steps, losses


SCRIPT = {
    0: [WRONG],  # wrong on the unerased image: no trust at all
    1: [RIGHT, RIGHT_HIGHER_LOSS, RIGHT, RIGHT],  # the loss check fails at pass 1
    2: [RIGHT, RIGHT, RIGHT_LOWER_LOSS, RIGHT_LOWER_LOSS],  # keeps trust to the end
    3: [RIGHT, RIGHT_LOWER_LOSS, WRONG],  # wrong at pass 2
}


def test_zero_trust_after_a_wrong_prediction_is_permanent_and_the_batch_is_compacted():
    loc, out, steps, losses = _erase(SCRIPT)
    assert loc.calls == [[0, 1, 2, 3], [1, 2, 3], [2, 3], [2]]  # each pass runs only the samples still erasing
    assert out.depth == 4 and out.passes == 10
    assert steps[0][2][0] == 0  # sample 0: wrong prediction, zero trust ...
    assert torch.equal(out.accumulated[0], torch.zeros_like(out.accumulated[0]))  # ... and nothing accumulated
    t1_trust = dict(zip(steps[1][1], steps[1][2].tolist()))
    assert t1_trust[1] == 0 and t1_trust[2] > 0 and t1_trust[3] > 0
    t2_trust = dict(zip(steps[2][1], steps[2][2].tolist()))
    assert t2_trust[3] == 0
    p = torch.tensor(RIGHT_LOWER_LOSS).softmax(0)[0]
    assert steps[3][2][0].item() == pytest.approx(math.exp(-3 / 10) * p.item())
    # Eq.8 is back-propagated once per pass, over the samples of that pass, divided by the batch size
    assert len(losses) == 4
    ce = lambda row: F.cross_entropy(torch.tensor([row]), torch.tensor([0])).item()  # noqa: E731
    assert losses[1].item() == pytest.approx((ce(RIGHT_HIGHER_LOSS) + ce(RIGHT) + ce(RIGHT_LOWER_LOSS)) / 4)


def test_reference_trust_mode_only_makes_a_wrong_label_permanent():
    loc, out, steps, _ = _erase(SCRIPT, trust_mode="reference")
    assert loc.calls == [[0, 1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2]]  # sample 3 leaves when wrong
    # sample 1 failed the loss check at pass 1: its trust there is 0 and its image is not erased again
    assert dict(zip(steps[1][1], steps[1][2].tolist()))[1] == 0
    torch.testing.assert_close(loc.images[2][1], loc.images[1][1])
    assert not torch.allclose(loc.images[2][2], loc.images[1][2])


def test_the_full_batch_keeps_stopped_samples_and_their_loss_at_every_pass():
    # the reference code's batch: every pass runs every sample; a stopped sample keeps its image
    script = {**SCRIPT, 0: [WRONG] * 4, 3: [RIGHT, RIGHT_LOWER_LOSS, WRONG, RIGHT]}
    loc, out, steps, losses = _erase(script, trust_mode="reference", batch="full")
    assert loc.calls == [[0, 1, 2, 3]] * 4 and out.depth == 4 and out.passes == 16
    def ce(row):
        return F.cross_entropy(torch.tensor([row]), torch.tensor([0])).item()

    for t in range(4):  # Eq.8 of all N samples, averaged over all N, at every pass
        assert losses[t].item() == pytest.approx(sum(ce(script[i][t]) for i in range(4)) / 4)
    trust = [step[2].tolist() for step in steps]
    assert [row[0] for row in trust] == [0] * 4  # wrong from the start: never any trust
    assert trust[3][3] == 0 and trust[3][2] > 0  # sample 3 was wrong at pass 2: right again, no trust
    torch.testing.assert_close(loc.images[3][3], loc.images[2][3])  # ... and its image erased no more
    torch.testing.assert_close(loc.images[2][1], loc.images[1][1])  # the loss check skips one pass only
    assert not torch.allclose(loc.images[3][1], loc.images[2][1])
    # with per-image normalisation the accumulated mask is the compact batch's
    _, compact, _, _ = _erase(script, trust_mode="reference")
    torch.testing.assert_close(out.accumulated, compact.accumulated)
    assert out.loss_sum.item() == pytest.approx(sum(x.item() for x in losses))


def test_accumulator_only_grows_and_erasing_uses_it():
    loc, out, steps, _ = _erase(SCRIPT)
    for (_, _, _, before), (_, _, _, after) in zip(steps, steps[1:]):
        assert (after >= before).all()
    assert (steps[-1][3] > steps[0][3]).any()
    # the image of pass t+1 is the image of pass t times (1 - R*) after pass t
    for t in range(3):
        for i in loc.calls[t + 1]:
            expected = loc.images[t][i] * (1 - steps[t][3][i])
            torch.testing.assert_close(loc.images[t + 1][i], expected)
    # R* = max over passes of Omega(t) * R+(t)
    for i in range(4):
        terms = []
        for t, rows, trust, _ in steps:
            if i in rows:
                j = rows.index(i)
                scores = torch.tensor([SCRIPT[i][t]])
                mask, _ = relevance_mask(scores, loc.maps[i : i + 1], (8, 8))
                terms.append(trust[j] * mask[0])
        torch.testing.assert_close(out.accumulated[i], torch.stack(terms).amax(0))


@pytest.mark.parametrize(
    "script, depth, calls",
    [
        ({0: [RIGHT] * 5, 1: [RIGHT] * 5}, 4, 4),  # always trusted: stops at u
        ({0: [RIGHT] * 5, 1: [RIGHT] * 5}, 1, 1),
        ({0: [WRONG], 1: [WRONG]}, 4, 1),  # no trust from the start
        ({0: [RIGHT, WRONG], 1: [RIGHT, RIGHT_HIGHER_LOSS]}, 4, 2),  # trust runs out at pass 1
    ],
)
def test_erasing_stops_at_u_or_when_no_sample_keeps_trust(script, depth, calls):
    loc, out, _, losses = _erase(script, depth=depth)
    assert len(loc.calls) == out.depth == len(losses) == calls


# -- the method on a real backbone -----------------------------------------------------
#: timm's smallest ResNet (a test model, 0.4 M parameters): the method's structure at a fraction of the cost
BACKBONE = "test_resnet"


def _method(u: int = 4, pooling_params: dict | None = None, **params) -> MinMaxEntropy:
    """Min-max on :data:`BACKBONE` with its default pooling, Wildcat; ``pooling_params`` override Wildcat's defaults."""
    torch.manual_seed(0)
    spec = ModelSpec(BACKBONE, pooling="wildcat", pooling_params=pooling_params or {},
                     backbone_params={"output_stride": 8})
    return registry("method").create("minmax", num_classes=2, model=spec, u=u, **params)


class CallCounter:
    def __init__(self, *modules):
        self.counts = Counter()
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules]

    def _hook(self, name):
        def hook(module, args, output):
            self.counts[name] += 1

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("classifier_batch, g_calls", [("joint", 1), ("separate", 2)])
def test_u0_is_a_single_pass_inference_never_erases_and_erasing_waits_for_its_epoch(classifier_batch, g_calls):
    method = _method(u=0, classifier_batch=classifier_batch)
    counter = CallCounter(("f", method.loc_head), ("g", method.cls_head), ("backbone", method.backbone))
    images = torch.randn(4, 3, 32, 32)
    batch = {"image": images, "label": torch.tensor([0, 1, 0, 1])}
    out = method.training_step(batch, lambda loss: loss.backward())
    assert counter.counts == {"f": 1, "g": g_calls, "backbone": 1 + g_calls} and out.logs["erase_depth"] == 0
    method.eval()
    method.params["u"] = 4  # erasing settings never reach inference: one pass of f, one of g on X+
    expected = {
        method.predict: {"f": 1, "g": 1, "backbone": 2},
        method.localize: {"f": 1, "backbone": 1},
        method.infer: {"f": 1, "g": 1, "backbone": 2},
    }
    with torch.no_grad():
        for call, counts in expected.items():
            counter.counts.clear()
            result = call(images)
            assert counter.counts == counts
        logits, maps = result
    assert logits.shape == (4, 2) and maps.shape == (4, 32, 32)
    assert maps.min() >= 0 and maps.max() <= 1 and torch.isfinite(maps).all()
    torch.testing.assert_close(maps, method.localize(images))
    counter.remove()
    # erase_start_epoch: no erasing before it, erasing from it
    method = _method(u=4, erase_start_epoch=1)
    method.on_epoch_start(0)
    assert method.training_step(batch, lambda loss: loss.backward()).logs["erase_depth"] == 0
    method.on_epoch_start(1)
    assert method.training_step(batch, lambda loss: loss.backward()).logs["erase_depth"] >= 1


def _paper_mask(p: dict, size, scores_i, maps_i, trust=1.0) -> torch.Tensor:
    """Eq.11 written out for one image: M+ (class maps weighted by the probabilities), upsampled,
    min-max normalised, pseudo-binarised, times the trust."""
    prob = scores_i.detach().softmax(0)
    m = (prob.view(-1, 1, 1) * maps_i.detach()).sum(0, keepdim=True)
    m = F.interpolate(m[None], size=size, mode="bilinear", align_corners=False)[0]
    m = (m - m.min()) / (m.max() - m.min())
    return trust * torch.sigmoid(p["omega"] * (m - p["sigma"]))


def _direct_gradients(method: MinMaxEntropy, images, labels, u: int, trust_mode: str) -> dict[str, torch.Tensor]:
    """The same loss written out directly: full-batch passes, every graph kept, one backward."""
    p = method.params
    n, size = images.shape[0], images.shape[-2:]
    method.zero_grad()
    acc = torch.zeros(n, 1, *size)
    x = images.clone()
    alive = [True] * n
    loss0 = None
    total = 0.0

    def mask_of(scores_i, maps_i, trust=1.0):
        return _paper_mask(p, size, scores_i, maps_i, trust)

    if u == 0:
        scores, maps = method.localizer(x)
        total = F.cross_entropy(scores, labels)
        acc = torch.stack([mask_of(scores[i], maps[i]) for i in range(n)])
    for t in range(u):
        if not any(alive):
            break
        scores, maps = method.localizer(x)
        losses = F.cross_entropy(scores, labels, reduction="none")
        total = total + sum(losses[i] for i in range(n) if alive[i]) / n
        losses = losses.detach()
        loss0 = losses if loss0 is None else loss0
        x = x.clone()
        for i in range(n):
            if not alive[i]:
                continue
            prob = scores[i].detach().softmax(0)
            correct = bool(prob.argmax() == labels[i])
            trusted = correct and bool(losses[i] <= loss0[i])
            trust = math.exp(-t / p["sigma_e"]) * prob[labels[i]] if trusted else 0.0
            acc[i] = torch.maximum(acc[i], mask_of(scores[i], maps[i], trust))
            if trusted:
                x[i] = x[i] * (1 - acc[i])
            alive[i] = trusted if trust_mode == "paper" else correct
    half = lambda z: F.interpolate(z, scale_factor=0.5, mode="bilinear", align_corners=False)  # noqa: E731
    pos = method.cls_head(method.backbone(half(images * acc))[-1])[0]
    neg = method.cls_head(method.backbone(half(images * (1 - acc)))[-1])[0]
    total = total + F.cross_entropy(pos, labels) - neg.log_softmax(1).mean()
    total.backward()
    return {k: v.grad.clone() for k, v in method.named_parameters() if v.grad is not None}


@pytest.mark.parametrize("u, trust_mode", [(0, "paper"), (3, "paper"), (3, "reference")])
def test_gradient_accumulation_equals_the_direct_loss(u, trust_mode):
    method = _method(u=u, trust_mode=trust_mode)
    method.eval()  # batch-independent outputs, so compacted and full-batch passes agree
    torch.manual_seed(1)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        pred = method.localizer(images)[0].argmax(1)
    labels = pred.clone()
    labels[3] = 1 - labels[3]  # one sample wrong from the start
    method.zero_grad()
    out = method.training_step({"image": images, "label": labels}, lambda loss: loss.backward())
    accumulated = {k: v.grad.clone() for k, v in method.named_parameters() if v.grad is not None}
    direct = _direct_gradients(method, images, labels, u, trust_mode)
    assert accumulated.keys() == direct.keys()
    assert any(k.startswith("loc_head") for k in direct) and any(k.startswith("cls_head") for k in direct)
    for k in direct:
        torch.testing.assert_close(accumulated[k], direct[k], rtol=1e-4, atol=1e-6, msg=k)
    if u:
        assert 1 < out.logs["erase_passes"] < u  # erasing happened, and not for every sample
        assert out.logs["erase_depth"] >= 2


BN_KEYS = ("running_mean", "running_var", "num_batches_tracked")


def _batch_norm_layers(backbone: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _running(layers) -> list[list[torch.Tensor]]:
    """Copies of each layer's running mean, variance and batch count."""
    return [[layer.running_mean.clone(), layer.running_var.clone(), layer.num_batches_tracked.clone()]
            for layer in layers]


def _put(layers, stats) -> None:
    """Give each layer copies of ``stats`` as new tensors (the ones they replace may be saved for backward)."""
    for layer, (mean, var, count) in zip(layers, stats):
        layer.running_mean, layer.running_var, layer.num_batches_tracked = mean.clone(), var.clone(), count.clone()


def _classifier_running(method: MinMaxEntropy) -> list[list[torch.Tensor]]:
    """Copies of g's own running statistics, layer by layer, as the checkpoint names them (none with "shared")."""
    if method.params["classifier_bn"] != "own":
        return []
    store, n = method.cls_bn_stats, len(_batch_norm_layers(method.backbone))
    return [[getattr(store, f"{key}_{i}").clone() for key in BN_KEYS] for i in range(n)]


def _restated_training_step(model: MinMaxEntropy, images, labels, u: int, trust_mode: str):
    """One training step restated in training mode: ``(loss, gradients, f's statistics, g's statistics)``.

    Each pass of f runs on the samples still erasing, X+ and X- go through g
    in one call (batch statistics depend on who shares the batch), and the
    sub-networks are called directly. Running statistics are handled by
    copying values: f's pass on the whole images updates f's set, its passes
    on erased images leave every set as it was, g's pass updates g's own set
    (``classifier_bn = "own"``) or the one set (``"shared"``).
    """
    p = model.params
    n, size = images.shape[0], images.shape[-2:]
    layers = _batch_norm_layers(model.backbone)
    own = p["classifier_bn"] == "own"
    g_stats = _classifier_running(model) if own else None

    def localizer(x, erased):
        before = _running(layers)
        scores, maps = model.loc_head(model.backbone(x)[-1])
        if erased and own:
            _put(layers, before)
        return scores, maps

    def mask_of(scores_i, maps_i, trust=1.0):
        return _paper_mask(p, size, scores_i, maps_i, trust)

    model.zero_grad()
    acc = torch.zeros(n, 1, *size)
    x = images.clone()
    alive = list(range(n))
    if u == 0:
        scores, maps = localizer(x, erased=False)
        loss0 = F.cross_entropy(scores, labels, reduction="none")
        total = loss0.mean()
        acc = torch.stack([mask_of(scores[i], maps[i]) for i in range(n)])
    else:
        total = 0.0
        for t in range(u):
            scores, maps = localizer(x[alive], erased=t > 0)
            losses = F.cross_entropy(scores, labels[alive], reduction="none")
            total = total + losses.sum() / n
            if t == 0:
                loss0 = losses
            still = []
            x = x.clone()
            for j, i in enumerate(alive):
                prob = scores[j].detach().softmax(0)
                correct = bool(prob.argmax() == labels[i])
                trusted = correct and bool(losses[j] <= loss0[i])
                trust = math.exp(-t / p["sigma_e"]) * prob[labels[i]] if trusted else 0.0
                acc[i] = torch.maximum(acc[i], mask_of(scores[j], maps[j], trust))
                if trusted:
                    x[i] = x[i] * (1 - acc[i])
                keep = trusted if trust_mode == "paper" else correct
                if keep:
                    still.append(i)
            alive = still
            if not alive:
                break
    if own:
        f_stats = _running(layers)
        _put(layers, g_stats)
    half = F.interpolate(torch.cat([images * acc, images * (1 - acc)]), scale_factor=0.5, mode="bilinear",
                         align_corners=False)
    logits = model.cls_head(model.backbone(half)[-1])[0]
    if own:
        g_stats = _running(layers)
        _put(layers, f_stats)
    pos, neg = logits[:n], logits[n:]
    classifier_loss = F.cross_entropy(pos, labels) - neg.log_softmax(1).mean()
    (total + classifier_loss).backward()
    loss = classifier_loss + loss0.mean()
    grads = {k: v.grad.clone() for k, v in model.named_parameters() if v.grad is not None}
    return loss.detach(), grads, _running(layers), g_stats


@pytest.mark.parametrize("u, trust_mode, classifier_bn", [
    (0, "paper", "own"), (3, "paper", "own"), (3, "reference", "own"), (3, "reference", "shared"),
])
def test_a_training_step_in_training_mode_equals_its_restatement(u, trust_mode, classifier_bn):
    # Wildcat's dropout is on, and both computations start from the same seed: they draw the same
    # dropout masks only if they run the same passes, on the same samples, in the same order
    method = _method(u=u, trust_mode=trust_mode, classifier_bn=classifier_bn, pooling_params={"dropout": 0.5})
    method.train()
    restated = copy.deepcopy(method)
    torch.manual_seed(7)
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():  # f's predictions on the whole images, with this step's dropout masks
        probe = copy.deepcopy(method)
        torch.manual_seed(8)
        labels = probe.loc_head(probe.backbone(images)[-1])[0].argmax(1)
    labels[5] = 1 - labels[5]  # one sample wrong from the start
    torch.manual_seed(8)
    out = method.training_step({"image": images, "label": labels}, lambda loss: loss.backward())
    grads = {k: v.grad.clone() for k, v in method.named_parameters() if v.grad is not None}
    torch.manual_seed(8)
    loss, direct, f_stats, g_stats = _restated_training_step(restated, images, labels, u, trust_mode)

    assert out.loss.item() == pytest.approx(loss.item(), rel=1e-5)
    assert grads.keys() == direct.keys()
    assert any(k.startswith("loc_head") for k in direct) and any(k.startswith("cls_head") for k in direct)
    for k in direct:
        torch.testing.assert_close(grads[k], direct[k], rtol=1e-4, atol=1e-6, msg=k)
    for a, b in zip(_running(_batch_norm_layers(method.backbone)), f_stats):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    if classifier_bn == "own":
        for a, b in zip(_classifier_running(method), g_stats):
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    if u:
        assert 1 < out.logs["erase_passes"] < u  # erasing happened, and not for every sample
        assert out.logs["erase_depth"] >= 2


def test_joint_classifier_batch_is_two_calls_in_one_with_shared_batch_statistics():
    torch.manual_seed(2)
    positive, negative = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32) * 3 + 1
    joint, separate = _method(u=0, classifier_batch="joint"), _method(u=0, classifier_batch="separate")
    separate.load_state_dict(joint.state_dict())
    for m in (joint, separate):
        m.eval()
    with torch.no_grad():  # running statistics: the batching changes nothing
        for a, b in zip(joint.classify_pair(positive, negative), separate.classify_pair(positive, negative)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        joint.train()
        separate.train()
        pos, neg = joint.classify_pair(positive, negative)
        both = separate.classify(torch.cat([positive, negative]))
        torch.testing.assert_close(torch.cat([pos, neg]), both)  # one call on X+ and X- together ...
        pos_alone, neg_alone = separate.classify_pair(positive, negative)
        torch.testing.assert_close(pos_alone, separate.classify(positive))  # ... or one call each,
    assert not torch.allclose(pos, pos_alone, atol=1e-3)  # each with its own batch statistics


def _bn_stats(module):
    """Running means and variances, in order (a layer's mean, then its variance)."""
    stats = [b.clone() for name, b in module.named_buffers() if name.rsplit(".", 1)[-1].startswith("running_")]
    assert stats
    return stats


def test_the_classifier_keeps_its_own_batch_norm_statistics_and_training_is_unchanged():
    own, shared = _method(u=0, classifier_bn="own"), _method(u=0, classifier_bn="shared")
    shared.load_state_dict(own.state_dict(), strict=False)  # same weights; "shared" has no second set
    torch.manual_seed(3)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 1, 0])
    x_f, x_g = images, images * 2 + 1  # f's and g's inputs differ in distribution, as in training

    own.train()
    f_before, g_before = _bn_stats(own.backbone), _bn_stats(own.cls_bn_stats)
    own.classify(x_g)  # g's pass updates g's statistics only ...
    assert all(torch.equal(a, b) for a, b in zip(f_before, _bn_stats(own.backbone)))
    g_after = _bn_stats(own.cls_bn_stats)
    assert not any(torch.equal(a, b) for a, b in zip(g_before, g_after))
    own.localizer(x_f)  # ... and f's pass f's only
    assert all(torch.equal(a, b) for a, b in zip(g_after, _bn_stats(own.cls_bn_stats)))
    assert not any(torch.equal(a, b) for a, b in zip(f_before, _bn_stats(own.backbone)))

    # training normalises with each batch's statistics: the same step either way
    outs = []
    for m in (own, shared):
        m.train()
        torch.manual_seed(4)
        out = m.training_step({"image": images, "label": labels}, lambda loss: loss.backward())
        outs.append((out.loss.item(), [p.grad.clone() for p in m.parameters() if p.grad is not None]))
    assert outs[0][0] == pytest.approx(outs[1][0], rel=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(outs[0][1], outs[1][1]))

    # in evaluation f and g are each normalised with their own statistics: the shared network
    # given f's statistics localizes as f, given g's it classifies as g
    own.eval()
    shared.eval()

    def give(stats):
        for layer, (mean, var) in zip(shared._batch_norms(), zip(*[iter(stats)] * 2)):
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)

    with torch.no_grad():
        give(_bn_stats(own.backbone))
        torch.testing.assert_close(own.localize(images), shared.localize(images))
        give(_bn_stats(own.cls_bn_stats))
        torch.testing.assert_close(own.classify(images), shared.classify(images))
        assert not torch.allclose(own.localize(images), shared.localize(images), atol=1e-3)

    # the statistics are part of the checkpoint
    again = _method(u=0, classifier_bn="own")
    again.load_state_dict(own.state_dict())
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again.predict(images), own.predict(images))


def test_the_erasing_passes_leave_the_localizers_running_statistics_alone():
    torch.manual_seed(6)
    images, labels = torch.randn(8, 3, 32, 32), torch.tensor([0, 1] * 4)
    method = _method(u=4, trust_mode="reference", classifier_bn="own")
    once = _method(u=4, trust_mode="reference", classifier_bn="own")
    once.load_state_dict(method.state_dict())
    method.train()
    once.train()
    out = method.training_step({"image": images, "label": labels}, lambda loss: loss.backward())
    assert out.logs["erase_passes"] > 1  # some samples went through erased passes of f ...
    once.localizer(images)  # ... yet f's statistics are those of its one pass on the whole images
    for a, b in zip(_bn_stats(method.backbone), _bn_stats(once.backbone)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    counts = [layer.num_batches_tracked for layer in method._batch_norms()]
    assert all(int(c) == 1 for c in counts)

    shared = _method(u=4, trust_mode="reference", classifier_bn="shared")
    shared.load_state_dict(once.state_dict(), strict=False)
    shared.train()
    shared.training_step({"image": images, "label": labels}, lambda loss: loss.backward())
    assert all(int(layer.num_batches_tracked) > 2 for layer in shared._batch_norms())  # every pass counted


def _updated(before, after) -> bool:
    """Whether a pass updated a set of running statistics: every layer's, once (True), or none (False)."""
    if all(all(torch.equal(x, y) for x, y in zip(a, b)) for a, b in zip(before, after)):
        return False
    for (mean, _, count), (mean_after, _, count_after) in zip(before, after):
        assert int(count_after) == int(count) + 1 and not torch.equal(mean, mean_after)
    return True


#: the set of running statistics a pass updates: "f" (the layers' own buffers), "g" (g's own set) or none
UPDATES = {
    "own": {"localizer": "f", "erasing": None, "classifier": "g"},
    "shared": {"localizer": "f", "erasing": "f", "classifier": "f"},
}


def _updates_of(method: MinMaxEntropy, run) -> str | None:
    """Which set of running statistics ``run()`` updates; fails if it updates more than one."""
    layers = _batch_norm_layers(method.backbone)
    f_before, g_before = _running(layers), _classifier_running(method)
    run()
    updated = [name for name, before, after in (("f", f_before, _running(layers)),
                                                ("g", g_before, _classifier_running(method)))
               if before and _updated(before, after)]
    assert len(updated) <= 1, updated
    return updated[0] if updated else None


@pytest.mark.parametrize("classifier_bn", ["own", "shared"])
def test_each_pass_updates_the_running_statistics_of_what_it_is(classifier_bn):
    method = _method(u=4, classifier_bn=classifier_bn)
    method.train()
    torch.manual_seed(9)
    x = torch.randn(4, 3, 32, 32) * 2 + 1
    expected = UPDATES[classifier_bn]
    assert _updates_of(method, lambda: method.localizer(x)) == expected["localizer"]
    assert _updates_of(method, lambda: method.localizer(x, "erasing")) == expected["erasing"]
    assert _updates_of(method, lambda: method.classify(x)) == expected["classifier"]
    if classifier_bn == "shared":
        assert not list(method.cls_bn_stats.buffers())  # one set only

    # a whole training step with erasing: f's set counts its one pass on the whole images, g's its one call
    method = _method(u=4, trust_mode="reference", classifier_bn=classifier_bn)
    method.train()
    out = method.training_step({"image": x, "label": torch.tensor([0, 1, 0, 1])}, lambda loss: loss.backward())
    assert out.logs["erase_depth"] >= 2
    f_counts = {int(layer.num_batches_tracked) for layer in _batch_norm_layers(method.backbone)}
    if classifier_bn == "own":
        assert f_counts == {1} and {int(count) for *_, count in _classifier_running(method)} == {1}
    else:
        assert f_counts == {int(out.logs["erase_depth"]) + 1}


def test_the_batch_norm_statistics_of_a_pass_do_not_depend_on_how_contexts_nest():
    method = _method(u=4, classifier_bn="own")
    method.train()
    torch.manual_seed(10)
    x = torch.randn(4, 3, 32, 32)
    layers = _batch_norm_layers(method.backbone)
    tensors = [[getattr(layer, key) for key in BN_KEYS] for layer in layers]
    keys = list(method.state_dict())
    kinds = list(UPDATES["own"])

    def nested(outer, inner, after_inner):
        with method.batch_norm_statistics(outer):
            with method.batch_norm_statistics(inner):
                if not after_inner:
                    method.backbone(x)
            if after_inner:
                method.backbone(x)

    for outer in kinds:
        for inner in kinds:
            # the innermost context decides ...
            assert _updates_of(method, lambda: nested(outer, inner, False)) == UPDATES["own"][inner], (outer, inner)
            # ... and leaving it gives back the enclosing one's
            assert _updates_of(method, lambda: nested(outer, inner, True)) == UPDATES["own"][outer], (outer, inner)
    # afterwards the layers hold their own buffers again, under the checkpoint's names
    assert [[getattr(layer, key) for key in BN_KEYS] for layer in layers] == tensors
    assert list(method.state_dict()) == keys


def test_in_evaluation_each_pass_reads_its_own_statistics():
    method = _method(u=4, classifier_bn="own")
    method.train()
    torch.manual_seed(11)
    for _ in range(3):  # f and g see different inputs: their running statistics part
        method.localizer(torch.randn(4, 3, 32, 32))
        method.classify(torch.randn(4, 3, 32, 32) * 3 + 2)
    method.eval()
    x = torch.randn(2, 3, 32, 32)
    g_backbone = copy.deepcopy(method.backbone)
    _put(_batch_norm_layers(g_backbone), _classifier_running(method))
    with torch.no_grad():
        f_features, g_features = method.backbone(x)[-1], g_backbone(x)[-1]
        assert not torch.allclose(f_features, g_features, atol=1e-3)
        for kind, expected in (("localizer", f_features), ("erasing", f_features), ("classifier", g_features)):
            with method.batch_norm_statistics(kind):
                torch.testing.assert_close(method.backbone(x)[-1], expected, msg=kind)


def test_the_checkpoint_holds_gs_running_statistics_under_fixed_names():
    own, shared = _method(classifier_bn="own"), _method(classifier_bn="shared")
    n = len(_batch_norm_layers(own.backbone))
    g_keys = {f"cls_bn_stats.{key}_{i}" for i in range(n) for key in BN_KEYS}
    assert {k for k in own.state_dict() if k.startswith("cls_bn_stats.")} == g_keys
    assert set(own.state_dict()) - g_keys == set(shared.state_dict())


@pytest.mark.parametrize("classifier_bn", ["own", "shared"])
def test_evaluation_classifies_with_g_on_x_plus_and_localizes_with_fs_normalised_map(classifier_bn):
    torch.manual_seed(0)
    method = build_method("minmax", num_classes=3, model=TINY_MODEL, u=0, classifier_bn=classifier_bn)
    method.train()
    gen = torch.Generator().manual_seed(12)
    with torch.no_grad():  # a few steps, so that g's running statistics are no longer f's
        for _ in range(2):
            batch = {"image": torch.randn(4, 3, 48, 40, generator=gen), "label": torch.tensor([0, 1, 2, 0])}
            method.training_step(batch, lambda loss: None)
    method.eval()
    images = torch.randn(2, 3, 48, 40, generator=gen)
    g_backbone = copy.deepcopy(method.backbone)  # the shared network with g's running statistics
    if classifier_bn == "own":
        _put(_batch_norm_layers(g_backbone), _classifier_running(method))
    with torch.no_grad():
        scores, maps = method.loc_head(method.backbone(images)[-1])  # f
        m = (scores.softmax(1)[:, :, None, None] * maps).sum(1, keepdim=True)  # Eq.10
        m = F.interpolate(m, size=(48, 40), mode="bilinear", align_corners=False)
        lo, hi = m.amin((1, 2, 3), keepdim=True), m.amax((1, 2, 3), keepdim=True)
        expected_map = (m - lo) / (hi - lo)
        positive = images * torch.sigmoid(8.0 * (expected_map - 0.5))  # Eq.11: X+ = X * R+
        half = F.interpolate(positive, scale_factor=0.5, mode="bilinear", align_corners=False)
        expected_logits = method.cls_head(g_backbone(half)[-1])[0]  # g on X+
        logits, normalized = method.infer(images)
        torch.testing.assert_close(logits, expected_logits)
        torch.testing.assert_close(normalized, expected_map.squeeze(1))
        torch.testing.assert_close(method.predict(images), expected_logits)
        torch.testing.assert_close(method.localize(images), expected_map.squeeze(1))
        # the class is not f's, and g is normalised with its own statistics
        assert not torch.allclose(logits, scores, atol=1e-3)
        with_f_statistics = method.cls_head(method.backbone(half)[-1])[0]
        assert torch.allclose(logits, with_f_statistics) == (classifier_bn == "shared")


def test_same_seed_same_training_step():
    def step():
        method = _method(u=4, trust_mode="reference")
        torch.manual_seed(5)
        images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 1, 0])
        out = method.training_step({"image": images, "label": labels}, lambda loss: loss.backward())
        return out, [p.grad.clone() for p in method.parameters() if p.grad is not None]

    (a, grads_a), (b, grads_b) = step(), step()
    assert a.loss.item() == b.loss.item() and a.logs["erase_passes"] == b.logs["erase_passes"]
    assert all(torch.equal(x, y) for x, y in zip(grads_a, grads_b))


# -- configuration -------------------------------------------------------------------
def test_labels_name_the_variants_and_bad_parameters_are_config_errors():
    assert MinMaxEntropy.label("minmax", {"u": 4}) == "minmax (u=4)"
    assert MinMaxEntropy.label("minmax", {"u": 0}) == "minmax (u=0)"
    assert MinMaxEntropy.label("minmax", {"u": 4, "reference_code": True}) == "minmax (u=4, reference code)"
    for bad in ({"trust_mode": "always"}, {"u": -1}, {"normalize": "pixel"}, {"classifier_scale": 0.0},
                {"classifier_batch": "both"}, {"classifier_bn": "split"}, {"erase_batch": "half"}):
        with pytest.raises(ConfigError):
            MinMaxEntropy(num_classes=2, model=ModelSpec("resnet18", pooling="avg"), **bad)


#: the paper's min-max settings: Eq.11's omega and sigma, the erasing's slope sigma_e and depth u
PAPER_METHOD = {"omega": 8.0, "sigma": 0.5, "sigma_e": 10.0, "u": 4}
#: the reference settings of min-max's Wildcat head (dropout 0.85 for CUB and Oxford Flowers, 0.75 for GlaS)
PAPER_WILDCAT = {"modalities": 5, "kmax": 0.09, "kmin": 0.09, "alpha": 0.0, "dropout": 0.85}


def test_the_paper_profile_resolves_to_the_papers_settings():
    assert config.RunConfig().method == "minmax"
    cfg = config.resolve("minmax", "synthetic", "paper")
    assert {k: cfg.method_params[k] for k in PAPER_METHOD} == PAPER_METHOD
    assert cfg.method_params["erase_start_epoch"] == 0  # the paper erases from the start
    assert (cfg.model.backbone, cfg.model.pretrained) == ("resnet101", True)
    assert cfg.pooling_params == PAPER_WILDCAT  # Wildcat, min-max's default pooling
    t = cfg.train
    assert (t.lr, t.batch_size, t.epochs) == (1e-3, 8, 400)
    assert (t.schedule, t.lr_step, t.lr_gamma, t.lr_min) == ("step", 40, 0.1, 1e-7)
    assert (t.weight_decay, t.nesterov, t.momentum) == (1e-5, True, 0.9)
    glas = config.resolve("minmax", "glas", "paper")  # GlaS: less dropout, all else the same
    assert glas.pooling_params == {**PAPER_WILDCAT, "dropout": 0.75}
    assert glas.train == cfg.train and glas.model == cfg.model and glas.method_params == cfg.method_params


def test_the_quick_profile_keeps_the_papers_method_settings_and_erases_from_epoch_3():
    quick = config.resolve("minmax", "synthetic", "quick")
    assert {k: quick.method_params[k] for k in PAPER_METHOD} == PAPER_METHOD
    assert quick.method_params["erase_start_epoch"] == 3


def test_the_profiles_pooling_settings_apply_only_to_a_pooling_that_has_them():
    cfg = config.resolve("minmax", "synthetic", "paper", sets=["model.pooling=avg"])
    assert cfg.pooling_params == {}  # the profile's Wildcat settings do not apply to average pooling
    assert (cfg.train.epochs, cfg.train.lr) == (400, 1e-3)  # ... the rest of the profile does
    with pytest.raises(UnknownNameError):  # ... but a user's setting must fit the pooling
        config.resolve("minmax", "synthetic", "paper", sets=["model.pooling=avg", "pooling.kmax=0.1"])


def test_a_short_run_logs_erasing_and_names_the_variant(tmp_path):
    from wsolbench.training import runner

    sets = [f"model.backbone={BACKBONE}", "train.epochs=1", "method.erase_start_epoch=0"]
    sets += [item for item in TINY[:-2] if item != "--set"]
    cfg = config.resolve(None, None, None, sets=sets + [f"output_dir={tmp_path}", "run_name=mm"])
    results = runner.run(cfg).results
    assert results["method"] == "minmax" and results["method_label"] == "minmax (u=4)"
    assert 0 <= results["f1_pos"] <= 100 and 0 <= results["pxap"] <= 100 and results["n_images"] == 8
    rows = [json.loads(line) for line in (tmp_path / "mm" / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_erase_depth", "train_erase_passes", "train_loss_pos", "train_loss_neg", "train_loss_loc"):
        assert key in rows[0]
    assert 1 <= rows[0]["train_erase_depth"] <= 4


# -- method.reference_code: the authors' code in every setting at once ----------------------
#: what the authors' code does in each setting wsolbench's default differs in (docs/minmax.md)
AUTHORS_METHOD = {
    "erase_batch": "full",  # stopped samples stay in the erasing batch
    "classifier_bn": "shared",  # one set of batch-norm running statistics, updated by every pass
    "classifier_batch": "separate",  # g called on X+, then on X-
    "normalize": "batch",  # min-max of the training masks over the whole batch
    "trust_mode": "reference",  # only a wrong label is final
    "erase_start_epoch": 1,
    "align_corners": True,  # their bilinear resizing
}


def test_the_reference_code_switch_sets_every_row_of_the_authors_setting():
    default = config.resolve("minmax", "synthetic", "paper")
    cfg = config.resolve("minmax", "synthetic", "paper", sets=["method.reference_code=true"])
    assert {k: cfg.method_params[k] for k in AUTHORS_METHOD} == AUTHORS_METHOD
    assert {k: default.method_params[k] for k in AUTHORS_METHOD} != AUTHORS_METHOD
    assert cfg.train.amp is False and default.train.amp is True  # float32, no autocast
    assert (cfg.train.select_ties, default.train.select_ties) == ("last", "loss")
    assert (cfg.model.backbone, default.model.backbone) == ("resnet101s", "resnet101")  # CSAIL's deep stem
    assert cfg.model.pretrained is True
    # the rest of the paper's setting is untouched
    assert {k: cfg.method_params[k] for k in PAPER_METHOD} == PAPER_METHOD
    assert cfg.pooling_params == PAPER_WILDCAT
    assert dataclasses.replace(cfg.train, amp=True, select_ties="loss") == default.train
    rest = {k: v for k, v in cfg.method_params.items() if k not in AUTHORS_METHOD and k != "reference_code"}
    assert rest == {k: v for k, v in default.method_params.items() if k in rest}
    # off, it changes nothing; with the quick profile the backbone stays the profile's
    off = config.resolve("minmax", "synthetic", "paper", sets=["method.reference_code=false"])
    assert off.to_dict() == {**default.to_dict(), "method": {**default.to_dict()["method"], "reference_code": False}}
    quick = config.resolve("minmax", "synthetic", "quick", sets=["method.reference_code=true"])
    assert quick.model.backbone == "resnet18" and quick.method_params["erase_start_epoch"] == 1
    assert {k: quick.method_params[k] for k in AUTHORS_METHOD} == AUTHORS_METHOD and quick.train.amp is False


def test_the_users_own_settings_win_over_the_switch(tmp_path):
    cfg = config.resolve("minmax", "synthetic", "paper",
                         sets=["method.reference_code=true", "train.amp=true", "method.erase_batch=compact"])
    assert cfg.train.amp is True and cfg.method_params["erase_batch"] == "compact"
    assert cfg.train.select_ties == "last" and cfg.method_params["classifier_bn"] == "shared"  # the others switched
    toml = tmp_path / "run.toml"
    toml.write_text('[method]\nreference_code = true\n[model]\nbackbone = "resnet18"\n')
    from_file = config.resolve(None, "synthetic", "paper", file=toml)
    assert from_file.model.backbone == "resnet18" and from_file.train.select_ties == "last"
    with pytest.raises(ConfigError):  # the switch is a boolean
        config.resolve("minmax", "synthetic", "paper", sets=["method.reference_code=1"])


def test_a_short_run_with_the_switch_records_every_switched_setting(tmp_path):
    from wsolbench.training import runner

    sets = [f"model.backbone={BACKBONE}", "train.epochs=2", "method.reference_code=true"]
    sets += [item for item in TINY[:-2] if item != "--set"]
    cfg = config.resolve(None, None, None, sets=sets + [f"output_dir={tmp_path}", "run_name=ref"])
    results = runner.run(cfg).results
    assert 0 <= results["f1_pos"] <= 100 and results["method_label"] == "minmax (u=4, reference code)"
    recorded = json.loads((tmp_path / "ref" / "config.json").read_text())
    assert {k: recorded["method"][k] for k in AUTHORS_METHOD} == AUTHORS_METHOD
    assert recorded["method"]["reference_code"] is True
    assert (recorded["train"]["amp"], recorded["train"]["select_ties"]) == (False, "last")
    rows = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train_erase_depth"] == 0 and rows[1]["train_erase_depth"] >= 1  # erasing from epoch 1
    # the full batch: every pass runs every sample
    assert rows[1]["train_erase_passes"] == rows[1]["train_erase_depth"]


def _authors_training_step(model: MinMaxEntropy, images, labels, u: int, sigma_e: float = 10.0):
    """One training step as the authors' code takes it, restated literally on wsolbench's modules.

    Their order of passes and arithmetic: while some sample's label history
    is intact and fewer than ``u`` passes ran, f runs on the WHOLE batch, the
    mean of Eq.8 over all N is back-propagated, M+ is upsampled with aligned
    corners, min-max normalised over the batch and pseudo-binarised, the trust
    is decay * right label * loss check * p(y) * history, and a sample is
    erased where its trust is non-zero; then g on X+ and g on X- (two calls,
    each resized to the size rounded down, aligned corners) and one backward
    of Eq.3 + Eq.6. ``u = 0``: f, g on X+, g on X- and one backward of all.
    The backbone's batch-norm layers keep their one set of running statistics,
    which every call updates. Returns ``(objective, losses, gradients, running statistics)``;
    ``losses["trusted"]``: per pass, which samples had non-zero trust.
    """
    n, (h, w) = images.shape[0], images.shape[-2:]

    def segment(x):
        scores, maps = model.loc_head(model.backbone(x)[-1])
        prob = F.softmax(scores, dim=1)
        m = torch.zeros(n, 1, *maps.shape[-2:])
        for i in range(n):
            for j in range(prob.shape[1]):
                m[i] = m[i] + prob[i, j] * maps[i, j]
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=True).detach()
        m = (m - m.min()) / (m.max() - m.min())  # over the whole batch
        return torch.sigmoid(8.0 * (m - 0.5)), scores

    def classify(x):
        x = F.interpolate(x, size=(int(h * 0.5), int(w * 0.5)), mode="bilinear", align_corners=True)
        return model.cls_head(model.backbone(x)[-1])[0]

    def classifier_losses(x_pos, x_neg):
        out_pos, out_neg = classify(x_pos), classify(x_neg)
        return F.cross_entropy(out_pos, labels), -F.log_softmax(out_neg, dim=1).mean(dim=1).mean()

    model.zero_grad()
    if u == 0:
        mask, scores = segment(images)
        loss_pos, loss_neg = classifier_losses(images * mask, images * (1 - mask))
        loss_loc = F.cross_entropy(scores, labels)
        (loss_pos + loss_neg + loss_loc).backward()
        per_pass = [loss_loc.detach()]
    else:
        data = images.clone()
        history = torch.ones(n)
        per_pass, trusted, er = [], [], 0
        while history.sum() > 0:
            if er >= u:
                break
            mask, scores = segment(data)
            losses = F.cross_entropy(scores, labels, reduction="none")
            losses.mean().backward()
            losses, probs = losses.detach(), F.softmax(scores, dim=1).detach()
            per_pass.append(losses.mean())
            if er == 0:
                m_pos = torch.zeros_like(mask)
                loss0 = losses.clone()
            p_y, pred = probs.max(dim=1)
            check_loss = (losses <= loss0).float()
            check_label = (pred == labels).float()
            trust = torch.ones(n) * math.exp(-er / sigma_e) * check_label * check_loss * p_y
            history = torch.min(check_label, history)
            trust = (trust * history).view(n, 1, 1, 1)
            trusted.append((trust.flatten() != 0).tolist())
            m_pos = torch.max(m_pos, trust * mask)
            data = data * (1 - m_pos) * (trust != 0).float() + data * (trust == 0).float()
            er += 1
        loss_pos, loss_neg = classifier_losses(images * m_pos, images * (1 - m_pos))
        (loss_pos + loss_neg).backward()
    objective = loss_pos + loss_neg + sum(per_pass)
    grads = {k: v.grad.clone() for k, v in model.named_parameters() if v.grad is not None}
    losses = {"loss_pos": loss_pos.item(), "loss_neg": loss_neg.item(), "loss_loc": per_pass[0].item(),
              "passes": len(per_pass), "trusted": trusted if u else []}
    return objective.item(), losses, grads, _running(_batch_norm_layers(model.backbone))


@pytest.mark.parametrize("epoch", [0, 1])
def test_a_training_step_with_the_switch_equals_the_authors_step(epoch):
    # the switch's method settings, resolved through the configuration
    switched = config.resolve("minmax", "synthetic", "quick", sets=["method.reference_code=true", "method.u=3"])
    params = {k: v for k, v in switched.method_params.items() if k != "reference_code"}
    torch.manual_seed(0)
    spec = ModelSpec(BACKBONE, pooling="wildcat", pooling_params={"dropout": 0.5}, backbone_params={"output_stride": 8})
    method = registry("method").create("minmax", num_classes=2, model=spec, **params)
    method.on_epoch_start(epoch)  # erasing from epoch 1
    method.train()
    authors = copy.deepcopy(method)
    torch.manual_seed(22)
    images = torch.randn(6, 3, 33, 38)  # odd sizes: g's input size is rounded down
    with torch.no_grad():
        probe = copy.deepcopy(method)
        torch.manual_seed(8)
        labels = probe.loc_head(probe.backbone(images)[-1])[0].argmax(1)
    labels[5] = 1 - labels[5]  # one sample wrong from the start: it stops at once, and stays in the batch
    torch.manual_seed(8)
    out = method.training_step({"image": images, "label": labels}, lambda loss: loss.backward())
    grads = {k: v.grad.clone() for k, v in method.named_parameters() if v.grad is not None}
    torch.manual_seed(8)
    objective, losses, expected, running = _authors_training_step(authors, images, labels, u=3 if epoch else 0)

    logs = out.logs
    assert logs["loss_pos"].item() + logs["loss_neg"].item() + logs["loss_loc_passes"].item() == pytest.approx(
        objective, rel=1e-5)
    for key in ("loss_pos", "loss_neg", "loss_loc"):
        assert logs[key].item() == pytest.approx(losses[key], rel=1e-5), key
    assert out.loss.item() == pytest.approx(losses["loss_pos"] + losses["loss_neg"] + losses["loss_loc"], rel=1e-5)
    assert grads.keys() == expected.keys()
    assert any(k.startswith("loc_head") for k in expected) and any(k.startswith("cls_head") for k in expected)
    for k in expected:
        torch.testing.assert_close(grads[k], expected[k], rtol=1e-4, atol=1e-6, msg=k)
    for a, b in zip(_running(_batch_norm_layers(method.backbone)), running, strict=True):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    assert not list(method.cls_bn_stats.buffers())  # one set of statistics
    if epoch:
        assert logs["erase_depth"] == losses["passes"] >= 2 and logs["erase_passes"] == logs["erase_depth"]
        counts = {int(layer.num_batches_tracked) for layer in _batch_norm_layers(method.backbone)}
        assert counts == {losses["passes"] + 2}  # every pass of f and both calls of g
        # the batch exercises the reference trust: a sample untrusted at one pass (a failed loss check,
        # its label right) is trusted again at a later one, which the paper's rule would forbid
        trusted = losses["trusted"]
        assert any(not trusted[t][i] and trusted[t + 1][i] for t in range(len(trusted) - 1) for i in range(6))


def test_cuda_graphs_need_the_full_batch_and_leave_the_cpu_path_unchanged():
    with pytest.raises(ConfigError, match="erase_batch"):
        _method(u=4, cuda_graphs=True)
    torch.manual_seed(3)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 1, 0])
    steps = []
    for graphs in (False, True):
        method = _method(u=3, erase_batch="full", trust_mode="reference", cuda_graphs=graphs)
        method.train()
        torch.manual_seed(4)
        out = method.training_step({"image": images, "label": labels}, lambda loss: loss.backward())
        steps.append((out.loss.item(), {k: v.grad.clone() for k, v in method.named_parameters() if v.grad is not None}))
        assert not method._graphs  # nothing captured off CUDA
    assert steps[0][0] == steps[1][0]
    assert all(torch.equal(steps[0][1][k], steps[1][1][k]) for k in steps[0][1])
    # the unit a graph captures is f's pass, and it adds nothing to the checkpoint
    method.eval()
    with torch.no_grad():
        for a, b in zip(LocalizerPass(method.backbone, method.loc_head)(images), method.localizer(images)):
            torch.testing.assert_close(a, b)
    assert list(method.state_dict()) == list(_method(u=3).state_dict())
