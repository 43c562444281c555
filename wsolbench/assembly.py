"""From a configuration to the plug-in objects it names: the dataset, the method, their labels.

Every command that trains or scores builds its dataset and method here, so a
run, ``evaluate-run`` and ``evaluate --scoremaps`` read a configuration the
same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsolbench.config import RunConfig
from wsolbench.errors import DataError
from wsolbench.interfaces import Dataset, Method, ModelSpec
from wsolbench.plugin_host import get_host, registry


def build_dataset(cfg: RunConfig) -> Dataset:
    """The dataset plug-in ``cfg`` names, on its data root (a clear error when the root is missing)."""
    cls = registry("dataset").resolve(cfg.dataset)
    if getattr(cls, "needs_root", True):
        root = cfg.data_root
        hint = f"Expected layout:\n{cls.layout}\n" if getattr(cls, "layout", "") else ""
        where = f"Get the data from {cls.homepage}. " if getattr(cls, "homepage", "") else ""
        if not root:
            raise DataError(f"dataset {cfg.dataset!r} needs --data-root PATH. {hint}{where}".strip())
        if not Path(root).is_dir():
            raise DataError(f"data root {root} for dataset {cfg.dataset!r} does not exist. {hint}{where}".strip())
    return registry("dataset").create(cfg.dataset, root=cfg.data_root, seed=cfg.seed, **cfg.dataset_params)


def model_spec(cfg: RunConfig) -> ModelSpec:
    return ModelSpec(
        backbone=cfg.model.backbone,
        pretrained=cfg.model.pretrained,
        pooling=cfg.model.pooling,
        pooling_params=dict(cfg.pooling_params),
        output_stride=cfg.model.output_stride,
        backbone_params=dict(cfg.model.backbone_params),
    )


def build_method(cfg: RunConfig, num_classes: int) -> Method:
    """The method plug-in ``cfg`` names, with its settings and model."""
    return registry("method").create(cfg.method, num_classes=num_classes, model=model_spec(cfg), **cfg.method_params)


def method_label(cfg: RunConfig) -> str:
    """The run's row name in reports: the ``label`` setting, else the method's own label."""
    if cfg.label:
        return cfg.label
    cls = registry("method").resolve(cfg.method)
    return cls.label(cfg.method, {**cls.defaults, **cfg.method_params}) if hasattr(cls, "label") else cfg.method


def provenance(cfg: RunConfig) -> dict[str, dict[str, str]]:
    """The plug-ins that provided the run's method, pooling and dataset (``results.json``'s ``provided_by``)."""
    return get_host().provenance(
        method=cfg.method,
        pooling=cfg.model.pooling or registry("method").resolve(cfg.method).default_pooling,
        dataset=cfg.dataset,
    )


def split_ids(split: Any) -> list[str]:
    """The image ids of a split (its ``ids``, else the positions as text)."""
    ids = getattr(split, "ids", None)
    return list(ids) if ids is not None else [str(i) for i in range(len(split))]
