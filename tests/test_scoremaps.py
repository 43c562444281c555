"""External score maps: validated per file, scored like wsolbench's own maps."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from box_reference import reference_best_ious
from sklearn.metrics import average_precision_score

from wsolbench import config
from wsolbench.cli import main
from wsolbench.plugin_host import registry
from wsolbench.scoring import scoremaps

SETS = ["dataset.image_size=24", "dataset.n_test=6"]


@pytest.fixture
def split():
    dataset = registry("dataset").create("synthetic", seed=0, image_size=24, n_test=6)
    test = dataset.split("test", train=False)
    masks = [test[i]["mask"][0].numpy() >= 0.5 for i in range(len(test))]
    labels = [test[i]["label"] for i in range(len(test))]
    return test.ids, masks, labels


def hand_made_maps(folder, ids, masks):
    rng = np.random.default_rng(1)
    folder.mkdir()
    maps = []
    for image_id, mask in zip(ids, masks):
        m = np.clip(0.35 * mask + 0.75 * rng.random(mask.shape), 0, 1).astype(np.float32)
        if image_id.endswith("3"):
            m = m[None]  # (1, H, W) is accepted
        np.save(folder / f"{image_id}.npy", m)
        maps.append(m.reshape(mask.shape))
    return maps


def slow_dice(pred, truth):
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else 2.0 * (pred & truth).sum() / total


def test_metrics_match_independent_computations(tmp_path, split):
    ids, masks, labels = split
    maps = hand_made_maps(tmp_path / "maps", ids, masks)
    preds = [1 - labels[0], *labels[1:]]  # one wrong of six
    (tmp_path / "preds.csv").write_text("id,pred\n" + "".join(f"{i},{p}\n" for i, p in zip(ids, preds)))
    cfg = config.resolve(None, "synthetic", sets=SETS)
    out = scoremaps.evaluate_directory(tmp_path / "maps", cfg, "test", tmp_path / "preds.csv", "mine")
    results = out.finish()
    assert results["method_label"] == "mine" and results["n_images"] == 6
    assert results["cl_error"] == pytest.approx(100 / 6)
    pos = [slow_dice(m >= 0.5, g) for m, g in zip(maps, masks)]
    neg = [slow_dice(m < 0.5, ~g) for m, g in zip(maps, masks)]
    assert results["f1_pos"] == pytest.approx(100 * np.mean(pos))
    assert results["f1_neg"] == pytest.approx(100 * np.mean(neg))
    values = np.concatenate([m.ravel() for m in maps])
    truth = np.concatenate([g.ravel() for g in masks])
    binned = np.floor(values * 1000) / 1000  # the 1000-bin histogram's thresholds
    assert results["pxap"] == pytest.approx(100 * average_precision_score(truth, binned), abs=1e-6)
    dices = [slow_dice(binned >= t, truth) for t in np.unique(binned)]
    assert results["dice_best"] == pytest.approx(100 * max(dices))
    assert results["threshold_best"] == pytest.approx(np.unique(binned)[int(np.argmax(dices))])
    assert [r["id"] for r in out.per_image] == list(ids)


def test_without_predictions_the_error_is_null(tmp_path, split):
    ids, masks, _ = split
    hand_made_maps(tmp_path / "maps", ids, masks)
    np.save(tmp_path / "maps" / "stray.npy", np.zeros((24, 24), np.float32))
    out = scoremaps.evaluate_directory(tmp_path / "maps", config.resolve(None, "synthetic", sets=SETS))
    assert out.results["cl_error"] is None
    assert out.unmatched == ["stray.npy"]


def test_every_bad_file_is_reported(tmp_path, split):
    ids, masks, _ = split
    folder = tmp_path / "maps"
    hand_made_maps(folder, ids, masks)
    np.save(folder / f"{ids[0]}.npy", np.full((24, 24), np.nan, np.float32))
    np.save(folder / f"{ids[1]}.npy", np.zeros((23, 24), np.float32))
    np.save(folder / f"{ids[2]}.npy", np.full((24, 24), 1.5, np.float32))
    (folder / f"{ids[3]}.npy").unlink()
    np.save(folder / f"{ids[4]}.npy", np.zeros((24, 24), np.int64))
    (folder / f"{ids[5]}.npy").write_bytes(b"not numpy")
    with pytest.raises(scoremaps.ScoreMapError) as info:
        scoremaps.evaluate_directory(folder, config.resolve(None, "synthetic", sets=SETS))
    problems = {p.file: p.problem for p in info.value.problems}
    assert problems[f"{ids[0]}.npy"] == "576 NaN values"
    assert problems[f"{ids[1]}.npy"] == "shape (23, 24), expected (24, 24)"
    assert problems[f"{ids[2]}.npy"] == "576 values outside [0, 1] (min 1.5, max 1.5)"
    assert problems[f"{ids[3]}.npy"] == "missing"
    assert problems[f"{ids[4]}.npy"] == "dtype int64, expected floating point"
    assert problems[f"{ids[5]}.npy"].startswith("unreadable")


def test_evaluate_command_exits_2_on_bad_maps_and_writes_a_reportable_run(tmp_path, split, capsys):
    ids, masks, _ = split
    folder = tmp_path / "maps"
    hand_made_maps(folder, ids, masks)
    args = ["evaluate", "--scoremaps", str(folder), "--dataset", "synthetic", *sum([["--set", s] for s in SETS], [])]
    main([*args, "--output-dir", str(tmp_path / "out"), "--run-name", "ext", "--set", "eval.pictures=2"])
    run = tmp_path / "out" / "ext"
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"
    results = json.loads((run / "results.json").read_text())
    assert results["method_label"] == "maps" and results["cl_error"] is None
    for name in ("per_image.csv", "histograms.npz", "overlays.png", "pr_curve.png"):
        assert (run / name).is_file(), name
    from wsolbench.runs import report

    collected = report.collect([tmp_path / "out"])
    assert list(collected.runs["label"]) == ["maps"] and collected.skipped == []

    np.save(folder / f"{ids[2]}.npy", np.full((24, 24), -0.5, np.float32))
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{ids[2]}.npy" in err and "outside [0, 1]" in err and "Traceback" not in err


def test_wsolevaluation_naming_scores_the_same(tmp_path, split):
    ids, masks, _ = split
    hand_made_maps(tmp_path / "ours", ids, masks)
    theirs = tmp_path / "theirs"
    for image_id in ids:  # wsolevaluation: the image id, extension and split folder included, then .npy
        target = theirs / "test" / f"{image_id}.jpg.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((tmp_path / "ours" / f"{image_id}.npy").read_bytes())
    (theirs / "test" / "stray.npy").write_bytes(b"")
    cfg = config.resolve(None, "synthetic", sets=SETS)
    ours = scoremaps.evaluate_directory(tmp_path / "ours", cfg, "test").finish()
    scored = scoremaps.evaluate_directory(theirs, cfg, "test")
    keys = ("f1_pos", "pxap", "maxboxacc", "maxboxaccv2", "n_images")
    assert {k: scored.finish()[k] for k in keys} == {k: ours[k] for k in keys}
    assert scored.unmatched == ["test/stray.npy"]


def test_map_names_are_matched_without_extension_and_split_folder():
    assert scoremaps.map_key("test/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg.npy") == \
        "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18"
    assert scoremaps.map_key("val/ILSVRC2012_val_00000001.JPEG.npy") == "ILSVRC2012_val_00000001"
    assert scoremaps.map_key("001.Black_footed_Albatross/x") == "001.Black_footed_Albatross/x"


def test_two_files_for_one_image_are_a_problem(tmp_path, split):
    ids, masks, _ = split
    hand_made_maps(tmp_path / "maps", ids, masks)
    (tmp_path / "maps" / f"{ids[0]}.npy").rename(tmp_path / "maps" / f"{ids[0]}.png.npy")
    (tmp_path / "maps" / "test").mkdir()
    (tmp_path / "maps" / "test" / f"{ids[0]}.jpg.npy").write_bytes((tmp_path / "maps" / f"{ids[1]}.npy").read_bytes())
    cfg = config.resolve(None, "synthetic", sets=SETS)
    with pytest.raises(scoremaps.ScoreMapError) as caught:
        scoremaps.evaluate_directory(tmp_path / "maps", cfg, "test")
    assert [p.file for p in caught.value.problems] == [f"{ids[0]}.npy"]
    assert "2 files match" in caught.value.problems[0].problem


def test_wsoleval_protocol_takes_maps_of_224(tmp_path, split):
    ids, masks, _ = split
    hand_made_maps(tmp_path / "small", ids, masks)
    cfg = config.resolve(None, "synthetic", sets=[*SETS, "eval.protocol=wsoleval"])
    with pytest.raises(scoremaps.ScoreMapError) as caught:
        scoremaps.evaluate_directory(tmp_path / "small", cfg, "test")
    assert all("expected (224, 224)" in p.problem for p in caught.value.problems)
    big = tmp_path / "big"
    big.mkdir()
    for image_id, mask in zip(ids, masks):  # the mask itself, at 224 x 224: every true box is found
        up = np.kron(mask.astype(np.float32), np.ones((224 // mask.shape[0] + 1,) * 2, np.float32))[:224, :224]
        np.save(big / f"{image_id}.npy", np.ascontiguousarray(up))
    results = scoremaps.evaluate_directory(big, cfg, "test").finish()
    assert results["n_images"] == len(ids) and "wsoleval" in results["protocol"]["box"]
    assert 0 <= results["maxboxacc"] <= 100 and results["pxap"] is not None


def test_evaluate_scores_the_whole_split_by_default(tmp_path):
    dataset = registry("dataset").create("synthetic", seed=0, image_size=24)  # the paper profile: n_test = 100
    test = dataset.split("test", train=False)
    masks = [test[i]["mask"][0].numpy() >= 0.5 for i in range(len(test))]
    hand_made_maps(tmp_path / "maps", test.ids, masks)
    try:
        main(["evaluate", "--scoremaps", str(tmp_path / "maps"), "-d", "synthetic", "--set", "dataset.image_size=24",
              "-o", str(tmp_path / "runs"), "--run-name", "all"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    results = json.loads((tmp_path / "runs" / "all" / "results.json").read_text())
    assert results["n_images"] == len(test) == 100 and results["profile"] == "paper"


# -- thresholds chosen on validation maps (the CVPR 2020 protocol) ----------------------
VALID_SETS = [*SETS, "dataset.n_valid=6"]
THRESHOLDS = np.arange(0, 1, 0.01)  # eval.cam_curve_interval's grid


@pytest.fixture
def splits():
    dataset = registry("dataset").create("synthetic", seed=0, image_size=24, n_test=6, n_valid=6)
    return {name: dataset.split(name, train=False) for name in ("valid", "test")}


def blob_maps(folder, split, seed, sharpness):
    """Each object a blob around its mask, over noise: the sharper, the higher its best box threshold."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    maps = []
    for index, image_id in enumerate(split.ids):
        mask = split[index]["mask"][0].numpy().astype(np.float64)
        y, x = np.mgrid[-3:4, -3:4]
        kernel = np.exp(-(x**2 + y**2) / (2.0 * (3.0 / sharpness) ** 2))
        padded = np.pad(mask, 3)
        blurred = sum(kernel[i, j] * padded[i:i + mask.shape[0], j:j + mask.shape[1]]
                      for i in range(7) for j in range(7)) / kernel.sum()
        m = np.clip(0.8 * blurred + 0.3 * rng.random(mask.shape), 0, 1).astype(np.float32)
        np.save(folder / f"{image_id}.npy", m)
        maps.append(m)
    return maps


