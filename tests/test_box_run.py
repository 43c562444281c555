"""Box metrics through a whole run: results.json, per_image.csv and the report."""

from __future__ import annotations

import csv
import json
import math

from conftest import TINY, run_cli

from wsolbench.scoring.metrics import METRICS, PROTOCOLS

BOX_METRICS = [name for name, m in METRICS.items() if m.protocol in ("box", "box_at_valid", "box_localization")]


def test_a_synthetic_run_reports_every_box_metric_and_the_report_shows_them(tmp_path):
    proc = run_cli("run", "--method", "cam-avg", "-q", "--output-dir", str(tmp_path), "--run-name", "boxes",
                   "--set", "eval.map_class=ground_truth", "--set", "eval.cam_curve_interval=0.05",
                   "--set", "eval.select=maxboxaccv2", *TINY)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "boxes" / "results.json").read_text())
    epoch = json.loads((tmp_path / "boxes" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 <= epoch["valid_maxboxaccv2"] <= 100  # the model is selected on validation boxes
    assert len(BOX_METRICS) == 21
    for name in BOX_METRICS:
        value = results[name]
        assert value is not None and math.isfinite(value), name
        assert 0 <= value <= (1 if "threshold" in name else 100), name
    assert results["maxboxaccv2"] == (results["boxacc_30"] + results["boxacc_50"] + results["boxacc_70"]) / 3
    assert results["boxacc_30"] >= results["boxacc_50"] >= results["boxacc_70"]
    # the CVPR 2020 protocol: thresholds chosen on the validation split, never better than the test-optimal ones
    assert results["thresholds_from"] == "valid" and "valid split" in results["protocol"]["box_localization"]
    assert results["gt_known_loc"] == results["boxacc_at_val"]  # the same box at the same threshold
    assert results["boxacc_at_val"] <= results["maxboxacc"]
    for iou in (30, 50, 70):
        assert results[f"boxacc_{iou}_at_val"] <= results[f"boxacc_{iou}"]
    assert results["boxaccv2_at_val"] == sum(results[f"boxacc_{i}_at_val"] for i in (30, 50, 70)) / 3
    assert results["dice_at_val"] <= results["dice_best"] and 0 <= results["threshold_val"] <= 1
    assert results["top5_loc"] >= results["top1_loc"]
    assert "ground_truth" in results["protocol"]["box"] and "0.05" in results["protocol"]["box"]
    with open(tmp_path / "boxes" / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    # per image, the IoU at the validation split's threshold gives the box accuracy there back
    assert 100 * sum(float(r["box_iou"]) >= 50 for r in rows) / 8 == results["boxacc_at_val"]

    report = run_cli("report", str(tmp_path), "--metrics", "all")
    assert report.returncode == 0, report.stderr
    for name in BOX_METRICS:
        assert METRICS[name].title in report.stdout, name
    assert PROTOCOLS["box"].note.split(":")[1].strip()[:40] in " ".join(report.stdout.split())
