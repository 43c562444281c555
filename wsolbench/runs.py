"""Run directories: ``<output-dir>/<run-id>/``.

Files (all written atomically: temp file + rename):

``config.json``      the resolved configuration (file shape, see :mod:`wsolbench.config`)
``manifest.json``    schema version, versions of wsolbench/torch/timm/plug-ins, device,
                     seed, status (``running``, ``completed``, ``failed``, ``interrupted``),
                     timings, peak memory, the error if any
``metrics.jsonl``    one JSON line per epoch
``results.json``     test metrics (percent), ``n_images``, the method's report label
``per_image.csv``    one row per test image
``histograms.npz``   the test set's foreground/background score histograms (``histograms_crf.npz``:
                     after dense-CRF, with ``eval.crf``)
``overlays.png``     the first ``eval.pictures`` test images with true and predicted masks
``pr_curve.png``     the pixel precision-recall curve
``best.pt``          the model with the lowest validation error (``last.pt``: the latest epoch)
``lock``             present while a process writes the run
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import os
import platform
import re
import socket
import sys
from pathlib import Path
from typing import Any

from wsolbench import RUN_SCHEMA_VERSION, __version__
from wsolbench.errors import UserError
from wsolbench.utils import append_jsonl, atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

CONFIG = "config.json"
MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
PER_IMAGE = "per_image.csv"
HISTOGRAMS = "histograms.npz"
CRF_HISTOGRAMS = "histograms_crf.npz"
OVERLAYS = "overlays.png"
PR_CURVE = "pr_curve.png"
BEST = "best.pt"
LAST = "last.pt"
LOCK = "lock"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-") or "run"


class RunLockedError(UserError):
    pass


class RunDir:
    """One run's directory; creating one never reuses an existing path."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # -- creation and locking -------------------------------------------------
    @classmethod
    def create(cls, output_dir: str | os.PathLike, name: str) -> RunDir:
        root = Path(output_dir)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the output directory {root}: {exc.strerror}") from exc
        if not os.access(root, os.W_OK | os.X_OK):
            raise UserError(f"the output directory {root} is not writable")
        base = _slug(name)
        for n in range(1, 10_000):
            candidate = root / (base if n == 1 else f"{base}-{n}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise UserError(f"cannot create the run directory {candidate}: {exc.strerror}") from exc
            run = cls(candidate)
            run.acquire()
            return run
        raise UserError(f"too many runs named {base} in {root}")

    @staticmethod
    def default_name(dataset: str, method: str, seed: int) -> str:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return f"{stamp}-{dataset}-{method}-s{seed}"

    def acquire(self) -> None:
        """Take the run's lock; refused while another live process holds it."""
        lock = self.path / LOCK
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_pid(lock)
                if holder is not None and holder != os.getpid() and _alive(holder):
                    raise RunLockedError(
                        f"run {self.path} is being written by process {holder}; "
                        f"wait for it or stop it (remove {lock} only if that process is gone)"
                    ) from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n{socket.gethostname()}\n")
            return
        raise RunLockedError(f"cannot lock run {self.path}")

    def release(self) -> None:
        lock = self.path / LOCK
        if _read_pid(lock) == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)

    # -- files ----------------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.path / CONFIG, config)

    def read_config(self) -> dict[str, Any]:
        return read_json(self.path / CONFIG)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.path / MANIFEST, manifest)

    def read_manifest(self) -> dict[str, Any]:
        return read_json(self.path / MANIFEST)

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        manifest = self.read_manifest() if (self.path / MANIFEST).exists() else {}
        manifest.update(fields)
        self.write_manifest(manifest)
        return manifest

    def append_metrics(self, row: dict[str, Any]) -> None:
        append_jsonl(self.path / METRICS, row)

    def read_metrics(self) -> list[dict[str, Any]]:
        import json

        path = self.path / METRICS
        if not path.exists():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a torn last line after a crash
                rows.append(json.loads(line))
        return rows

    def write_results(self, results: dict[str, Any]) -> None:
        atomic_write_json(self.path / RESULTS, results)

    def read_results(self) -> dict[str, Any]:
        return read_json(self.path / RESULTS)

    def write_per_image(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        atomic_write_text(self.path / PER_IMAGE, buf.getvalue())

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.path / name, buf.getvalue())

    def load_checkpoint(self, name: str = BEST) -> dict[str, Any]:
        import torch

        path = self.path / name
        if not path.exists():
            raise UserError(f"no checkpoint {path}")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"cannot load checkpoint {path}: {exc}") from exc


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def environment() -> dict[str, Any]:
    """Versions and machine facts for the manifest."""
    import timm
    import torch

    from wsolbench.plugins import get_host

    env: dict[str, Any] = {
        "wsolbench": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "plugins": get_host().loaded_versions(),
    }
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    return env


def new_manifest(config: dict[str, Any], device: str, argv: list[str] | None = None) -> dict[str, Any]:
    return {
        "schema_version": RUN_SCHEMA_VERSION,
        "status": "running",
        "created": now(),
        "finished": None,
        "method": config["method"]["name"],
        "dataset": config["dataset"]["name"],
        "seed": config["seed"],
        "device": device,
        "command": " ".join(argv if argv is not None else sys.argv),
        "versions": environment(),
        "train_seconds": 0.0,
        "eval_seconds": 0.0,
        "peak_memory_mb": None,
        "error": None,
    }


def peak_memory_mb(device: Any) -> dict[str, float]:
    """Peak resident memory of this process (and peak CUDA memory on a GPU), in MiB."""
    import resource

    out = {"host": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    import torch

    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        out["cuda"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
