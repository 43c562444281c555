"""What a run's manifest records about where its numbers came from: code, machine, data.

Three records, each a JSON object (see docs/runs.md):

- :func:`code_state`: the wsolbench version and, when the package is imported
  from a git checkout, its commit, whether the checkout had uncommitted
  changes to tracked files (``dirty``) with the SHA-256 of ``git diff HEAD``,
  and the number of untracked files. Outside a checkout (an installed copy),
  or without git, the record says so in ``git`` instead of failing.
- :func:`runtime`: what changes floating-point results on the same code: the
  CPU threads torch uses and ``OMP_NUM_THREADS``, the CPU model (and the GPU's
  when the run uses CUDA), and the deterministic settings in force.
- :func:`data_fingerprint`: the SHA-256 of what the dataset plug-in says
  identifies its data (:meth:`wsolbench.interfaces.Dataset.fingerprint`), so
  runs on two different copies of a dataset can be told apart.

Git is asked through its command line (no library reads a worktree's diff as
git itself does); each call has a time limit and any failure becomes a reason
in the record, since the record must never stop a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from wsolbench import __version__

#: the folder of the wsolbench package, whose checkout :func:`code_state` describes
CODE_DIR = Path(__file__).resolve().parents[1]
#: what beside the package a run executes, hashed with it (``tree_sha256``): built-in plug-ins, entry points
CODE_BESIDE = ("plugins", "pyproject.toml")
#: the git executable
GIT = "git"
#: seconds each git call may take
GIT_TIMEOUT = 20.0


def sha256_json(obj: Any) -> str:
    """The SHA-256 of ``obj`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _GitUnavailable(Exception):
    pass


def _git(directory: Path, *args: str) -> bytes:
    """The output of ``git args`` in ``directory``; raises :class:`_GitUnavailable` with the reason."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}  # never take the index lock of a busy checkout
    try:
        done = subprocess.run([GIT, *args], cwd=directory, capture_output=True, timeout=GIT_TIMEOUT, env=env,
                              check=False)
    except FileNotFoundError:
        raise _GitUnavailable(f"git is not installed (no {GIT!r} on PATH)") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _GitUnavailable(f"git failed: {exc}") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise _GitUnavailable(message[0] if message else f"git {args[0]} exited with status {done.returncode}")
    return done.stdout


def code_state(package_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The code a run used: ``{"wsolbench": version, "git": {...}}``.

    ``git`` holds ``commit``, ``dirty``, ``diff_sha256`` (``None`` when clean),
    ``untracked_files`` and ``tree_sha256`` when ``package_dir`` (default: the
    wsolbench package) is tracked in a git checkout; otherwise ``{"commit":
    None, "reason": ...}``. ``tree_sha256`` hashes the commit's git trees of
    the code a run executes: the package, the built-in plug-ins beside it
    (``plugins``) and ``pyproject.toml`` (entry points), so two commits that
    differ only elsewhere (docs, suite files) share it. Untracked files are
    counted, not hashed: an untracked file changes a run only when a tracked
    one (the code, ``pyproject.toml``'s entry points) names it, and that change
    makes the checkout dirty.
    """
    directory = Path(package_dir) if package_dir is not None else CODE_DIR
    return {"wsolbench": __version__, "git": _git_state(directory)}


def _git_state(directory: Path) -> dict[str, Any]:
    try:
        _git(directory, "rev-parse", "--show-toplevel")
    except _GitUnavailable as exc:
        reason = str(exc)
        if "not a git repository" in reason:
            reason = f"{directory} is not in a git checkout (an installed copy)"
        return {"commit": None, "reason": reason}
    try:  # a checkout that merely holds the package (a virtual environment inside a project) is not its source
        _git(directory, "ls-files", "--error-unmatch", "--", "__init__.py")
    except _GitUnavailable:
        return {"commit": None, "reason": f"{directory} is inside a git checkout that does not track it"}
    try:
        commit = _git(directory, "rev-parse", "HEAD").decode().strip()
        changed = _git(directory, "status", "--porcelain", "--untracked-files=no").strip()
        diff = _git(directory, "diff", "HEAD", "--binary") if changed else b""
        untracked = _git(directory, "ls-files", "--others", "--exclude-standard", "-z", ":/").split(b"\0")
        trees = _git(directory.parent, "ls-tree", "HEAD", "--", directory.name, *CODE_BESIDE)
    except _GitUnavailable as exc:
        return {"commit": None, "reason": str(exc)}
    return {
        "commit": commit,
        "dirty": bool(changed),
        "diff_sha256": hashlib.sha256(diff).hexdigest() if changed else None,
        "untracked_files": sum(1 for name in untracked if name),
        "tree_sha256": hashlib.sha256(trees).hexdigest(),
    }


def describe_code(code: dict[str, Any] | None) -> str:
    """One phrase naming a manifest's code record: ``commit abc123def456``, ``+ changes (diff ...)`` when dirty."""
    if not isinstance(code, dict):
        return "code not recorded"
    git = code.get("git") or {}
    commit = git.get("commit")
    if not commit:
        return f"wsolbench {code.get('wsolbench', '?')} outside a git checkout"
    text = f"commit {str(commit)[:12]}"
    if git.get("dirty"):
        text += f" with uncommitted changes (diff {str(git.get('diff_sha256'))[:12]})"
    return text


def code_identity(code: dict[str, Any] | None) -> str:
    """What tells two runs' code apart: the code's trees (and uncommitted diff) when recorded, else
    :func:`describe_code`'s phrase (runs made before trees were recorded are told apart by commit)."""
    git = (code or {}).get("git") if isinstance(code, dict) else None
    if isinstance(git, dict) and git.get("tree_sha256"):
        return f"tree {git['tree_sha256']}" + (f" + diff {git.get('diff_sha256')}" if git.get("dirty") else "")
    return describe_code(code)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as stream:
            for line in stream:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def runtime(device: Any = "cpu") -> dict[str, Any]:
    """Threads, processors and deterministic settings in force now, for a run on ``device``."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "cpu": _cpu_model(),
        "cpu_cores": usable,
        "gpu": None,
        "deterministic": {
            "algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        },
    }
    if getattr(device, "type", str(device).split(":")[0]) == "cuda" and torch.cuda.is_available():
        dev = torch.device(device)
        out["gpu"] = {
            "name": torch.cuda.get_device_name(dev),
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return out


def data_fingerprint(dataset: Any) -> dict[str, Any]:
    """``{"sha256", "basis", "images"}`` of a dataset plug-in's :meth:`~wsolbench.interfaces.Dataset.fingerprint`.

    ``images`` counts each split's images. A plug-in whose fingerprint fails
    gets ``{"sha256": None, "error": ...}``: the run goes on, and the report
    treats its data as unrecorded.
    """
    try:
        described = dataset.fingerprint()
        images = {name: len(dataset.split_labels(name)) for name in dataset.split_names}
    except Exception as exc:  # noqa: BLE001 - a plug-in's failure to describe its data must not stop the run
        return {"sha256": None, "error": f"{type(exc).__name__}: {exc}"}
    return {"sha256": sha256_json(described), "basis": described.get("basis", "unknown"), "images": images}

