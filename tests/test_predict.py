"""A trained run on new images: ``wsolbench predict``, ``wsolbench.load``, ``wsolbench export`` and ``.wsol`` files."""

from __future__ import annotations

import csv
import hashlib
import json
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, run_cli
from PIL import Image

import wsolbench
from wsolbench import config
from wsolbench.errors import UserError
from wsolbench.models import minmax_normalize, upsample
from wsolbench.plugin_host import registry
from wsolbench.runs import inference, modelfile
from wsolbench.testing import build_method
from wsolbench.training import checkpoint_eval, engine, runner

TINY_SETS = [TINY[i + 1] for i in range(0, len(TINY) - 2, 2) if TINY[i] == "--set"]
N_TEST = 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny cam-avg run, and its test images written as PNG files (``test_00000.png`` ...)."""
    root = tmp_path_factory.mktemp("predict")
    cfg = config.resolve("cam-avg", "synthetic", "quick", options={
        "output_dir": str(root), "run_name": "run", "device": "cpu", "train": {"epochs": 1}}, sets=TINY_SETS)
    run = runner.run(cfg).run_dir.path
    dataset = registry("dataset").create("synthetic", root=None, seed=cfg.seed, **cfg.dataset_params)
    images = root / "images"
    images.mkdir()
    for i in range(N_TEST):
        Image.fromarray(dataset.generate(2, i)[0]).save(images / f"test_{i:05d}.png")
    return run, images


def evaluate_run_maps(run: Path, monkeypatch) -> dict[int, np.ndarray]:
    """The maps ``evaluate-run`` scores, by test index, caught where the scoring hands them on."""
    maps = {}

    class Catching(engine.TestExtras):
        def update(self, index, heat, mask):
            maps[index] = heat.cpu().numpy().copy()
            super().update(index, heat, mask)

    monkeypatch.setattr(engine, "TestExtras", Catching)  # where a split is scored
    checkpoint_eval.evaluate_checkpoint(run, device="cpu")
    return maps


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_predict_gives_evaluate_runs_maps_and_classes_and_lists_unreadable_files(trained, tmp_path, monkeypatch):
    run, images = trained
    extras = tmp_path / "extras"
    extras.mkdir()
    grey = np.asarray(Image.open(images / "test_00003.png").convert("L"))
    Image.fromarray(grey[:, :20]).save(extras / "grey.bmp")  # greyscale, another size and format
    (extras / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    whole = (images / "test_00001.png").read_bytes()
    (extras / "truncated.png").write_bytes(whole[: len(whole) // 2])
    before = tree_digest(run)

    result = run_cli("predict", str(run), str(images), str(extras), "--output", str(tmp_path / "out"),
                     "--device", "cpu", "--quiet")

    assert result.returncode == 2, result.stderr
    assert "corrupt.jpg" in result.stderr and "truncated.png" in result.stderr
    assert "grey.bmp" not in result.stderr
    assert tree_digest(run) == before  # nothing in the run directory changed
    expected = evaluate_run_maps(run, monkeypatch)
    for i in range(N_TEST):
        predicted = np.load(tmp_path / "out" / "maps" / f"test_{i:05d}.npy")
        assert predicted.dtype == np.float32 and np.array_equal(predicted, expected[i]), i
    rows = {r["id"]: r for r in read_csv(tmp_path / "out" / "predictions.csv")}
    assert sorted(rows) == ["grey"] + [f"test_{i:05d}" for i in range(N_TEST)]
    per_image = {r["id"]: r for r in read_csv(run / "per_image.csv")}
    assert {k: rows[k]["pred"] for k in per_image} == {k: r["pred"] for k, r in per_image.items()}
    grey_map = np.load(tmp_path / "out" / "maps" / "grey.npy")
    assert grey_map.shape == grey[:, :20].shape and 0 <= grey_map.min() and grey_map.max() <= 1
    assert (rows["grey"]["width"], rows["grey"]["height"]) == ("20", "32")
    for image_id, row in rows.items():
        heat = np.load(tmp_path / "out" / "maps" / f"{image_id}.npy")
        box = tuple(int(row[k]) for k in ("x0", "y0", "x1", "y1"))
        assert box == slow_box(heat, 0.5)  # the run's eval.threshold
        assert row["class"] == row["top5"].split(";")[0] == row["map_class"]
        probabilities = [float(p) for p in row["top5_probability"].split(";")]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(1, abs=1e-5)
        overlay = np.asarray(Image.open(tmp_path / "out" / "overlays" / f"{image_id}.png"))
        assert overlay.shape[0] == heat.shape[0] and overlay.shape[1] > 3 * heat.shape[1]


@pytest.mark.slow
def test_predict_class_draws_the_named_class_map(trained, tmp_path):
    run, images = trained
    model = wsolbench.load(run, device="cpu")
    name = model.classes[0]
    result = run_cli("predict", str(run), str(images), "-o", str(tmp_path / "out"), "--class", name, "--device", "cpu",
                     "-q")
    assert result.returncode == 0, result.stderr
    default = model.predict(sorted(images.glob("*.png")))
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert [r["map_class"] for r in rows] == [name] * N_TEST
    assert [int(r["pred"]) for r in rows] == default.classes  # the class asked for changes the map only
    changed = 0
    for row, heat in zip(rows, default.maps):
        drawn = np.load(tmp_path / "out" / "maps" / f"{row['id']}.npy")
        if row["pred"] == "0":
            np.testing.assert_allclose(drawn, heat, atol=1e-5)
        else:
            changed += not np.allclose(drawn, heat, atol=1e-3)
    assert changed == sum(c != 0 for c in default.classes) > 0


def test_export_then_load_gives_the_runs_logits_and_maps(trained, tmp_path):
    run, images = trained
    target = tmp_path / "model.wsol"
    result = run_cli("export", str(run), "-o", str(target))
    assert result.returncode == 0, result.stderr
    files = sorted(images.glob("*.png"))
    from_run = wsolbench.load(run, device="cpu").predict(files)
    model = wsolbench.load(target, device="cpu")
    from_file = model.predict(files)
    assert torch.equal(from_file.logits, from_run.logits)
    assert all(np.array_equal(a, b) for a, b in zip(from_file.maps, from_run.maps))
    assert from_file.boxes == from_run.boxes
    assert model.classes == wsolbench.load(run, device="cpu").classes
    assert model.config.to_dict()["method"] == {"name": "cam-avg"}
    assert model.meta["provided_by"]["method"]["distribution"] == "wsolbench"
    assert model.meta["trained_with"]["torch"] == torch.__version__
    with zipfile.ZipFile(target) as archive:
        assert sorted(archive.namelist()) == ["model.safetensors", "wsol.json"]
    assert run_cli("export", str(run), "-o", str(target)).returncode == 2  # never overwrites


class Payload:
    """Unpickling this creates a file: a stand-in for code a pickle can run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize("how", ["extra member", "pickled weights", "torch.save file"])
