"""posthoc: pytorch-grad-cam's maps on a CAM classifier, checked against the maths; evaluate-run --method."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from wsolbench_plugins.methods import posthoc
from wsolbench_plugins.methods.posthoc import CAMS

from wsolbench import config
from wsolbench.assembly import method_label
from wsolbench.cli import main
from wsolbench.errors import CheckpointError, ConfigError, UserError
from wsolbench.interfaces import ModelSpec
from wsolbench.models import minmax_normalize
from wsolbench.testing import TINY_MODEL, build_method, check_method, make_batch
from wsolbench.training import checkpoint_eval, engine, runner

#: timm's smallest ResNet (96 channels): Score-CAM and Ablation-CAM run one forward pass per channel
SMALL = ModelSpec(backbone="test_resnet", pretrained=False)
TINY_SETS = [TINY[i + 1] for i in range(0, len(TINY) - 2, 2) if TINY[i] == "--set"]


@pytest.mark.parametrize("cam", list(CAMS))
def test_one_training_step_through_the_conformance_kit(cam):
    check_method("posthoc", model=SMALL, cam=cam)


def test_conformance_on_the_quick_network():
    check_method("posthoc")


def _pair(cam: str, model: ModelSpec = TINY_MODEL, size: tuple[int, int] = (32, 24)):
    """A posthoc method of 3 classes and two images; its weights random but fixed."""
    torch.manual_seed(0)
    method = build_method("posthoc", num_classes=3, model=model, cam=cam).eval()
    images = make_batch(3, size, n=2, masks=False, seed=1)["image"]
    return method, images


def _finish(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ReLU, bilinear resize to the image, min-max per image: the common end of every CAM."""
    maps = F.relu(maps).unsqueeze(1)
    return minmax_normalize(F.interpolate(maps, size=size, mode="bilinear", align_corners=False).squeeze(1))


def _features_and_grads(method, images, classes):
    features = method.backbone(images)[-1].detach().requires_grad_(True)
    scores = method.head(features)[0]
    (grads,) = torch.autograd.grad(scores.gather(1, classes.view(-1, 1)).sum(), features)
    return features.detach(), grads


def test_grad_cam_equals_the_built_in_gradcam_on_the_same_weights():
    method, images = _pair("gradcam")
    builtin = build_method("gradcam", num_classes=3)
    builtin.load_state_dict(method.state_dict())
    builtin.eval()
    logits = method.predict(images)
    torch.testing.assert_close(method.localize(images, logits), builtin.localize(images, logits), atol=1e-5, rtol=0)
    for classes in (torch.tensor([0, 2]), torch.tensor([1, 1])):
        torch.testing.assert_close(method.localize_class(images, classes), builtin.localize_class(images, classes),
                                   atol=1e-5, rtol=0)


def test_layer_cam_weighs_each_position_by_its_positive_gradient():
    method, images = _pair("layercam")
    classes = torch.tensor([2, 0])
    features, grads = _features_and_grads(method, images, classes)
    expected = _finish((F.relu(grads) * features).sum(1), images.shape[-2:])
    torch.testing.assert_close(method.localize_class(images, classes), expected, atol=1e-5, rtol=0)


def test_ablation_cam_weighs_each_channel_by_the_score_drop_without_it():
    method, images = _pair("ablationcam", SMALL, (96, 64))  # 3 x 2 feature maps
    classes = torch.tensor([1, 2])
    with torch.no_grad():
        features = method.backbone(images)[-1]
        # after a ReLU each image has zeros: pytorch-grad-cam then ablates a channel by setting it to 0
        assert torch.all(features.flatten(1).amin(1) == 0)
        score = method.head(features)[0].gather(1, classes.view(-1, 1)).squeeze(1)
        weights = torch.empty(features.shape[:2])
        for k in range(features.shape[1]):
            ablated = features.clone()
            ablated[:, k] = 0
            weights[:, k] = (score - method.head(ablated)[0].gather(1, classes.view(-1, 1)).squeeze(1)) / score
    expected = _finish((weights[..., None, None] * features).sum(1), images.shape[-2:])
    torch.testing.assert_close(method.localize_class(images, classes), expected, atol=1e-4, rtol=0)


