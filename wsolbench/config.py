"""Run configuration: dataclasses, profiles, TOML files and ``--set key=value`` overrides.

Layers, later ones winning:

1. the defaults of the dataclasses below;
2. the global profile (``quick`` or ``paper``, :data:`PROFILES`);
3. the dataset's ``profiles[profile]``;
4. the method's ``profiles[profile]`` then ``profiles["<profile>/<dataset>"]``,
   then its switches that are on (``switches[name]`` then
   ``switches["<name>/<profile>"]`` where ``method.<name> = true`` after all
   layers): one setting that sets others, in any section (``--set
   method.reference_code=true`` also sets ``train.amp = false``); the resolved
   configuration, hence ``config.json`` and ``--show-config``, holds every
   setting a switch set;
5. the ``--config`` TOML file;
6. command-line options (``--epochs``, ``--backbone`` ...);
7. ``--set section.key=value`` (values in TOML syntax: ``--set train.lr=0.01``,
   ``--set model.pretrained=false``, ``--set dataset.classes=3``).

The user's own settings (layers 5-7) win over a switch, so that one
difference can be measured alone:
``--set method.reference_code=true --set train.amp=true`` is the authors'
setting but for that one row.

The sections are ``model``, ``train``, ``eval`` (fixed keys) and ``method``,
``pooling``, ``dataset`` (the keys are the plug-in's ``defaults``). An unknown
key is an error with a did-you-mean suggestion, except that a profile's
``pooling`` keys (layers 2-4, meant for the method's default pooling) apply only
where the chosen pooling has them.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from wsolbench.crf import params_for
from wsolbench.errors import ConfigError, UnknownNameError
from wsolbench.plugin_host import registry


@dataclass
class ModelConfig:
    backbone: str = "resnet18"  #: a timm model, or vgg16_cam (VGG-16 with the CAM modification)
    pretrained: bool = False
    pooling: str | None = None  #: None: the method's default pooling
    output_stride: int = 0  #: 8, 16 or 32 (dilated last stages); 0: the backbone's own (32 for most CNNs)
    #: passed to timm.create_model, except weights (a local file), dilate (false: output_stride removes strides
    #: without dilating, wsolevaluation's ResNet-50) and conv6 (false: vgg16_cam ends at conv5_3)
    backbone_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-5
    schedule: str = "step"  #: "step", "cosine" or "constant"
    lr_step: int = 40  #: epochs between decays (step schedule)
    lr_gamma: float = 0.1
    lr_min: float = 1e-7
    patience: int = 0  #: epochs without a better validation error before stopping; 0: never
    select_ties: str = "loss"  #: ties at the lowest validation error: "loss" (the lower loss wins) or "last"
    num_workers: int = 0
    amp: bool = True  #: mixed precision on CUDA (bf16 where supported, else fp16)
    channels_last: bool = True  #: channels-last model and images: faster convolutions on CPU and GPU
    grad_clip: float = 0.0  #: max gradient norm; 0: off
    min_free_mb: float = 100.0  #: disk space (MiB) a checkpoint must leave free, else the run stops with an error


#: how ``train.select_ties`` breaks ties at the lowest validation error (see :mod:`wsolbench.training.checkpoints`)
TIE_RULES = ("loss", "last")


@dataclass
class EvalConfig:
    batch_size: int = 8
    threshold: float = 0.5
    bins: int = 1000  #: histogram bins of PxAP and best-threshold metrics (under protocol "wsoleval": the cam_curve_interval grid)
    every: int = 1  #: validate every N epochs
    pad_multiple: int = 32
    pictures: int = 8  #: test images drawn in overlays.png, with pr_curve.png; 0: no pictures
    crf: bool = False  #: also score the maps after dense-CRF post-processing (the ``crf`` extra)
    crf_params: dict[str, Any] = field(default_factory=dict)  #: overrides of the dataset's CRF parameters
    cam_curve_interval: float = 0.01  #: the box metrics' map thresholds: ``np.arange(0, 1, interval)``
    map_class: str = "predicted"  #: whose class map every metric reads: "predicted" or "ground_truth"
    protocol: str = "native"  #: "native" (each image's own size) or "wsoleval" (maps, masks, boxes at 224 x 224)
    select: str = "cl_error"  #: the validation metric that keeps the best epoch (:data:`SELECT_METRICS`)


#: ``eval.select``'s choices: classification error and loss, a localization metric of the validation maps, or
#: ``localization``: the dataset's own localization metric (``Dataset.localization_metric``: what its protocol ranks by)
SELECT_METRICS = ("cl_error", "loss", "maxboxaccv2", "pxap", "f1_neg", "localization")


@dataclass
class RunConfig:
    method: str = "minmax"
    dataset: str = "synthetic"
    profile: str = "quick"
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs"
    run_name: str | None = None
    data_root: str | None = None
    label: str | None = None  #: the report's row name; None: the method's own label
    loggers: list[str] = field(default_factory=list)  #: experiment loggers (``wsolbench list loggers``), e.g. ["csv"]
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method_params: dict[str, Any] = field(default_factory=dict)
    pooling_params: dict[str, Any] = field(default_factory=dict)
    dataset_params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The file shape (TOML or JSON): plug-in names inside their sections."""
        d = dataclasses.asdict(self)
        out: dict[str, Any] = {k: d[k] for k in TOP_KEYS}
        out["method"] = {"name": self.method, **d["method_params"]}
        out["dataset"] = {"name": self.dataset, **d["dataset_params"]}
        out["pooling"] = dict(d["pooling_params"])
        out["model"], out["train"], out["eval"] = d["model"], d["train"], d["eval"]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict` (no validation against plug-ins)."""
        d = _normalise_layer(d)
        method = dict(d.get("method", {}))
        dataset = dict(d.get("dataset", {}))
        return cls(
            **{k: d[k] for k in TOP_KEYS if k in d},
            method=method.pop("name", cls.method),
            dataset=dataset.pop("name", cls.dataset),
            model=ModelConfig(**d.get("model", {})),
            train=TrainConfig(**d.get("train", {})),
            eval=EvalConfig(**d.get("eval", {})),
            method_params=method,
            pooling_params=dict(d.get("pooling", {})),
            dataset_params=dataset,
        )


#: top-level keys; ``method`` and ``dataset`` are sections whose ``name`` picks the plug-in
TOP_KEYS = ("profile", "seed", "device", "output_dir", "run_name", "data_root", "label", "loggers")
FIXED_SECTIONS = {"model": ModelConfig, "train": TrainConfig, "eval": EvalConfig}
FREE_SECTIONS = ("method", "pooling", "dataset")

#: Global profiles; datasets and methods refine them with their own ``profiles``.
#:
#: ``paper`` holds the paper's settings (Belharbi et al.), written only here and
#: used by every method unless its own ``profiles`` differ. The optimisation is
#: min-max's reference setup: batch 8; SGD with Nesterov momentum 0.9; lr 1e-3
#: divided by 10 every 40 epochs, down to 1e-7; weight decay 1e-5; at most 400
#: epochs. The baselines' setup in the paper's supplementary material (section
#: B.2) is an ImageNet-pretrained ResNet-18 (the backbone here) trained by SGD
#: with Nesterov momentum, the model selected on the validation classification
#: error, 160 epochs on GlaS; their learning rate, weight decay, batch size and
#: decay schedule were lost from the published text, and min-max's values stand
#: in for them. What differs per method is in its ``profiles``: min-max's
#: backbone (ResNet-101) and pooling, the baselines' 160 epochs on GlaS
#: (``paper/glas``).
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "model": {"backbone": "resnet18", "pretrained": False, "output_stride": 8},
        "train": {"epochs": 8, "batch_size": 16, "lr": 0.01, "schedule": "constant", "weight_decay": 1e-4},
        "eval": {"batch_size": 32},
    },
    "paper": {
        "model": {"backbone": "resnet18", "pretrained": True},
        "train": {
            "epochs": 400, "batch_size": 8, "lr": 1e-3, "momentum": 0.9, "nesterov": True,
            "weight_decay": 1e-5, "schedule": "step", "lr_step": 40, "lr_gamma": 0.1, "lr_min": 1e-7,
        },
        "eval": {"batch_size": 1},
    },
}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_value(text: str) -> Any:
    """A ``--set`` value in TOML syntax; bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["train.lr=0.1", "method.u=0"]`` -> nested dict."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value (for example train.lr=0.01), got {item!r}")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
        node[parts[-1]] = parse_value(value.strip())
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _profile_layers(profiles: dict[str, dict[str, Any]], profile: str, dataset: str) -> list[dict[str, Any]]:
    return [profiles[k] for k in (profile, f"{profile}/{dataset}") if k in profiles]


def _normalise_layer(layer: dict[str, Any]) -> dict[str, Any]:
    """Accept ``method = "NAME"`` for ``[method] name = "NAME"`` (likewise dataset, pooling)."""
    out = copy.deepcopy(layer)
    for key in ("method", "dataset"):
        if isinstance(out.get(key), str):
            out[key] = {"name": out[key]}
    pooling = out.get("pooling")
    if isinstance(pooling, str):
        out["pooling"] = pooling = {"name": pooling}
    if isinstance(pooling, dict) and "name" in pooling:
        out.setdefault("model", {})
        if not isinstance(out["model"], dict):
            raise ConfigError(f"[model] must be a section (table), got {out['model']!r}")
        out["model"]["pooling"] = pooling.pop("name")
    return out


def resolve(
    method: str | None = None,
    dataset: str | None = None,
    profile: str | None = None,
    file: str | Path | None = None,
    options: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> RunConfig:
    """Build the run configuration from all layers and validate every key.

    ``options`` is a nested dict of command-line options in the file shape
    (``None`` values are ignored); ``method``/``dataset``/``profile`` given
    here win over the file but not over ``--set``.
    """

    file_layer = _normalise_layer(load_toml(file)) if file else {}
    cli_layer = _normalise_layer(_drop_none(options or {}))
    for key, value in (("method", method), ("dataset", dataset)):
        if value is not None:
            cli_layer.setdefault(key, {})["name"] = value
    if profile is not None:
        cli_layer["profile"] = profile
    set_layer = _normalise_layer(parse_sets(sets or []))
    user_layers = [file_layer, cli_layer, set_layer]
    for layer in user_layers:
        _validate_shape(layer)

    # the identity first: it decides which profiles and plug-in defaults apply
    chosen = {"method": RunConfig.method, "dataset": RunConfig.dataset, "profile": RunConfig.profile}
    for layer in user_layers:
        for key in ("method", "dataset"):
            if "name" in layer.get(key, {}):
                chosen[key] = layer[key]["name"]
        if "profile" in layer:
            chosen["profile"] = layer["profile"]
    if chosen["profile"] not in PROFILES:
        raise UnknownNameError("profile", str(chosen["profile"]), PROFILES)
    method_cls = registry("method").resolve(chosen["method"])
    dataset_cls = registry("dataset").resolve(chosen["dataset"])
    method_entry = registry("method").get(chosen["method"])
    dataset_entry = registry("dataset").get(chosen["dataset"])
    chosen["method"], chosen["dataset"] = method_entry.name, dataset_entry.name

    layers = [PROFILES[chosen["profile"]]]
    layers += _profile_layers(getattr(dataset_cls, "profiles", {}), chosen["profile"], chosen["dataset"])
    layers += _profile_layers(getattr(method_cls, "profiles", {}), chosen["profile"], chosen["dataset"])
    layers = [_normalise_layer(layer) for layer in layers]
    # a profile's pooling settings are meant for its default pooling: kept aside and
    # applied only where the chosen pooling has those keys (user layers stay strict)
    profile_pooling: dict[str, Any] = {}
    for layer in layers:
        profile_pooling = deep_merge(profile_pooling, layer.pop("pooling", {}))
    base = dataclasses.asdict(RunConfig())
    start: dict[str, Any] = {k: base[k] for k in TOP_KEYS}
    start.update(model=base["model"], train=base["train"], eval=base["eval"])
    start.update(method=dict(method_cls.defaults), dataset=dict(dataset_cls.defaults), pooling={})
    merged = _merge_layers(start, layers + user_layers)
    # a method's switches: set above every profile, below the user's own settings, which win
    switched = _switch_layers(method_cls, merged["method"], chosen["profile"])
    if switched:
        merged = _merge_layers(start, layers + switched + user_layers)
    merged["method"].pop("name", None)
    merged["dataset"].pop("name", None)

    pooling_name = merged["model"]["pooling"] or getattr(method_cls, "default_pooling", None)
    pooling_defaults: dict[str, Any] = {}
    if pooling_name is not None:
        pooling_defaults = dict(registry("pooling").resolve(pooling_name).defaults)
    profile_pooling = {k: v for k, v in profile_pooling.items() if k in pooling_defaults}
    merged["pooling"] = deep_merge(deep_merge(pooling_defaults, profile_pooling), merged["pooling"])

    _check_keys("method", merged["method"], method_cls.defaults, f"method {chosen['method']!r}")
    _check_keys("dataset", merged["dataset"], dataset_cls.defaults, f"dataset {chosen['dataset']!r}")
    _check_keys("pooling", merged["pooling"], pooling_defaults, f"pooling {pooling_name!r}")
    for section, cls in FIXED_SECTIONS.items():
        _check_keys(section, merged[section], dataclasses.asdict(cls()), f"[{section}]")
    top_defaults = {k: base[k] for k in TOP_KEYS}
    for key in TOP_KEYS:
        if not _type_ok(merged[key], top_defaults[key]):
            raise ConfigError(f"{key} = {merged[key]!r} has the wrong type: expected {type(base[key]).__name__}")

    cfg = RunConfig(
        **{k: merged[k] for k in TOP_KEYS},
        method=chosen["method"],
        dataset=chosen["dataset"],
        model=ModelConfig(**merged["model"]),
        train=TrainConfig(**merged["train"]),
        eval=EvalConfig(**merged["eval"]),
        method_params=merged["method"],
        pooling_params=merged["pooling"],
        dataset_params=merged["dataset"],
    )
    _check_values(cfg)
    return cfg


def rebase(cfg: RunConfig, method: str | None = None, sets: list[str] | None = None) -> RunConfig:
    """A run's configuration with another method on the same network and ``--set`` overrides (``evaluate-run``).

    Everything the run resolved stays, its network included: backbone, pooling
    (named, since ``method``'s default pooling may differ) and their settings.
    With ``method``, the method's settings are its ``defaults``, then its
    ``[method]`` settings of the run's profile and dataset, then ``sets``; the
    run's ``label`` is dropped (it named the run's method). Validated as
    :func:`resolve` validates.
    """
    layer = cfg.to_dict()
    if method is not None and registry("method").get(method).name != cfg.method:
        run_method = registry("method").resolve(cfg.method)
        layer["model"]["pooling"] = layer["model"]["pooling"] or getattr(run_method, "default_pooling", None)
        layer["method"] = {"name": method}
        layer["label"] = None  # the run's row name named its own method
    return resolve(profile=cfg.profile, options=layer, sets=sets)


def _merge_layers(start: dict[str, Any], layers: list[dict[str, Any]]) -> dict[str, Any]:
    merged = start
    for layer in layers:
        _validate_shape(layer)
        merged = deep_merge(merged, layer)
    return merged


def _switch_layers(method_cls: type, method_params: dict[str, Any], profile: str) -> list[dict[str, Any]]:
    """The layers of the method's switches that are on (``method.NAME = true``), each then its profile's part."""
    switches = getattr(method_cls, "switches", {})
    layers = []
    for name, settings in switches.items():
        if "/" not in name and method_params.get(name) is True:
            layers += [_normalise_layer(settings), _normalise_layer(switches.get(f"{name}/{profile}", {}))]
    return [layer for layer in layers if layer]


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


def _validate_shape(layer: dict[str, Any]) -> None:
    known = set(TOP_KEYS) | set(FIXED_SECTIONS) | set(FREE_SECTIONS)
    for key, value in layer.items():
        if key not in known:
            raise UnknownNameError("configuration key", key, sorted(known))
        if (key in FIXED_SECTIONS or key in FREE_SECTIONS) and not isinstance(value, dict):
            raise ConfigError(f"[{key}] must be a section (table), got {value!r}")


def _check_keys(section: str, values: dict[str, Any], defaults: dict[str, Any], what: str) -> None:
    for key, value in values.items():
        if key not in defaults:
            raise UnknownNameError(f"key for {what}", f"{section}.{key}", [f"{section}.{k}" for k in defaults])
        default = defaults[key]
        if not _type_ok(value, default):
            raise ConfigError(
                f"{section}.{key} = {value!r} has the wrong type: expected {type(default).__name__} "
                f"like the default {default!r}"
            )
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)


def _type_ok(value: Any, default: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def _check_values(cfg: RunConfig) -> None:
    problems = []
    t = cfg.train
    if t.epochs < 0:
        problems.append("train.epochs must be >= 0")
    if t.batch_size < 1:
        problems.append("train.batch_size must be >= 1")
    if t.lr <= 0:
        problems.append("train.lr must be > 0")
    for key in ("momentum", "weight_decay", "lr_min", "grad_clip", "min_free_mb", "patience", "num_workers",
                "lr_step"):
        if getattr(t, key) < 0:
            problems.append(f"train.{key} must be >= 0")
    if t.lr_gamma <= 0:
        problems.append("train.lr_gamma must be > 0")
    if cfg.eval.every < 1:
        problems.append("eval.every must be >= 1")
    if cfg.eval.pad_multiple < 1:
        problems.append("eval.pad_multiple must be >= 1")
    if t.select_ties not in TIE_RULES:
        problems.append(f"train.select_ties must be {' or '.join(TIE_RULES)}, not {t.select_ties!r}")
    if t.schedule not in ("step", "cosine", "constant"):
        problems.append(f"train.schedule must be step, cosine or constant, not {t.schedule!r}")
    if cfg.eval.batch_size < 1:
        problems.append("eval.batch_size must be >= 1")
    if not 0 < cfg.eval.threshold < 1:
        problems.append("eval.threshold must be in (0, 1)")
    if cfg.eval.bins < 2:
        problems.append("eval.bins must be >= 2")
    if cfg.label is not None and not isinstance(cfg.label, str):
        problems.append(f"label must be a string (quote it: --set 'label=\"{cfg.label}\"')")
    if not all(isinstance(name, str) for name in cfg.loggers):
        problems.append(f"loggers must be a list of logger names, got {cfg.loggers!r}")
    else:
        for name in cfg.loggers:
            registry("logger").get(name)  # an unknown name: UnknownNameError with a suggestion
    if not 0 < cfg.eval.cam_curve_interval < 1:
        problems.append("eval.cam_curve_interval must be in (0, 1)")
    if cfg.eval.map_class not in ("predicted", "ground_truth"):
        problems.append(f"eval.map_class must be predicted or ground_truth, not {cfg.eval.map_class!r}")
    if cfg.eval.select not in SELECT_METRICS:
        problems.append(f"eval.select must be one of {', '.join(SELECT_METRICS)}, not {cfg.eval.select!r}")
    if cfg.eval.protocol not in ("native", "wsoleval"):
        problems.append(f"eval.protocol must be native or wsoleval, not {cfg.eval.protocol!r}")
    if cfg.eval.pictures < 0:
        problems.append("eval.pictures must be >= 0")
    if cfg.eval.crf and importlib.util.find_spec("pydensecrf") is None:
        problems.append("eval.crf needs pydensecrf: pip install 'wsolbench[crf]' (the pydensecrf2 distribution)")
    if cfg.eval.crf_params:

        try:
            params_for(None, cfg.eval.crf_params)
        except (ConfigError, TypeError, ValueError) as exc:
            problems.append(f"eval.crf_params: {exc}")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        problems.append(f"device must be auto, cpu, cuda or cuda:N, not {cfg.device!r}")
    if problems:
        raise ConfigError("; ".join(problems))