def test_a_model_file_holding_a_pickle_is_refused_without_running_it(trained, tmp_path, how):
    run, _ = trained
    good = inference.export(run, tmp_path / "good.wsol")
    sentinel = tmp_path / "ran"
    payload = pickle.dumps(Payload(sentinel), protocol=4)
    bad = tmp_path / "bad.wsol"
    if how == "torch.save file":
        torch.save({"model": Payload(sentinel)}, bad)
    else:
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
            dst.writestr("wsol.json", src.read("wsol.json"))
            dst.writestr("model.safetensors", payload if how == "pickled weights" else src.read("model.safetensors"))
            if how == "extra member":
                dst.writestr("extra.bin", payload)
    with pytest.raises(modelfile.ModelFileError, match="pickled object"):
        wsolbench.load(bad, device="cpu")
    assert not sentinel.exists()


def test_a_model_file_from_a_newer_format_or_without_its_members_is_refused(trained, tmp_path):
    run, _ = trained
    good = inference.export(run, tmp_path / "good.wsol")
    with zipfile.ZipFile(good) as src:
        meta, weights = src.read("wsol.json"), src.read("model.safetensors")
    newer = tmp_path / "newer.wsol"
    with zipfile.ZipFile(newer, "w") as dst:
        dst.writestr("wsol.json", meta.replace(b'"format_version": 1', b'"format_version": 99'))
        dst.writestr("model.safetensors", weights)
    with pytest.raises(modelfile.ModelFileError, match="newer wsolbench"):
        modelfile.read_model_file(newer)
    partial = tmp_path / "partial.wsol"
    with zipfile.ZipFile(partial, "w") as dst:
        dst.writestr("wsol.json", meta)
    with pytest.raises(modelfile.ModelFileError, match="no model.safetensors"):
        modelfile.read_model_file(partial)
    (tmp_path / "text.wsol").write_text("hello")
    with pytest.raises(modelfile.ModelFileError, match="not a zip"):
        modelfile.read_model_file(tmp_path / "text.wsol")


