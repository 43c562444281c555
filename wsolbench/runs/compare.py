"""Two runs of the same settings side by side: their numbers, and what differed where they were made.

``wsolbench run --like RUN_DIR`` runs a finished run's configuration again and
compares the two with :func:`compare`: the test metrics and the kept epoch
(equal only when bit-identical), the per-epoch training losses, and the
recorded origin of each run (:mod:`wsolbench.runs.provenance`: code, versions,
threads, processors, deterministic settings, device, data) as dotted keys, so
a difference in the numbers comes with the differences that may explain it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wsolbench.runs.rundir import RunDir
from wsolbench.scoring.metrics import METRICS

#: manifest sections compared (``versions.hostname`` and ``versions.platform`` name the machine, not the software)
ORIGIN = ("code", "versions", "runtime", "device", "data")
_MACHINE_NAMES = {"versions.hostname", "versions.platform"}
#: results.json entries compared besides the metrics
_SELECTION = ("best_epoch", "valid_error", "tied_epochs", "tie_rule")


@dataclass
class Comparison:
    """``rows``: ``(name, old, new)`` for the metrics and the selection; ``origin``: differing manifest keys."""

    rows: list[tuple[str, Any, Any]]
    origin: list[tuple[str, Any, Any]] = field(default_factory=list)
    first_loss_difference: int | None = None  #: the first epoch whose training loss differs (None: none)
    epochs: tuple[int, int] = (0, 0)  #: epochs recorded by the old and the new run

    @property
    def identical(self) -> bool:
        return (all(old == new for _, old, new in self.rows) and self.first_loss_difference is None
                and self.epochs[0] == self.epochs[1])


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dictionaries as ``{"a.b.c": value}``."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def origin_differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for each :data:`ORIGIN` entry of two manifests that differs (``None``: absent)."""
    a = flatten({k: old.get(k) for k in ORIGIN})
    b = flatten({k: new.get(k) for k in ORIGIN})
    keys = [k for k in dict.fromkeys([*a, *b]) if k not in _MACHINE_NAMES]
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]


def _results_rows(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    rows = [(name, old.get(name), new.get(name)) for name in METRICS if name in old or name in new]
    for prefix in ("crf",):
        a, b = old.get(prefix) or {}, new.get(prefix) or {}
        rows += [(f"{prefix}.{name}", a.get(name), b.get(name)) for name in METRICS if name in a or name in b]
    rows += [(name, old.get(name), new.get(name)) for name in _SELECTION if name in old or name in new]
    return rows


def compare(old: RunDir, new: RunDir) -> Comparison:
    """The numbers and recorded origins of two completed runs."""
    old_losses = [row.get("train_loss") for row in old.read_metrics()]
    new_losses = [row.get("train_loss") for row in new.read_metrics()]
    first = next((i for i, (a, b) in enumerate(zip(old_losses, new_losses)) if a != b), None)
    return Comparison(
        rows=_results_rows(old.read_results(), new.read_results()),
        origin=origin_differences(old.read_manifest(), new.read_manifest()),
        first_loss_difference=first,
        epochs=(len(old_losses), len(new_losses)),
    )