def best_ious(maps, split, every_contour):
    """``(images, thresholds)``: each image's best box IoU at each threshold, by the OpenCV reference."""
    return np.stack([reference_best_ious(m, split[i]["boxes"].tolist(), THRESHOLDS, every_contour)
                     for i, m in enumerate(maps)])


def first_best(correct):
    """The chosen-threshold rule, spelled out: the lowest threshold with the most correct images."""
    counts = correct.sum(0)
    return next(t for t in range(len(counts)) if counts[t] == counts.max())


def slow_iou(pred, truth):
    union = (pred | truth).sum()
    return 1.0 if union == 0 else (pred & truth).sum() / union


def pooled(maps, split):
    values = np.concatenate([m.ravel() for m in maps])
    truth = np.concatenate([split[i]["mask"][0].numpy().ravel() >= 0.5 for i in range(len(maps))])
    return np.floor(values * 1000) / 1000, truth  # eval.bins = 1000: each value's threshold


def evaluate_cli(args):
    try:
        main(["evaluate", "-d", "synthetic", *[a for s in VALID_SETS for a in ("--set", s)], *args])
    except SystemExit as exc:
        return exc.code or 0
    return 0


def test_validation_maps_choose_the_thresholds_of_the_test_maps(tmp_path, splits):
    valid_maps = blob_maps(tmp_path / "valid", splits["valid"], seed=2, sharpness=3.0)
    test_maps = blob_maps(tmp_path / "test", splits["test"], seed=3, sharpness=1.0)
    labels = [int(splits["test"][i]["label"]) for i in range(6)]
    preds = [1 - labels[0], *labels[1:]]
    (tmp_path / "preds.csv").write_text("id,pred\n" + "".join(f"{i},{p}\n" for i, p in zip(splits["test"].ids, preds)))
    code = evaluate_cli(["--scoremaps", str(tmp_path / "test"), "--valid-scoremaps", str(tmp_path / "valid"),
                         "--predictions", str(tmp_path / "preds.csv"), "-o", str(tmp_path / "runs"),
                         "--run-name", "r"])
    assert code == 0
    results = json.loads((tmp_path / "runs" / "r" / "results.json").read_text())
    assert results["thresholds_from"] == "valid" and results["valid_scoremaps"] == str((tmp_path / "valid").resolve())

    valid_largest = best_ious(valid_maps, splits["valid"], False)
    test_largest = best_ious(test_maps, splits["test"], False)
    box = first_best(valid_largest >= 0.5)
    hit = test_largest[:, box] >= 0.5
    assert results["box_threshold_val"] == pytest.approx(THRESHOLDS[box])
    assert results["boxacc_at_val"] == pytest.approx(100 * hit.mean())
    assert results["gt_known_loc"] == pytest.approx(100 * hit.mean())
    assert results["top1_loc"] == pytest.approx(100 * np.mean(hit & (np.asarray(preds) == labels)))
    valid_any, test_any = best_ious(valid_maps, splits["valid"], True), best_ious(test_maps, splits["test"], True)
    per_iou = []
    for iou in (30, 50, 70):
        at = first_best(valid_any >= iou / 100)
        per_iou.append(100 * np.mean(test_any[:, at] >= iou / 100))
        assert results[f"box_threshold_val_{iou}"] == pytest.approx(THRESHOLDS[at])
        assert results[f"boxacc_{iou}_at_val"] == pytest.approx(per_iou[-1])
    assert results["boxaccv2_at_val"] == pytest.approx(np.mean(per_iou))
    rows = pd.read_csv(tmp_path / "runs" / "r" / "per_image.csv", dtype={"id": str})
    assert list(rows["box_iou"]) == pytest.approx(100 * test_largest[:, box], abs=1e-4)

    valid_values, valid_truth = pooled(valid_maps, splits["valid"])
    candidates = np.unique(valid_values)[::-1]  # high to low: ties go to the higher threshold
    threshold = candidates[int(np.argmax([slow_dice(valid_values >= t, valid_truth) for t in candidates]))]
    test_values, test_truth = pooled(test_maps, splits["test"])
    assert results["threshold_val"] == pytest.approx(threshold)
    assert results["dice_at_val"] == pytest.approx(100 * slow_dice(test_values >= threshold, test_truth))
    assert results["iou_at_val"] == pytest.approx(100 * slow_iou(test_values >= threshold, test_truth))