def test_predict_takes_arrays_pil_images_greyscale_and_rgba_alike(trained):
    run, images = trained
    model = wsolbench.load(run, device="cpu")
    rgb = np.asarray(Image.open(images / "test_00002.png"))
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    out = model.predict([images / "test_00002.png", rgb, Image.fromarray(rgba), rgba,
                         torch.from_numpy(rgb.copy()).permute(2, 0, 1)], batch_size=1)
    for j in range(1, 5):
        assert torch.equal(out.logits[j], out.logits[0]) and np.array_equal(out.maps[j], out.maps[0])
    grey = rgb[..., 1]
    assert torch.equal(inference.decode(grey), torch.from_numpy(np.stack([grey] * 3)))
    assert inference.decode(Image.fromarray(grey)).shape == (3, *grey.shape)
    with pytest.raises(UserError, match="uint8"):
        model.predict(rgb.astype(np.float32))
    with pytest.raises(UserError, match="Unknown class"):
        model.predict(rgb, class_index="no-such-class")


def test_load_needs_no_training_state_and_no_dataset_files(trained, tmp_path):
    run, _ = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("best.pt", "config.json"):  # no last.pt (optimizer), no manifest, no results
        (copy / name).write_bytes((run / name).read_bytes())
    model = wsolbench.load(copy, device="cpu")
    assert not model.method.training and model.classes == ["period-3.0px", "period-10.0px"]
    assert inference.export(copy, tmp_path / "m.wsol").is_file()


def test_import_wsolbench_stays_torch_free_until_load_is_asked_for():
    code = ("import sys, wsolbench; assert 'torch' not in sys.modules; f = wsolbench.load; "
            "assert 'torch' in sys.modules and f.__module__ == 'wsolbench.runs.inference'; "
            "assert wsolbench.export.__name__ == 'export'")
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError):
        wsolbench.no_such_name  # noqa: B018


# -- boxes ------------------------------------------------------------------------------
def slow_box(heat: np.ndarray, threshold: float):
    """The inclusive box of the largest 8-connected region at or above ``threshold``, by flood fill."""
    on = heat >= threshold
    seen = np.zeros_like(on)
    best = None
    for y0, x0 in zip(*np.nonzero(on)):  # row-major order: ties keep the first region
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pixels = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v, u = y + dy, x + dx
                    if 0 <= v < on.shape[0] and 0 <= u < on.shape[1] and on[v, u] and not seen[v, u]:
                        seen[v, u] = True
                        queue.append((v, u))
        if best is None or len(pixels) > len(best):
            best = pixels
    if best is None:
        return None
    ys, xs = zip(*best)
    return min(xs), min(ys), max(xs), max(ys)


@pytest.mark.parametrize("seed", range(6))
def test_region_box_is_the_largest_8_connected_region(seed):
    rng = np.random.default_rng(seed)
    heat = rng.uniform(size=(int(rng.integers(5, 30)), int(rng.integers(5, 30)))).astype(np.float32)
    for threshold in (0.3, 0.7, 0.95, 1.5):
        assert inference.region_box(heat, threshold) == slow_box(heat, threshold)
    diagonal = np.eye(4, dtype=np.float32)
    assert inference.region_box(diagonal, 0.5) == (0, 0, 3, 3)  # corners touch: one region


