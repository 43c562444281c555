"""Continuing a run that was killed, interrupted or stopped by an error.

``last.pt`` holds, after every finished epoch, the model, the optimizer, the
learning-rate scheduler, the gradient scaler (mixed precision), the
early-stopping state (best epoch, epochs without improvement), the timings and
the random states of torch (CPU and CUDA), NumPy and Python.

A resumed run on CPU ends with exactly the metrics of an uninterrupted run of
the same seed, because each epoch's randomness is either a function of
``(seed, epoch)`` or restored whole:

- the training loader's generator (shuffling, and worker seeds when workers
  start) is re-seeded from ``(seed, epoch)`` at the start of every epoch;
- the global random states (data augmentation in the main process, dropout)
  are saved at the end of each epoch and restored before the next one.

With ``train.num_workers > 0`` the persistent workers keep their own random
streams across epochs, so a resumed run is reproducible but its augmentations
differ from the uninterrupted run's after the resume point; on CUDA, kernels
that are not deterministic make any two runs differ slightly anyway.

Files are kept consistent across a kill at any point: a metrics row is
appended, then ``last.pt`` is replaced, then ``best.pt`` if the epoch improved.
Resuming drops metric rows after the checkpoint's epoch, rewrites ``best.pt``
from ``last.pt`` when the kill fell between the two, and deletes the
temporary files of interrupted atomic writes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsolbench import RUN_SCHEMA_VERSION
from wsolbench.errors import CheckpointError, UserError

#: manifest statuses a run can be resumed from ("running": its process was killed)
RESUMABLE = ("running", "interrupted", "failed")


class ResumeError(UserError):
    """A run directory that cannot be continued."""


def _no_best() -> dict[str, float]:
    return {"epoch": -1, "cl_error": math.inf, "loss": math.inf}


@dataclass
class TrainState:
    """What the training loop carries from one epoch to the next, besides the model and optimizer."""

    next_epoch: int = 0
    best: dict[str, float] = field(default_factory=_no_best)  #: epoch, cl_error, loss of the best validation
    stale: int = 0  #: epochs since the last improvement (early stopping)
    train_seconds: float = 0.0
    valid_seconds: float = 0.0

    def stopped_early(self, patience: int) -> bool:
        return patience > 0 and self.stale >= patience


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s shuffling: a well-mixed function of ``(seed, epoch)``."""
    import numpy as np

    return int(np.random.SeedSequence([seed % 2**64, epoch]).generate_state(1, dtype=np.uint64)[0])


# -- random states ------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The full global random states of torch (CPU, CUDA), NumPy and Python, in checkpoint-safe types."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- the training part of last.pt ----------------------------------------------
#: the entries of ``last.pt`` that ``best.pt`` does not have
TRAINING_KEYS = ("optimizer", "scheduler", "scaler", "train_state", "rng")


def training_state(optimizer: Any, scheduler: Any, scaler: Any, state: TrainState) -> dict[str, Any]:
    """The entries of ``last.pt`` beyond the model (see :func:`wsolbench.engine.checkpoint_state`)."""
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "train_state": dataclasses.asdict(state),
        "rng": rng_state(),
    }


