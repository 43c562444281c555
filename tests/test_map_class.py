"""``eval.map_class``: the scored maps are those of the predicted class, or of the true class (GT-known)."""

from __future__ import annotations

import pytest
import torch

from wsolbench import config
from wsolbench.assembly import build_dataset, build_method
from wsolbench.training.engine import Precision, evaluate, make_loader

SETS = ["dataset.image_size=32", "dataset.n_train=6", "dataset.n_valid=6", "dataset.n_test=12",
        "eval.batch_size=5", "eval.pictures=0", "eval.cam_curve_interval=0.1"]


def scored_maps(tmp_path, map_class: str) -> tuple[dict[int, torch.Tensor], torch.Tensor, torch.Tensor, object]:
    """The maps ``evaluate`` scores, by test index, with the test images, labels and the (untrained) method."""
    cfg = config.resolve("cam-avg", "synthetic", "quick", options={"output_dir": str(tmp_path), "device": "cpu"},
                         sets=[*SETS, f"eval.map_class={map_class}"])
    torch.manual_seed(0)  # the same untrained weights for both settings
    dataset = build_dataset(cfg)
    method = build_method(cfg, dataset.num_classes)
    split = dataset.split("test", train=False)
    caught: dict[int, torch.Tensor] = {}

    def catch(index: int, heat: torch.Tensor, mask: torch.Tensor) -> None:
        caught[index] = heat.detach().clone()

    evaluate(method, make_loader(split, cfg, False, torch.device("cpu")), Precision.choose(torch.device("cpu"), False),
             cfg, localization=True, on_map=catch)
    items = [split[i] for i in range(len(split))]
    images = torch.stack([item["image"] for item in items])
    labels = torch.tensor([item["label"] for item in items])
    return caught, images, labels, method


@pytest.mark.parametrize("map_class", ["ground_truth", "predicted"])
def test_the_scored_maps_are_those_of_the_class_the_setting_names(tmp_path, map_class):
    caught, images, labels, method = scored_maps(tmp_path, map_class)
    with torch.no_grad():
        logits = method.predict(images)
        predicted = logits.argmax(1)
        wrong = predicted != labels
        # the check means something only when the two classes differ on some images and their maps differ
        assert wrong.any() and not wrong.all()
        true_maps = method.localize_class(images, labels).clamp(0, 1)
        predicted_maps = method.localize_class(images, predicted).clamp(0, 1)
    assert not torch.allclose(true_maps[wrong], predicted_maps[wrong], atol=1e-3)
    expected = true_maps if map_class == "ground_truth" else predicted_maps
    assert sorted(caught) == list(range(len(labels)))
    for index, heat in caught.items():
        torch.testing.assert_close(heat, expected[index], atol=1e-5, rtol=0)