def test_the_reported_numbers_follow_the_validation_thresholds_not_the_test_optimal_ones(tmp_path, splits):
    blob_maps(tmp_path / "valid", splits["valid"], seed=2, sharpness=3.0)
    test_maps = blob_maps(tmp_path / "test", splits["test"], seed=3, sharpness=1.0)
    cfg = config.resolve(None, "synthetic", sets=VALID_SETS)
    own = scoremaps.evaluate_directory(tmp_path / "test", cfg).finish()
    chosen = scoremaps.evaluate_directory(tmp_path / "test", cfg, valid_directory=tmp_path / "valid").finish()
    assert own["thresholds_from"] == "test" and own["boxacc_at_val"] is None and own["threshold_val"] is None
    for name in ("maxboxacc", "maxboxaccv2", "box_threshold", "pxap", "dice_best", "threshold_best", "f1_pos"):
        assert chosen[name] == own[name], name  # the test-optimal metrics do not depend on the validation maps
    assert chosen["box_threshold_val"] != own["box_threshold"]  # the maps are made to disagree
    assert chosen["threshold_val"] != own["threshold_best"]
    largest = best_ious(test_maps, splits["test"], False)
    for results, threshold in ((own, own["box_threshold"]), (chosen, chosen["box_threshold_val"])):
        at = int(np.argmin(np.abs(THRESHOLDS - threshold)))
        assert results["gt_known_loc"] == pytest.approx(100 * np.mean(largest[:, at] >= 0.5))
    assert chosen["boxacc_at_val"] < own["maxboxacc"] and chosen["dice_at_val"] < own["dice_best"]