# -- the map of a given class, for every built-in method -----------------------------------------
CLASS_SPECIFIC = {"cam-avg", "cam-max", "cam-lse", "wildcat", "deepmil", "gradcam", "minmax", "has", "adl", "cutmix",
                  "acol", "posthoc", "spg"}


@pytest.mark.parametrize("name", sorted(registry("method").names()))
def test_localize_class_draws_the_map_of_the_class_asked_for(name):
    torch.manual_seed(0)
    method = build_method(name, num_classes=3)
    method.eval()
    images = torch.randn(4, 3, 32, 40)
    with torch.set_grad_enabled(method.needs_grad_at_inference):
        logits, maps = method.infer(images)
        predicted = method.localize_class(images, logits.argmax(1))
        other = method.localize_class(images, (logits.argmax(1) + 1) % 3)
    assert predicted.shape == other.shape == (4, 32, 40)
    if name == "minmax":  # M+ mixes the classes by f's probabilities; a named class is its own map
        with torch.no_grad():
            _, class_maps = method.localizer(images)
        chosen = class_maps[torch.arange(4), (logits.argmax(1) + 1) % 3]
        expected = minmax_normalize(F.interpolate(chosen[:, None].float(), size=(32, 40), mode="bilinear",
                                                  align_corners=False))[:, 0]
        torch.testing.assert_close(other, expected, atol=1e-5, rtol=0)
        return
    torch.testing.assert_close(predicted, maps, atol=1e-5, rtol=0)
    if name in CLASS_SPECIFIC:
        assert not torch.allclose(other, maps, atol=1e-3)
        if name not in ("gradcam", "posthoc"):  # Grad-CAM's maps: test_baselines, test_posthoc
            with torch.no_grad():
                _, class_maps = method(images)
            chosen = class_maps[torch.arange(4), (logits.argmax(1) + 1) % 3]
            torch.testing.assert_close(other, minmax_normalize(upsample(chosen[:, None].float(), (32, 40)))[:, 0],
                                       atol=1e-5, rtol=0)
    else:  # the same map whatever the class
        torch.testing.assert_close(other, maps, atol=0, rtol=0)


# -- the dataset's evaluation preprocessing without its files --------------------------------
def test_evaluation_transform_is_the_evaluation_splits_preprocessing(tmp_path):
    from fixture_trees import make_folder

    from wsolbench.data.samples import split_loaded, transformed

    root = make_folder(tmp_path / "folder", size=(20, 30))
    params = {"resize_short": 16, "normalize": "imagenet"}
    with_files = registry("dataset").create("folder", root=str(root), **params)
    without = registry("dataset").create("folder", root=None, **params)
    items = with_files.split("test", train=False)
    for i in range(len(items)):
        image, mask, *_ = split_loaded(items.raw(i))
        alone, _ = transformed(without.evaluation_transform(), image, mask)
        assert torch.equal(alone, items[i]["image"]) and alone.shape[-2] == 16
    synthetic = registry("dataset").create("synthetic", image_size=24, n_test=2)
    test = synthetic.split("test")
    image, mask, *_ = split_loaded(test.raw(1))  # the synthetic set's items carry their boxes too
    assert torch.equal(transformed(synthetic.evaluation_transform(), image, mask)[0], test[1]["image"])


def test_a_folder_run_names_its_classes_without_its_data(tmp_path):
    """A run records its class names: a folder dataset's model loads after its files are gone."""
    from fixture_trees import make_folder

    root = make_folder(tmp_path / "folder", classes=("heron", "stork"), size=(24, 24))
    cfg = config.resolve("cam-avg", "folder", "quick", options={
        "output_dir": str(tmp_path / "runs"), "run_name": "r", "device": "cpu", "data_root": str(root),
        "train": {"epochs": 0}}, sets=["dataset.resize_short=16", "dataset.crop_size=16", "eval.pictures=0"])
    run = runner.run(cfg).run_dir.path
    assert json.loads((run / "manifest.json").read_text())["classes"] == ["heron", "stork"]
    shutil.rmtree(root)
    model = wsolbench.load(run, device="cpu")
    assert model.classes == ["heron", "stork"] and model.class_index("stork") == 1
