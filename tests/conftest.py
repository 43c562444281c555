"""Shared fixtures: tiny settings that keep every end-to-end run to seconds on 2 cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The suite checks CPU-exact behaviour, as CI runs it: bit-identical reruns, a NaN loss caught at its
# step, byte-equal results across processes. GPUs are hidden from it and from the runs it starts, so it
# behaves the same on a GPU machine; GPU paths are checked with `benchmarks/speed.py --device cuda`,
# `benchmarks/minmax_erasing.py --device cuda` and `wsolbench run --device cuda` (README, "GPU").
os.environ["CUDA_VISIBLE_DEVICES"] = ""

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"

#: settings for a run of a few seconds on the synthetic set
TINY = [
    "--set", "dataset.image_size=32",
    "--set", "dataset.n_train=16",
    "--set", "dataset.n_valid=8",
    "--set", "dataset.n_test=8",
    "--set", "train.batch_size=8",
    "--set", "eval.batch_size=8",
    "--set", "eval.pictures=0",
    "--epochs", "1",
]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Every test runs in its own directory with third-party plug-ins left as installed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONHASHSEED", "0")


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``wsolbench`` in a subprocess (fresh interpreter, like a user)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "wsolbench", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout,
    )


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available (shared data is only on development machines)")
    return path