def test_a_bad_validation_folder_is_reported_with_the_test_folder_and_exits_2(tmp_path, splits, capsys):
    blob_maps(tmp_path / "valid", splits["valid"], seed=2, sharpness=3.0)
    blob_maps(tmp_path / "test", splits["test"], seed=3, sharpness=1.0)
    valid_ids, test_ids = splits["valid"].ids, splits["test"].ids
    np.save(tmp_path / "valid" / f"{valid_ids[1]}.npy", np.full((24, 24), np.nan, np.float32))
    (tmp_path / "valid" / f"{valid_ids[4]}.npy").unlink()
    cfg = config.resolve(None, "synthetic", sets=VALID_SETS)
    with pytest.raises(scoremaps.ScoreMapError) as caught:
        scoremaps.evaluate_directory(tmp_path / "test", cfg, valid_directory=tmp_path / "valid")
    assert str(caught.value).startswith(f"2 problems with the validation maps in {tmp_path / 'valid'}: ")
    assert [(p.file, p.problem) for p in caught.value.problems] == [
        (f"{valid_ids[1]}.npy", "576 NaN values"), (f"{valid_ids[4]}.npy", "missing")]

    np.save(tmp_path / "test" / f"{test_ids[0]}.npy", np.zeros((24, 24), np.int64))
    with pytest.raises(scoremaps.ScoreMapError) as caught:
        scoremaps.evaluate_directory(tmp_path / "test", cfg, valid_directory=tmp_path / "valid")
    assert [what for what, _ in caught.value.groups] == [f"the validation maps in {tmp_path / 'valid'}",
                                                           f"the score maps in {tmp_path / 'test'}"]
    capsys.readouterr()
    assert evaluate_cli(["--scoremaps", str(tmp_path / "test"), "--valid-scoremaps", str(tmp_path / "valid")]) == 2
    err = capsys.readouterr().err
    assert "validation maps" in err and f"{valid_ids[4]}.npy" in err and f"{test_ids[0]}.npy" in err
    assert "3 problem(s); nothing was scored" in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["--split", "valid"], ["--set", "dataset.n_valid=0"]])
