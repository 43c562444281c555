"""Run directories: ``<output-dir>/<run-id>/``.

Files (written atomically: temp file + rename; ``metrics.jsonl`` is appended,
one flushed line at a time):

``config.json``      the resolved configuration (file shape, see :mod:`wsolbench.config`)
``manifest.json``    schema version, versions of wsolbench/torch/timm/plug-ins, the code's
                     git commit and changes, threads, processors and deterministic settings
                     (:mod:`wsolbench.runs.provenance`), the data's fingerprint, device, seed,
                     status (``running``, ``completed``, ``failed``, ``interrupted``),
                     timings, peak memory, the error if any
``metrics.jsonl``    one JSON line per finished epoch
``results.json``     test metrics (percent), ``n_images``, the method's report label, the
                     plug-ins that provided the method, pooling and dataset (``provided_by``)
``per_image.csv``    one row per test image
``histograms.npz``   the test set's foreground/background score histograms (``histograms_crf.npz``:
                     after dense-CRF, with ``eval.crf``)
``overlays.png``     the first ``eval.pictures`` test images with true and predicted masks
``pr_curve.png``     the pixel precision-recall curve
``best.pt``          the model with the lowest validation error
``last.pt``          the latest finished epoch with everything needed to resume it
``lock``             held (``flock``) by the process writing the run; it names that process

A run whose process was killed keeps everything up to its last finished epoch;
``wsolbench run --resume RUN_DIR`` continues it (:mod:`wsolbench.training.runner`).
Write errors become one-paragraph errors (:class:`DiskFullError`,
:class:`RunWriteError`); checkpoints are refused when they would leave less
than the configured free space.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import errno
import fcntl
import io
import json
import os
import platform
import re
import resource
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsolbench import RUN_SCHEMA_VERSION, __version__
from wsolbench.config import RunConfig
from wsolbench.errors import UserError
from wsolbench.plugin_host import get_host
from wsolbench.runs import provenance
from wsolbench.utils import append_jsonl, atomic_write_bytes, json_bytes, read_json

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
#: the checkpoints a run keeps, by the names commands use for them
CHECKPOINTS = {"best": BEST, "last": LAST}

#: errno values that mean "the disk is full"
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def slug(text: str) -> str:
    """``text`` as one safe file name: runs of other characters than ``A-Za-z0-9_.+-`` become ``-``."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-.") or "run"


class RunDirError(UserError):
    """A directory that is not a readable wsolbench run (no such folder, a missing or broken file)."""


class RunLockedError(UserError):
    """Another live process is writing this run directory."""


class DiskFullError(UserError):
    """Too little free space to write the run's files safely."""


class RunWriteError(UserError):
    """A run file cannot be written (permissions, read-only file system)."""


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn the operating system's write errors on ``path`` into one-paragraph errors."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise DiskFullError(
                f"the disk is full: cannot write {path}. Free some space, then continue the run with "
                f"`wsolbench run --resume {Path(path).parent}`; finished epochs are kept."
            ) from exc
        raise RunWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc


