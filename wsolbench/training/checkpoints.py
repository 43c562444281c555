"""What a checkpoint holds: the model, and in ``last.pt`` everything needed to continue training.

``best.pt`` holds the schema version, the method's name, the configuration,
the epoch and the model's state. ``last.pt`` adds, after every finished
epoch, the optimizer, the learning-rate scheduler, the gradient scaler (mixed
precision), the loop's state (best epoch, epochs without improvement,
timings) and the random states of torch (CPU and CUDA), NumPy and Python.

A resumed run on CPU ends with exactly the metrics of an uninterrupted run of
the same seed, because each epoch's randomness is either a function of
``(seed, epoch)`` or restored whole:

- the training loader's generator (shuffling, and worker seeds when workers
  start) is re-seeded from :func:`epoch_seed` at the start of every epoch;
- the global random states (data augmentation in the main process, dropout)
  are saved at the end of each epoch and restored before the next one.

With ``train.num_workers > 0`` the persistent workers keep their own random
streams across epochs, so a resumed run is reproducible but its augmentations
differ from the uninterrupted run's after the resume point; on CUDA, kernels
that are not deterministic make any two runs differ slightly anyway.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsolbench import RUN_SCHEMA_VERSION
from wsolbench.config import RunConfig
from wsolbench.errors import CheckpointError
from wsolbench.interfaces import Method
from wsolbench.scoring.metrics import METRICS
from wsolbench.utils import json_bytes


def _no_best() -> dict[str, float]:
    return {"epoch": -1, "cl_error": math.inf, "loss": math.inf}


#: the values of ``eval.select`` that score the validation maps (the others rank classification figures)
LOCALIZATION_SELECT = ("maxboxaccv2", "pxap", "f1_neg")


def selection_key(metrics: dict[str, Any], select: str) -> tuple[float, ...]:
    """Model selection's order, lowest best: ``eval.select``'s validation metric (negated where higher is
    better; a record without it ranks last), then the classification error, then the loss."""
    rest = (metrics["cl_error"], metrics["loss"])
    if select == "cl_error":
        return rest
    if select == "loss":
        return (metrics["loss"], metrics["cl_error"])
    value = metrics.get(select)
    if value is None or value != value:  # noqa: PLR0124 - NaN: nothing to rank by
        return (math.inf, *rest)
    return (-value if METRICS[select].better == "higher" else value, *rest)


@dataclass
class TrainState:
    """What the training loop carries from one epoch to the next, besides the model and optimizer.

    Model selection (:meth:`consider`): the validated epoch with the best
    value of the selection metric (``eval.select``: the validation error by
    default) is kept. On a small validation split many epochs reach the same
    value (GlaS's 18 images: dozens of epochs at 0% error), so the rule that
    breaks the tie decides the kept model; ``ties`` counts the validated epochs
    at the best value so far, and the run's ``results.json`` reports it with
    the rule (``train.select_ties``):

    - ``loss``: among them, the first in the rest of :func:`selection_key`'s
      order (for the validation error: the lowest validation loss);
    - ``last``: the last of them (the min-max reference code's rule).
    """

    next_epoch: int = 0
    best: dict[str, float] = field(default_factory=_no_best)  #: epoch, cl_error, loss (and the selection metric)
    stale: int = 0  #: validations since the last improvement (early stopping)
    train_seconds: float = 0.0
    valid_seconds: float = 0.0
    ties: int = 0  #: validated epochs at the best selection value so far (the kept one among them)

    def stopped_early(self, patience: int) -> bool:
        return patience > 0 and self.stale >= patience

    def consider(self, epoch: int, metrics: dict[str, Any], select: str = "cl_error", rule: str = "loss") -> bool:
        """Count a validation of ``epoch``; whether it becomes the kept model under tie rule ``rule``."""
        key, best = selection_key(metrics, select), selection_key(self.best, select)
        if key[0] < best[0]:
            self.ties = 1
        elif key[0] == best[0]:
            self.ties += 1
        improved = key[0] <= best[0] if rule == "last" else key < best
        if improved:
            self.best = {"epoch": epoch, "cl_error": metrics["cl_error"], "loss": metrics["loss"],
                         **({select: metrics[select]} if select in LOCALIZATION_SELECT else {})}
        return improved


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s shuffling: a well-mixed function of ``(seed, epoch)``."""
    return int(np.random.SeedSequence([seed % 2**64, epoch]).generate_state(1, dtype=np.uint64)[0])


# -- the model -------------------------------------------------------------------
def model_state(method: Method, cfg: RunConfig, epoch: int, **extra: Any) -> dict[str, Any]:
    """A checkpoint of ``method`` after ``epoch`` (``best.pt``; ``extra`` adds :func:`training_state`)."""
    return {
        "schema_version": RUN_SCHEMA_VERSION,
        "method": cfg.method,
        "config": cfg.to_dict(),
        "epoch": epoch,
        "model": method.state_dict(),
        **extra,
    }


def check_checkpoint(state: dict[str, Any], cfg: RunConfig, where: str | Path = "the checkpoint") -> None:
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


def load_model_state(method: Method, state: dict[str, Any], cfg: RunConfig, into: str | None = None) -> None:
    """Load a checkpoint's model into ``method``, refusing one that was not made for ``cfg``.

    ``into``: ``method`` is this other method than ``cfg``'s, meant to share its network (``evaluate-run --method``).
    """
    check_checkpoint(state, cfg)
    try:
        method.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as exc:
        other = into is not None and into != cfg.method
        raise CheckpointError(
            f"the checkpoint does not fit the model of method {(into if other else cfg.method)!r} with backbone "
            f"{cfg.model.backbone!r}: {str(exc).splitlines()[0]}"
            + (f" (the run is of method {cfg.method!r}, whose network differs; --method takes a method with the "
               f"run's network, e.g. posthoc or gradcam on a run of cam-avg, has or cutmix)" if other else "")
        ) from exc


def as_stored_json(obj: Any) -> Any:
    """``obj`` as ``config.json`` stores it (tuples become lists), for comparing the two."""
    return json.loads(json_bytes(obj))


# -- random states ------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The full global random states of torch (CPU, CUDA), NumPy and Python, in checkpoint-safe types."""
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


class TrainingStateError(CheckpointError):
    """``last.pt`` holds no usable training state."""


def training_state(optimizer: Any, scheduler: Any, scaler: Any, state: TrainState) -> dict[str, Any]:
    """The entries of ``last.pt`` beyond the model (see :func:`model_state`)."""
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
        raise TrainingStateError(
            f"last.pt does not hold a resumable training state ({type(exc).__name__}: {exc})"
        ) from exc
    set_rng_state(checkpoint["rng"])
    return state
