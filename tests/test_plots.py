"""Pictures show what they claim: overlays against their masks, PR curves against the metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, run_cli
from PIL import Image

from wsolbench.runs import report as rep
from wsolbench.scoring import plots
from wsolbench.scoring.metrics import LocalizationAccumulator, precision_recall_curve


def square_sample(size: int = 20) -> plots.Sample:
    rng = np.random.default_rng(0)
    image = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    truth = np.zeros((size, size), bool)
    truth[5:15, 5:15] = True
    heat = np.zeros((size, size), np.float32)
    heat[5:15, 8:18] = 0.9  # shifted right by 3: 70 of 100 true pixels found, 30 false
    return plots.Sample("img_0", image, truth, heat)


def test_overlay_tints_exactly_the_region():
    image = np.full((4, 4, 3), 100, np.uint8)
    region = np.zeros((4, 4), bool)
    region[1, 2] = True
    out = plots.overlay(image, region, (200, 0, 0), alpha=0.5)
    assert tuple(out[1, 2]) == (150, 50, 50)
    assert (out[~region] == 100).all()


def test_overlay_panels_mark_truth_boundary_and_prediction():
    sample = square_sample()
    panels = plots.overlay_panels(sample, threshold=0.5, tile=20)  # tile = image size: no resizing
    captions = [c for c, _ in panels]
    assert captions == ["img_0", "map", "map>=0.5 F1+ 70.0"]  # Dice = 2*70 / (100 + 100)
    edge = plots.boundary(sample.mask, width=2)
    assert edge[5, 5] and edge[6, 6] and not edge[7, 7] and not edge[0, 0]
    for _, panel in panels:
        assert (panel[edge] == plots.TRUTH_RGB).all()
    prediction = panels[2][1]
    inside_only_pred = (10, 16)  # predicted, not true, not on the true boundary
    expected = plots.overlay(sample.image, sample.map >= 0.5, plots.PREDICTION_RGB)[inside_only_pred]
    assert tuple(prediction[inside_only_pred]) == tuple(expected)
    assert tuple(prediction[0, 0]) == tuple(sample.image[0, 0])  # neither: untouched


def test_overlay_grid_has_one_row_per_image(tmp_path):
    samples = [square_sample(), square_sample()]
    samples[1].crf = samples[1].mask.astype(np.float32)
    path = plots.draw_overlays(samples, tmp_path / "o.png", tile=40)
    with Image.open(path) as im:
        width, height = im.size
        pixels = np.asarray(im.convert("RGB"))
    assert width == 4 * (40 + 4) + 4  # a CRF column, since one sample has a CRF map
    assert height == 2 * (40 + 14 + 4) + 4
    assert tuple(pixels[4 + 14 + 10, 4 + 10]) == plots.TRUTH_RGB  # the true square's corner, scaled x2


def test_pr_figure_draws_the_metrics_curve():
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(3, 16, 16, generator=g) < 0.3).float()
    maps = (0.5 * torch.rand(3, 16, 16, generator=g) + 0.5 * masks).clamp(0, 1)
    acc = LocalizationAccumulator(bins=100)
    acc.update(maps, masks)
    pxap = acc.compute()["pxap"]
    curve = plots.Curve("m", acc.hist_fg.numpy(), acc.hist_bg.numpy())
    fig = plots.pr_figure([curve])
    ax = fig.axes[0]
    _, precision, recall = precision_recall_curve(acc.hist_fg, acc.hist_bg)
    np.testing.assert_allclose(ax.lines[0].get_xdata(), recall.numpy())
    np.testing.assert_allclose(ax.lines[0].get_ydata(), precision.numpy())
    assert ax.get_legend().get_texts()[0].get_text() == f"m (PxAP {pxap:.1f})"
    dot = ax.lines[1]  # the operating point at threshold 0.5
    pred = maps >= 0.5
    truth = masks >= 0.5
    assert dot.get_xdata()[0] == pytest.approx((pred & truth).sum().item() / truth.sum().item())
    assert dot.get_ydata()[0] == pytest.approx((pred & truth).sum().item() / pred.sum().item())


def test_report_curves_pool_the_seeds(tmp_path):
    rng = np.random.default_rng(0)
    hists = {}
    for seed in (0, 1):
        run = tmp_path / f"s{seed}"
        run.mkdir()
        (run / "manifest.json").write_text(json.dumps({"status": "completed"}))
        (run / "results.json").write_text(json.dumps(
            {"method_label": "cam-avg", "dataset": "glas", "seed": seed, "pxap": 40.0 + seed, "f1_pos": 1.0}))
        hists[seed] = (rng.integers(0, 50, 11), rng.integers(0, 50, 11))
        np.savez(run / "histograms.npz", fg=hists[seed][0], bg=hists[seed][1])
    collection = rep.collect([tmp_path])
    summary = rep.summarize(collection.runs, ["pxap"])
    (curve,) = rep.dataset_curves(collection.runs, summary)["glas"]
    np.testing.assert_array_equal(curve.hist_fg, hists[0][0] + hists[1][0])
    np.testing.assert_array_equal(curve.hist_bg, hists[0][1] + hists[1][1])
    assert curve.pxap == pytest.approx(40.5) and curve.label == "cam-avg (2 runs)"
    written = rep.draw_curves(collection.runs, tmp_path / "plots", summary)
    assert sorted(p.name for p in written) == ["pr_glas.pdf", "pr_glas.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_the_boxes_panel_draws_true_and_predicted_boxes_pixel_for_pixel():
    sample = square_sample(12)
    sample.true_boxes = np.array([[2, 3, 6, 8]])
    sample.pred_box = np.array([4, 4, 9, 10])
    panels = plots.overlay_panels(sample, tile=12)  # tile = image size: no resizing
    caption, panel = panels[-1]
    # inclusive pixels: intersection 3 x 5 = 15, union 5 x 6 + 6 x 7 - 15 = 57
    assert caption == f"box IoU {100 * 15 / 57:.1f}"
    truth = np.zeros((12, 12), bool)
    truth[3:9, [2, 6]] = True
    truth[[3, 8], 2:7] = True
    pred = np.zeros((12, 12), bool)
    pred[4:11, [4, 9]] = True
    pred[[4, 10], 4:10] = True
    assert (panel[pred] == plots.PREDICTION_RGB).all()  # drawn last: on top where the two cross
    assert (panel[truth & ~pred] == plots.TRUTH_RGB).all()
    assert (panel[~truth & ~pred] == sample.image[~truth & ~pred]).all()  # the rest is the image, no boundary


def test_a_box_outline_scales_with_the_panel():
    # a 10 x 10 image drawn at 20 x 20: the box of pixels 2..4 covers panel pixels 4..9
    outline = plots.box_outline((20, 20), (2, 2, 4, 4), frame=(10, 10))
    rows, columns = np.nonzero(outline)
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (4, 9, 4, 9)
    assert not outline[6, 6]  # an outline, not a fill


def test_a_run_draws_boxes_in_its_overlays(tmp_path):
    proc = run_cli("run", "--method", "cam-avg", "-q", "--output-dir", str(tmp_path), "--run-name", "r", *TINY,
                   "--set", "eval.pictures=2")
    assert proc.returncode == 0, proc.stderr
    with Image.open(tmp_path / "r" / "overlays.png") as im:
        width = im.size[0]
    assert width == 4 * (160 + 4) + 4  # image, map, mask and the boxes panel
