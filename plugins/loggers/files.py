"""Loggers that write files into the run directory: a CSV table and TensorBoard event files."""

from __future__ import annotations

import csv
import numbers
from pathlib import Path
from typing import Any, ClassVar

from wsolbench.errors import UserError
from wsolbench.interfaces import Event, Logger

#: the figures of an ``epoch_ended`` event that are logged (those present), in this order
SCALARS = ("train_loss", "train_error", "valid_error", "valid_loss", "lr", "images_per_s")


def epoch_scalars(event: Event) -> dict[str, float]:
    """The numbers worth a curve in an epoch's row: the usual ones first, then the method's own figures."""
    logs = {k: v for k, v in event.logs.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and k not in ("epoch", "best_epoch", "seconds")}
    ordered = {k: float(logs.pop(k)) for k in SCALARS if k in logs}
    return {**ordered, **{k: float(v) for k, v in sorted(logs.items())}}


class CsvLogger(Logger):
    """``log.csv`` in the run directory: one row per epoch (loss, errors, learning rate, images/s, the method's figures)."""

    summary: ClassVar[str] = "one CSV row per epoch in the run directory (log.csv)"
    file_name: ClassVar[str] = "log.csv"

    def __init__(self, run_dir: Any, config: dict[str, Any]):
        super().__init__(run_dir, config)
        self.path = Path(run_dir) / self.file_name
        self.columns: list[str] | None = None

    def log(self, event: Event) -> None:
        if event.kind != "epoch_ended":
            return
        row = {"epoch": event.epoch, **epoch_scalars(event)}
        if self.columns is None:  # a resumed run appends under the header it wrote first
            existing = self.path.read_text(encoding="utf-8").splitlines()[:1] if self.path.exists() else []
            self.columns = existing[0].split(",") if existing else list(row)
            if not existing:
                with open(self.path, "w", encoding="utf-8", newline="") as f:
                    csv.writer(f).writerow(self.columns)
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(row)


class TensorBoardLogger(Logger):
    """TensorBoard event files in ``tensorboard/`` of the run directory: the epoch's scalars and the validation overlays.

    Needs the ``tensorboard`` extra (``pip install 'wsolbench[tensorboard]'``);
    view with ``tensorboard --logdir RUN_DIR/tensorboard``.
    """

    summary: ClassVar[str] = "TensorBoard event files in the run directory (the tensorboard extra)"

    def __init__(self, run_dir: Any, config: dict[str, Any]):
        super().__init__(run_dir, config)
        try:
            from torch.utils.tensorboard import (
                SummaryWriter,  # the optional tensorboard package
            )
        except ImportError as exc:
            raise UserError("the tensorboard logger needs TensorBoard: pip install 'wsolbench[tensorboard]'") from exc
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, event: Event) -> None:
        if event.kind == "epoch_ended":
            for name, value in epoch_scalars(event).items():
                group = "valid" if name.startswith("valid_") else "train" if name.startswith("train_") else "run"
                self.writer.add_scalar(f"{group}/{name.removeprefix(group + '_')}", value, event.epoch)
            self.writer.flush()
        elif event.kind == "overlays_drawn":
            self.writer.add_image("valid/overlays", event.logs["image"], event.epoch, dataformats="HWC")
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