def free_mb(path: str | os.PathLike) -> float:
    """Free space (MiB) on the file system holding ``path`` or its nearest existing parent."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free / 2**20


def check_free_space(path: str | os.PathLike, reserve_mb: float, write_bytes: int = 0) -> None:
    """Refuse to write ``write_bytes`` when it would leave less than ``reserve_mb`` MiB free."""
    if reserve_mb <= 0 and write_bytes == 0:
        return
    free = free_mb(path)
    need = reserve_mb + write_bytes / 2**20
    if free < need:
        what = f"; writing {write_bytes / 2**20:.1f} MiB would leave" if write_bytes else ","
        raise DiskFullError(
            f"too little disk space for {path}: {free:.0f} MiB free{what} less than the "
            f"{reserve_mb:g} MiB reserve (setting train.min_free_mb). Free some space or choose another "
            f"--output-dir; a run stopped for this continues with `wsolbench run --resume RUN_DIR`."
        )


def is_complete(path: str | os.PathLike) -> bool:
    """Whether the run in ``path`` finished: manifest status ``completed`` and ``results.json`` present."""
    run = Path(path)
    try:
        status = read_json(run / MANIFEST).get("status")
    except (OSError, ValueError, AttributeError):
        return False
    return status == "completed" and (run / RESULTS).is_file()


class RunDir:
    """One run's directory; creating one never reuses an existing path.

    ``read_only``: the directory as the processes of a torchrun launch other
    than rank 0 see it: they read it, and every writer does nothing (rank 0 writes).
    """

    def __init__(self, path: str | os.PathLike, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self._lock_fd: int | None = None

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
        base = slug(name)
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
        """Take the run's lock; refused while another live process holds it.

        The lock is an ``flock`` on the ``lock`` file, so the kernel releases it
        when its process ends in any way (``kill -9`` included) and a stale file
        never blocks a resume. The file names the holder for the error message.
        """
        lock = self.path / LOCK
        while True:
            with writing(lock):
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLockedError(
                    f"run {self.path} is being written by {_holder(lock)}; wait for it to finish or stop it. "
                    f"Two processes never write the same run directory."
                ) from None
            except OSError as exc:  # a file system without locks: fall back on the recorded process
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                holder = _read_pid(lock)
                if holder is not None and holder != os.getpid() and _alive(holder):
                    os.close(fd)
                    raise RunLockedError(f"run {self.path} is being written by {_holder(lock)}") from None
            try:  # the holder may have released (unlinked) the file between our open and flock
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n{socket.gethostname()}\n{now()}\n".encode())
            self._lock_fd = fd
            return

    def stop(self, status: str, reason: str) -> None:
        """Record why the run stopped (``status``, ``finished``, ``error``), keep its files, release its lock;
        never raises, so it cannot mask the error that stopped the run."""
        with contextlib.suppress(Exception):
            self.update_manifest(status=status, finished=now(), error=reason)
        self.release()

    def release(self) -> None:
        fd = self._lock_fd
        if fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path / LOCK)
        os.close(fd)
        self._lock_fd = None

    # -- reading ----------------------------------------------------------------
    def read_json(self, name: str) -> dict[str, Any]:
        """The JSON object in run file ``name``; :class:`RunDirError` when it is absent or unreadable."""
        path = self.path / name
        if not self.path.is_dir():
            raise RunDirError(f"{self.path} is not a directory; a run directory was expected")
        if not path.is_file():
            raise RunDirError(f"{self.path} is not a wsolbench run directory: it has no {name}")
        try:
            data = read_json(path)
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{path} cannot be read ({exc})") from exc
        if not isinstance(data, dict):
            raise RunDirError(f"{path} is not a JSON object")
        return data

    def read_config(self) -> RunConfig:
        """The configuration the run was made with (its ``config.json``)."""
        try:
            return RunConfig.from_dict(self.read_json(CONFIG))
        except (TypeError, ValueError, AttributeError) as exc:
            raise RunDirError(f"{self.path / CONFIG} is not a valid run configuration: {exc}") from exc

    def read_manifest(self) -> dict[str, Any]:
        return self.read_json(MANIFEST)

    def read_results(self) -> dict[str, Any]:
        return self.read_json(RESULTS)

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / METRICS
        if not path.exists():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a torn last line after a crash
                rows.append(json.loads(line))
        return rows

    # -- writing (nothing on a read-only directory) --------------------------------
    def _write(self, name: str, data: bytes) -> None:
        if self.read_only:
            return
        with writing(self.path / name):
            atomic_write_bytes(self.path / name, data)

    def _write_json(self, name: str, obj: Any) -> None:
        self._write(name, json_bytes(obj))

    def write_config(self, config: dict[str, Any]) -> None:
        self._write_json(CONFIG, config)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self._write_json(MANIFEST, manifest)

    def update_manifest(self, **fields: Any) -> None:
        if self.read_only:
            return
        manifest = self.read_manifest() if (self.path / MANIFEST).exists() else {}
        manifest.update(fields)
        self.write_manifest(manifest)

    def append_metrics(self, row: dict[str, Any]) -> None:
        if self.read_only:
            return
        with writing(self.path / METRICS):
            append_jsonl(self.path / METRICS, row)

    def truncate_metrics(self, last_epoch: int) -> list[dict[str, Any]]:
        """Keep the rows of epochs up to ``last_epoch`` (and drop a torn last line); returns them."""
        rows = [r for r in self.read_metrics() if r.get("epoch", -1) <= last_epoch]
        self._write(METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))
        return rows

    def write_results(self, results: dict[str, Any]) -> None:
        self._write_json(RESULTS, results)

    def write_per_image(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        self._write(PER_IMAGE, buf.getvalue().encode("utf-8"))

    def write_histograms(self, name: str = HISTOGRAMS, **arrays: Any) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        self._write(name, buf.getvalue())

    def save_checkpoint(self, name: str, state: dict[str, Any], reserve_mb: float = 0.0) -> None:
        """Write a checkpoint atomically, first checking it leaves ``reserve_mb`` MiB free."""
        if self.read_only:
            return
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        check_free_space(self.path, reserve_mb, len(data))
        self._write(name, data)

    def remove_temporaries(self) -> list[str]:
        """Delete the temporary files of atomic writes cut short by a crash; returns their names."""
        removed = []
        for tmp in self.path.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp.name)
        return removed

    def load_checkpoint(self, name: str = BEST) -> dict[str, Any]:
        path = self.path / name
        if not path.exists():
            raise UserError(f"no checkpoint {path}")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"cannot load checkpoint {path}: {exc}") from exc


def lock_holder(path: str | os.PathLike) -> str | None:
    """Who holds the lock of the run in ``path`` right now (``None``: nobody).

    Probes the ``flock`` without taking it for longer than the probe; on file
    systems without locks, falls back on whether the recorded process lives.
    """
    lock = Path(path) / LOCK
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(lock)
    except OSError:
        pid = _read_pid(lock)
        return _holder(lock) if pid is not None and _alive(pid) else None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _holder(lock: Path) -> str:
    try:
        pid, host, *_ = lock.read_text().split() + ["?", "?"]
    except OSError:
        return "another process"
    return f"process {pid} on {host}"


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
    import timm  # 3-4 s to import: only a run, which has imported it already, asks for its version

    env: dict[str, Any] = {
        "wsolbench": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "plugins": get_host().loaded_versions(),
    }
    with contextlib.suppress(ImportError):
        import torchvision  # imported with timm

        env["torchvision"] = torchvision.__version__
    return env


def origin(device: Any = "cpu") -> dict[str, Any]:
    """Where a run's numbers come from, as the manifest records it at a start and at each resume.

    ``versions`` (:func:`environment`), ``code`` (the version and git state,
    :func:`wsolbench.runs.provenance.code_state`) and ``runtime`` (threads,
    processors, deterministic settings, :func:`wsolbench.runs.provenance.runtime`).
    """
    return {"versions": environment(), "code": provenance.code_state(), "runtime": provenance.runtime(device)}


def new_manifest(
    config: dict[str, Any], device: Any, argv: list[str] | None = None, data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A run's first manifest; ``data`` is its dataset's :func:`wsolbench.runs.provenance.data_fingerprint`."""
    return {
        "schema_version": RUN_SCHEMA_VERSION,
        "status": "running",
        "created": now(),
        "finished": None,
        "method": config["method"]["name"],
        "dataset": config["dataset"]["name"],
        "seed": config["seed"],
        "device": str(device),
        "command": " ".join(argv if argv is not None else sys.argv),
        **origin(device),
        "data": data,
        "train_seconds": 0.0,
        "eval_seconds": 0.0,
        "peak_memory_mb": None,
        "error": None,
    }


def peak_memory_mb(device: Any) -> dict[str, float]:
    """Peak resident memory of this process (and peak CUDA memory on a GPU), in MiB."""
    out = {"host": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        out["cuda"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
