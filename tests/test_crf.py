"""Dense-CRF post-processing: it sharpens a blurred map of a sharp object, and runs report it."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import TINY
from scipy import ndimage

from wsolbench import config, crf
from wsolbench.errors import ConfigError


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * np.logical_and(pred, truth).sum() / (pred.sum() + truth.sum())


def disc_scene(size: int = 64):
    """A sharp red disc on a blue noisy background, and a blurred, shifted map of it."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    truth = (yy - 30) ** 2 + (xx - 34) ** 2 < 15**2
    image = np.where(truth[..., None], [200, 60, 40], [40, 120, 200]) + rng.normal(0, 10, (size, size, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    blurred = ndimage.shift(ndimage.gaussian_filter(truth.astype(float), 6), (3, -3), order=1)
    blurred = (blurred - blurred.min()) / (blurred.max() - blurred.min())
    return image, truth, blurred.astype(np.float32)


@pytest.mark.parametrize("params", [crf.NATURAL, crf.HISTOLOGY])
def test_crf_sharpens_a_blurred_map_onto_the_object(params):
    pytest.importorskip("pydensecrf.densecrf")
    image, truth, blurred = disc_scene()
    refined = crf.refine(blurred, image, params)
    assert refined.shape == truth.shape and refined.min() >= 0 and refined.max() <= 1
    before, after = dice(blurred >= 0.5, truth), dice(refined >= 0.5, truth)
    assert before < 0.85
    assert after > before + 0.05 and after > 0.9


def test_crf_leaves_a_map_that_matches_the_image_alone():
    pytest.importorskip("pydensecrf.densecrf")
    image, truth, _ = disc_scene()
    exact = np.where(truth, 0.9, 0.1).astype(np.float32)
    assert dice(crf.refine(exact, image) >= 0.5, truth) > 0.99


def test_parameters_from_the_dataset_then_overrides():
    class Histology:
        crf_params = {"iterations": 2, "gauss_sxy": 3.0, "bilateral_sxy": 13.0, "bilateral_srgb": 3.0}

    assert crf.params_for(object()) == crf.NATURAL
    assert crf.params_for(Histology()) == crf.HISTOLOGY
    assert crf.params_for(Histology(), {"iterations": 7}).iterations == 7
    with pytest.raises(ConfigError, match="unknown CRF parameters"):
        crf.params_for(object(), {"sxy": 3})


def test_bad_crf_parameters_are_refused_before_training():
    with pytest.raises(ConfigError, match="unknown CRF parameters"):
        config.resolve("cam-avg", sets=["eval.crf_params={sxy = 3}"])
    with pytest.raises(ConfigError, match="at least one iteration"):
        config.resolve("cam-avg", sets=["eval.crf_params={iterations = 0}"])


def test_crf_without_pydensecrf_is_refused_before_training(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pydensecrf" else real(name, *a))
    with pytest.raises(ConfigError, match=r"wsolbench\[crf\]"):
        config.resolve("cam-avg", sets=["eval.crf=true"])


def test_run_with_crf_reports_both(tmp_path):
    pytest.importorskip("pydensecrf.densecrf")
    from wsolbench.cli import main

    args = ["run", "--method", "cam-avg", "-q", "--output-dir", str(tmp_path), "--run-name", "r", *TINY,
            "--epochs", "0", "--set", "eval.crf=true", "--set", "eval.pictures=2"]
    main(args)
    run = tmp_path / "r"
    results = json.loads((run / "results.json").read_text())
    assert results["crf"]["params"] == {**vars(crf.NATURAL)}
    assert results["crf"]["n_images"] == results["n_images"] == 8
    for key in ("f1_pos", "f1_neg", "pxap", "dice_best"):
        assert 0 <= results["crf"][key] <= 100
    rows = (run / "per_image.csv").read_text().splitlines()
    assert rows[0] == "id,label,pred,f1_pos,f1_neg,box_iou,box_iou_any,crf_f1_pos,crf_f1_neg"
    crf_pos = [float(r.split(",")[7]) for r in rows[1:]]
    assert np.mean(crf_pos) == pytest.approx(results["crf"]["f1_pos"], abs=1e-3)
    hist = np.load(run / "histograms_crf.npz")
    assert hist["fg"].sum() + hist["bg"].sum() == 8 * 32 * 32
    for name in ("overlays.png", "pr_curve.png"):
        assert (run / name).stat().st_size > 0


def test_glas_brings_the_papers_histology_parameters():
    from wsolbench_plugins.datasets.glas import Glas

    from wsolbench.crf import HISTOLOGY, params_for

    assert params_for(Glas) == HISTOLOGY