def restore_training(checkpoint: dict[str, Any], optimizer: Any, scheduler: Any, scaler: Any) -> TrainState:
    """Load optimizer, scheduler and scaler states and the random states; returns the loop's state."""
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        state = TrainState(**checkpoint["train_state"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ResumeError(f"last.pt does not hold a resumable training state ({type(exc).__name__}: {exc})") from exc
    set_rng_state(checkpoint["rng"])
    return state


# -- opening a run to continue it ---------------------------------------------
@dataclass
class ResumePoint:
    """A locked run directory ready to continue: its configuration and its ``last.pt`` (if any)."""

    run_dir: Any
    config: Any
    checkpoint: dict[str, Any] | None
    previous_status: str

    def mark_running(self, argv: list[str] | None = None) -> None:
        """Set the manifest back to ``running`` and record this resume (time, epoch, command, versions)."""
        from wsolbench import runs

        runs.check_free_space(self.run_dir.path, self.config.train.min_free_mb)
        resumed = self.run_dir.read_manifest().get("resumed", [])
        resumed.append({
            "at": runs.now(),
            "from_epoch": self.checkpoint["epoch"] + 1 if self.checkpoint else 0,
            "previous_status": self.previous_status,
            "command": " ".join(argv or []),
            "versions": runs.environment(),
        })
        self.run_dir.update_manifest(status="running", finished=None, error=None, resumed=resumed)


def open_run(path: str | Path) -> ResumePoint:
    """Check and lock ``path`` for resuming; repair what a kill can leave behind.

    Raises :class:`ResumeError` (exit status 2) for a directory that is not a
    run, a run written by a newer wsolbench, a completed run, a checkpoint of
    another method or configuration, and :class:`~wsolbench.runs.RunLockedError`
    while another process writes the run.
    """
    from wsolbench import runs
    from wsolbench.config import RunConfig

    run_dir = runs.RunDir(path)
    manifest = _read_run_json(run_dir, runs.MANIFEST)
    config = _read_run_json(run_dir, runs.CONFIG)
    schema = manifest.get("schema_version", 0)
    if not isinstance(schema, int) or schema > RUN_SCHEMA_VERSION:
        raise ResumeError(
            f"run {run_dir.path} was written by a newer wsolbench (run schema {schema}, this version reads up "
            f"to {RUN_SCHEMA_VERSION}); upgrade wsolbench to resume it"
        )
    status = manifest.get("status")
    if status not in RESUMABLE:
        raise ResumeError(f"run {run_dir.path} has status {status!r}; only {', '.join(RESUMABLE)} runs resume")
    try:
        cfg = RunConfig.from_dict(config)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ResumeError(f"{run_dir.path / runs.CONFIG} is not a valid run configuration: {exc}") from exc

    run_dir.acquire()
    try:
        checkpoint = None
        if (run_dir.path / runs.LAST).exists():
            checkpoint = run_dir.load_checkpoint(runs.LAST)
            check_checkpoint(checkpoint, cfg, run_dir.path / runs.LAST)
            if as_stored_json(checkpoint.get("config")) != config:
                raise ResumeError(
                    f"{run_dir.path / runs.LAST} was written with another configuration than "
                    f"{run_dir.path / runs.CONFIG}; the run directory was changed by hand and cannot be resumed"
                )
        run_dir.remove_temporaries()
        last_epoch = checkpoint["epoch"] if checkpoint is not None else -1
        run_dir.truncate_metrics(last_epoch)
        if checkpoint is not None:
            _repair_best(run_dir, checkpoint, cfg)
    except BaseException:
        run_dir.release()
        raise
    return ResumePoint(run_dir, cfg, checkpoint, status)


def check_checkpoint(state: dict[str, Any], cfg: Any, where: str | Path = "the checkpoint") -> None:
    """Refuse a checkpoint from a newer schema or of another method than ``cfg``'s."""
    schema = state.get("schema_version", 0)
    if not isinstance(schema, int) or schema > RUN_SCHEMA_VERSION:
        raise CheckpointError(
            f"{where} was written by a newer wsolbench (checkpoint schema {schema}, this version reads up to "
            f"{RUN_SCHEMA_VERSION}); upgrade wsolbench to read it"
        )
    if state.get("method") != cfg.method:
        raise CheckpointError(
            f"{where} is a checkpoint of method {state.get('method')!r}, but the run is of method "
            f"{cfg.method!r}; it cannot be loaded"
        )


def as_stored_json(obj: Any) -> Any:
    """``obj`` as config.json stores it (tuples become lists), for comparing the two."""
    import json

    from wsolbench.utils import _json_default  # the encoder that wrote config.json

    return json.loads(json.dumps(obj, default=_json_default))


def _read_run_json(run_dir: Any, name: str) -> dict[str, Any]:
    from wsolbench.utils import read_json

    path = run_dir.path / name
    if not run_dir.path.is_dir():
        raise ResumeError(f"{run_dir.path} is not a directory; --resume takes a run directory")
    if not path.is_file():
        raise ResumeError(f"{run_dir.path} is not a wsolbench run directory: it has no {name}")
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise ResumeError(f"{path} cannot be read ({exc}); the run cannot be resumed") from exc
    if not isinstance(data, dict):
        raise ResumeError(f"{path} is not a JSON object; the run cannot be resumed")
    return data


def _repair_best(run_dir: Any, checkpoint: dict[str, Any], cfg: Any) -> None:
    """Make ``best.pt`` hold the best epoch that ``last.pt`` records."""
    from wsolbench import runs

    best_epoch = checkpoint.get("train_state", {}).get("best", {}).get("epoch", -1)
    if best_epoch < 0:
        return
    path = run_dir.path / runs.BEST
    on_disk = run_dir.load_checkpoint(runs.BEST).get("epoch") if path.exists() else None
    if on_disk == best_epoch:
        return
    if best_epoch != checkpoint["epoch"]:
        raise ResumeError(
            f"{path} holds epoch {on_disk} but {runs.LAST} records epoch {best_epoch} as the best; the run "
            f"directory was changed by hand and cannot be resumed"
        )
    run_dir.save_checkpoint(runs.BEST, {k: v for k, v in checkpoint.items() if k not in TRAINING_KEYS})
