"""Configuration layers, --set parsing and validation."""

from __future__ import annotations

import pytest

from wsolbench import config
from wsolbench.errors import ConfigError, UnknownNameError
from wsolbench.plugin_host import registry


def test_parse_sets_uses_toml_values():
    out = config.parse_sets(["train.lr=0.5", "model.pretrained=false", "dataset.classes=3", "model.backbone=resnet34"])
    assert out == {
        "train": {"lr": 0.5},
        "model": {"pretrained": False, "backbone": "resnet34"},
        "dataset": {"classes": 3},
    }
    with pytest.raises(ConfigError):
        config.parse_sets(["train.lr"])


def test_layers_in_order(tmp_path):
    cfg = config.resolve("cam-avg", "synthetic", "quick")
    assert cfg.train.epochs == config.PROFILES["quick"]["train"]["epochs"]
    assert cfg.dataset_params["image_size"] == 64  # the dataset's quick profile
    toml = tmp_path / "c.toml"
    toml.write_text('seed = 5\n[train]\nepochs = 3\nlr = 0.2\n[dataset]\nname = "synthetic"\nclasses = 3\n')
    cfg = config.resolve("cam-avg", None, "quick", toml, {"train": {"epochs": 2, "lr": None}}, ["train.lr=0.3"])
    assert cfg.seed == 5
    assert cfg.train.epochs == 2  # command-line option beats the file
    assert cfg.train.lr == 0.3  # --set beats everything
    assert cfg.dataset_params["classes"] == 3
    assert isinstance(cfg.train.lr, float)


def test_round_trip_through_dict():
    cfg = config.resolve("cam-avg", "synthetic", "quick", sets=["dataset.classes=4"])
    again = config.RunConfig.from_dict(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize(
    "sets, message",
    [
        (["train.lrr=0.1"], "train.lr"),
        (["dataset.clases=3"], "dataset.classes"),
        (["trian.lr=1"], "train"),
    ],
)
def test_unknown_keys_suggest(sets, message):
    with pytest.raises(UnknownNameError) as info:
        config.resolve("cam-avg", "synthetic", "quick", sets=sets)
    assert "Did you mean" in str(info.value) and message in str(info.value)


@pytest.mark.parametrize(
    "sets",
    [["train.epochs=ten"], ["model.pretrained=3"], ["train.batch_size=0"], ["eval.threshold=1.5"], ["device=tpu"]],
)
def test_bad_values_are_config_errors(sets):
    with pytest.raises(ConfigError):
        config.resolve("cam-avg", "synthetic", "quick", sets=sets)


def test_unknown_method_and_profile():
    with pytest.raises(UnknownNameError, match="Did you mean 'cam-avg'"):
        config.resolve("cam_avg", "synthetic", "quick")
    with pytest.raises(UnknownNameError):
        config.resolve("cam-avg", "synthetic", "slow")


def test_malformed_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.resolve("cam-avg", "synthetic", "quick", bad)


@pytest.mark.parametrize("name", registry("method").names())
def test_method_profiles_restate_no_global_training_setting(name):
    """The global profiles hold the shared training settings; a method's profiles say only what differs."""
    profiles = registry("method").resolve(name).profiles
    for key, layer in profiles.items():
        profile = key.split("/")[0]
        base = config.PROFILES[profile].get("train", {})
        if key != profile:  # "paper/<dataset>" refines the method's own "paper"
            base = {**base, **profiles.get(profile, {}).get("train", {})}
        restated = {k: v for k, v in layer.get("train", {}).items() if base.get(k) == v}
        assert not restated, f"{name}'s profile {key!r} restates {restated}"