def test_no_validation_split_to_choose_on_exits_2(tmp_path, splits, capsys, args):
    blob_maps(tmp_path / "maps", splits["valid"], seed=2, sharpness=3.0)
    capsys.readouterr()
    maps = str(tmp_path / "maps")
    assert evaluate_cli(["--scoremaps", maps, "--valid-scoremaps", maps, *args]) == 2
    err = capsys.readouterr().err
    assert "--valid-scoremaps" in err and "Traceback" not in err


def test_validation_maps_in_wsolevaluations_layout_score_as_in_ours(tmp_path, splits):
    cfg = config.resolve(None, "synthetic", sets=[*VALID_SETS, "eval.protocol=wsoleval"])
    root = tmp_path / "scoremap_root"  # wsolevaluation's: <split>/<image file>.npy, 224 x 224, both splits in one root
    for name, folder, seed in (("valid", "val", 2), ("test", "test", 3)):
        maps = blob_maps(tmp_path / name, splits[name], seed=seed, sharpness=3.0 if name == "valid" else 1.0)
        for image_id, m in zip(splits[name].ids, maps):
            big = np.ascontiguousarray(np.kron(m, np.ones((10, 10), np.float32))[:224, :224])
            np.save(tmp_path / name / f"{image_id}.npy", big)
            (root / folder).mkdir(parents=True, exist_ok=True)
            np.save(root / folder / f"{image_id}.jpg.npy", big)
    ours = scoremaps.evaluate_directory(tmp_path / "test", cfg, valid_directory=tmp_path / "valid").finish()
    theirs = scoremaps.evaluate_directory(root, cfg, valid_directory=root)
    assert theirs.unmatched == []  # the other split's files are no strays
    results = theirs.finish()
    assert results["thresholds_from"] == "valid" and results["box_threshold_val"] is not None
    keys = [k for k in ours if k.endswith(("_at_val", "_val")) or k.startswith("box_threshold_val")]
    assert len(keys) >= 12 and {k: results[k] for k in keys} == {k: ours[k] for k in keys}