def test_score_cam_weighs_each_channel_by_the_softmax_of_the_masked_images_scores():
    method, images = _pair("scorecam", SMALL, (96, 64))
    classes = torch.tensor([0, 2])
    with torch.no_grad():
        features = method.backbone(images)[-1]
        up = F.interpolate(features, size=images.shape[-2:], mode="bilinear", align_corners=True)
        lo, hi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
        masks = (up - lo) / (hi - lo + 1e-8)
        weights = torch.empty(features.shape[:2])
        for n in range(len(images)):
            masked = images[n : n + 1] * masks[n].unsqueeze(1)  # (C, 3, H, W): the image under each channel
            weights[n] = torch.softmax(method.predict(masked)[:, classes[n]], dim=0)
    expected = _finish((weights[..., None, None] * features).sum(1), images.shape[-2:])
    torch.testing.assert_close(method.localize_class(images, classes), expected, atol=1e-4, rtol=0)


def test_eigen_cam_is_the_same_map_for_every_class():
    method, images = _pair("eigencam")
    first = method.localize_class(images, torch.tensor([0, 0]))
    assert torch.equal(first, method.localize_class(images, torch.tensor([2, 1])))
    assert first.shape == (2, 32, 24) and float(first.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("cam", ["gradcam++", "xgradcam"])
def test_the_class_changes_the_gradient_maps(cam):
    method, images = _pair(cam)
    a = method.localize_class(images, torch.tensor([0, 0]))
    b = method.localize_class(images, torch.tensor([1, 1]))
    assert not torch.allclose(a, b, atol=1e-3)


def test_maps_leave_gradients_and_training_mode_as_they_were():
    method, images = _pair("gradcam")
    method.train()
    marker = {name: torch.full_like(p, 3.0) for name, p in method.named_parameters()}
    for name, p in method.named_parameters():
        p.grad = marker[name].clone()
    method.localize_class(images, torch.tensor([0, 1]))
    assert method.training and all(m.training for m in method.modules())
    assert all(torch.equal(p.grad, marker[name]) for name, p in method.named_parameters())
    assert not any(m._forward_hooks for m in method.modules())  # pytorch-grad-cam's hooks are removed


def test_bad_settings_and_a_missing_extra_are_one_paragraph_errors(monkeypatch):
    with pytest.raises(ConfigError, match="method.cam must be one of gradcam, gradcam\\+\\+"):
        build_method("posthoc", cam="gradcam+")
    with pytest.raises(ConfigError, match="forward_batch"):
        build_method("posthoc", forward_batch=0)

    def missing(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(posthoc.importlib, "import_module", missing)
    with pytest.raises(UserError, match=r"pip install 'wsolbench\[cams\]'"):
        build_method("posthoc")


def test_label_names_the_cam():
    cfg = config.resolve("posthoc", "synthetic", "quick", sets=["method.cam=scorecam"])
    assert method_label(cfg) == "posthoc (scorecam)"
    run = config.resolve("cam-avg", "synthetic", "quick", sets=['label="CAM (mine)"'])
    assert method_label(config.rebase(run, "posthoc", ["method.cam=scorecam"])) == "posthoc (scorecam)"
    assert method_label(config.rebase(run, None, ["eval.threshold=0.4"])) == "CAM (mine)"  # same method: kept


# -- a posthoc method on an existing run's weights -------------------------------------
@pytest.fixture(scope="module")
def cam_run(tmp_path_factory):
    """A finished tiny cam-avg run."""
    root = tmp_path_factory.mktemp("posthoc")
    cfg = config.resolve("cam-avg", "synthetic", "quick", options={
        "output_dir": str(root), "run_name": "run", "device": "cpu", "train": {"epochs": 1}}, sets=TINY_SETS)
    return runner.run(cfg).run_dir.path


def _maps(run, monkeypatch, **kwargs):
    maps = {}

    class Catching(engine.TestExtras):
        def update(self, index, heat, mask):
            maps[index] = heat.cpu().clone()
            super().update(index, heat, mask)

    monkeypatch.setattr(engine, "TestExtras", Catching)  # where a split is scored
    results = checkpoint_eval.evaluate_checkpoint(run, device="cpu", **kwargs)
    return results, maps


def test_evaluate_run_scores_another_method_on_the_runs_weights(cam_run, monkeypatch):
    ours, ours_maps = _maps(cam_run, monkeypatch, method="posthoc", sets=["method.cam=gradcam"])
    builtin, builtin_maps = _maps(cam_run, monkeypatch, method="gradcam")
    assert (ours["method"], ours["method_label"], builtin["method"]) == ("posthoc", "posthoc (gradcam)", "gradcam")
    assert ours_maps.keys() == builtin_maps.keys() and len(ours_maps) == 8
    for i in ours_maps:
        torch.testing.assert_close(ours_maps[i], builtin_maps[i], atol=1e-4, rtol=0)
    assert ours["cl_error"] == builtin["cl_error"]
    assert ours["pxap"] == pytest.approx(builtin["pxap"], abs=0.05)
    own, _ = _maps(cam_run, monkeypatch)  # the run's own method: the same classifier
    assert own["method"] == "cam-avg" and own["cl_error"] == ours["cl_error"]


def test_evaluate_run_settings_reach_the_method_and_the_evaluation(cam_run, monkeypatch):
    results, _ = _maps(cam_run, monkeypatch, method="posthoc",
                       sets=["method.cam=eigencam", "eval.map_class=ground_truth"])
    assert results["method_label"] == "posthoc (eigencam)"
    assert "ground_truth" in str(results["protocol"])
    with pytest.raises(ConfigError, match="method.cam"):
        checkpoint_eval.evaluate_checkpoint(cam_run, device="cpu", method="posthoc", sets=["method.cam=nope"])


def test_evaluate_run_refuses_weights_that_do_not_fit_the_other_method(cam_run):
    with pytest.raises(CheckpointError, match="does not fit the model of method .acol.*the run is of method .cam-avg."):
        checkpoint_eval.evaluate_checkpoint(cam_run, device="cpu", method="acol")


def test_evaluate_run_command_takes_method_and_set(cam_run, tmp_path):
    out = tmp_path / "layercam"
    try:
        main(["evaluate-run", str(cam_run), "-q", "--method", "posthoc", "--set", "method.cam=layercam",
              "--output-dir", str(out)])
    except SystemExit as exc:
        assert exc.code in (0, None)
    results = json.loads((out / "results.json").read_text())
    assert (results["method"], results["method_label"]) == ("posthoc", "posthoc (layercam)")
    with pytest.raises(SystemExit) as refused:
        main(["evaluate-run", str(cam_run), "-q", "--method", "adl"])
    assert refused.value.code == 2


# -- the paper profile, through the configuration ----------------------------------------
def test_paper_profile_trains_the_classifier_as_wsolevaluation_trains_cam():
    cub = config.resolve("posthoc", "cub", "paper")  # on Grad-CAM's VGG-16
    assert (cub.model.backbone, cub.model.output_stride, cub.train.epochs, cub.train.batch_size,
            cub.train.weight_decay, cub.train.lr_step) == ("vgg16_cam", 0, 50, 32, 5e-4, 15)
    assert cub.method_params == {"cam": "gradcam", "forward_batch": 32}
    glas = config.resolve("posthoc", "glas", "paper", sets=["method.cam=scorecam"])
    assert (glas.model.backbone, glas.train.epochs, glas.method_params["cam"]) == ("resnet18", 160, "scorecam")
