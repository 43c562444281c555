"""A run's experiment loggers: built from its ``loggers`` setting, fed its events, isolated from it.

A logger is a plug-in (:class:`wsolbench.interfaces.Logger`, registered through
``wsolbench_register_loggers``). The run's main process builds the loggers its
configuration names and sends each of them every event the progress display
receives (:data:`wsolbench.interfaces.EVENTS`), plus, after each validation, a
picture of the first validation images with their maps (``overlays_drawn``).
A logger that fails, when built or on any event, is reported once as a
:class:`~wsolbench.plugin_host.PluginWarning` and left out for the rest of the
run: logging never stops a run nor changes its numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsolbench.config import RunConfig
from wsolbench.data.samples import eval_collate
from wsolbench.interfaces import Event, Logger, Method
from wsolbench.plugin_host import PluginWarning, registry
from wsolbench.scoring.extras import raw_rgb
from wsolbench.scoring.plots import Sample, overlay_grid
from wsolbench.training.engine import Listener, Precision, fit_maps

#: validation images drawn in each ``overlays_drawn`` picture, at most
OVERLAY_IMAGES = 4


class LoggerSet:
    """The loggers a run names, as one listener."""

    def __init__(self, names: Sequence[str], run_dir: Path, config: dict[str, Any]):
        self.loggers: dict[str, Logger] = {}
        for name in names:
            try:
                self.loggers[name] = registry("logger").create(name, run_dir=run_dir, config=config)
            except Exception as exc:  # noqa: BLE001 - any failure of a plug-in is reported, never fatal
                self._drop(name, "could not start", exc)

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def __call__(self, event: Event) -> None:
        for name, logger in list(self.loggers.items()):
            try:
                logger.log(event)
            except Exception as exc:  # noqa: BLE001
                self.loggers.pop(name)
                self._drop(name, "failed", exc)
                self._close(name, logger)

    def close(self) -> None:
        for name, logger in list(self.loggers.items()):
            self._close(name, logger)
        self.loggers.clear()

    def _close(self, name: str, logger: Logger) -> None:
        try:
            logger.close()
        except Exception as exc:  # noqa: BLE001
            self._drop(name, "failed to close", exc)

    @staticmethod
    def _drop(name: str, what: str, exc: BaseException) -> None:
        warnings.warn(f"logger {name!r} {what} ({type(exc).__name__}: {exc}); the run goes on without it",
                      PluginWarning, stacklevel=3)


def listening(*listeners: Listener | None) -> Listener | None:
    """One listener that passes each event to every given one (``None`` when none is given)."""
    chosen = [listener for listener in listeners if listener is not None]
    if not chosen:
        return None
    if len(chosen) == 1:
        return chosen[0]

    def every(event: Event) -> None:
        for listener in chosen:
            listener(event)

    return every


def overlay_picture(method: Method, split: Any, cfg: RunConfig, precision: Precision, count: int) -> np.ndarray:
    """The first ``count`` images of ``split`` with their true masks and the method's maps, as one picture.

    The maps are made as the test evaluation makes them (same padding,
    cropping and resizing); no random state is used, so a run's numbers do
    not depend on whether loggers listen.
    """
    items = [split[i] for i in range(min(count, len(split)))]
    batch = eval_collate(items, cfg.eval.pad_multiple)
    device = precision.device
    images = batch["image"].to(device)
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    method.eval()
    with torch.set_grad_enabled(method.needs_grad_at_inference), precision.autocast():
        _, maps = method.infer(images)
    drawn: list[Sample] = []
    for j, (image_size, mask) in enumerate(zip(batch["sizes"], batch["masks"])):
        index, size = int(batch["index"][j]), tuple(mask.shape[-2:])
        prob = fit_maps(maps[j:j + 1].detach().float(), image_size, size)[0]
        truth = mask.numpy().reshape(size) >= 0.5
        name = str(getattr(split, "ids", range(len(split)))[index])
        drawn.append(Sample(name, raw_rgb(split, index, size), truth, prob.cpu().numpy()))
    return overlay_grid(drawn, cfg.eval.threshold)


def pictures_after_validation(
    loggers: LoggerSet, method: Method, split: Any, cfg: RunConfig, precision: Precision
) -> Callable[[int], None] | None:
    """A function ``draw(epoch)`` sending ``overlays_drawn`` to ``loggers`` (``None`` when nobody would see it)."""
    count = min(cfg.eval.pictures, OVERLAY_IMAGES)
    if not loggers or count == 0:
        return None

    def draw(epoch: int) -> None:
        try:
            picture = overlay_picture(method, split, cfg, precision, count)
        except Exception as exc:  # noqa: BLE001 - a picture for loggers never stops the run
            warnings.warn(f"the validation overlays for the loggers could not be drawn ({type(exc).__name__}: "
                          f"{exc}); the run goes on without them", PluginWarning, stacklevel=2)
            return
        loggers(Event("overlays_drawn", phase="valid", epoch=epoch, logs={"image": picture}))

    return draw
