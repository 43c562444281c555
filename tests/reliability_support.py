"""Helpers of the reliability tests: the test plug-in, tiny fast runs, the command line in-process."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
from conftest import TINY

#: a folder holding an uninstalled distribution with the ``fault-cam`` method and ``rooted`` dataset
PLUGIN_SITE = Path(__file__).resolve().parent / "fixtures" / "plugin_site"

#: TINY with a small timm test backbone: an epoch of 16 images takes a fraction of a second
FAST = [*TINY[: TINY.index("--epochs")], "--set", "model.backbone=test_efficientnet", "-q"]

#: what results.json and metrics.jsonl rows must share between two runs of the same seed
RESULT_KEYS = ("cl_error", "f1_pos", "f1_neg", "pxap", "dice_best", "iou_best", "threshold_best", "best_epoch")


@contextlib.contextmanager
def plugin_host():
    """A plugin host with the built-ins, the installed plug-ins and the test plug-in, for this process.

    Torch runs on one thread meanwhile (and in :func:`subprocess_env`): these
    tensors are tiny, and two threads on a busy two-core machine mostly wait
    for each other. Runs compared for equality use the same thread count.
    """
    import torch

    import wsolbench.plugin_host as plugins

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(PLUGIN_SITE))
        host = plugins.PluginHost()
        host.load_builtins()
        host.load_entry_points()
        assert "fault-cam" in host.registry("method")
        mp.setattr(plugins, "_HOST", host)
        torch.set_num_threads(1)
        try:
            yield host
        finally:
            torch.set_num_threads(threads)


def finished_run(out: Path, name: str, *args: str) -> Path:
    """Run ``wsolbench run ARGS`` in this process into ``out/name``; it must succeed."""
    code, err = cli("run", "-o", str(out), "--run-name", name, *args)
    assert code == 0, err
    return out / name


def cli(*args: str) -> tuple[int, str]:
    """``wsolbench ARGS`` in this process; returns the exit status and stderr (bugs still raise)."""
    from wsolbench.cli import main

    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a ``wsolbench`` subprocess that sees the test plug-in."""
    path = os.pathsep.join(p for p in (str(PLUGIN_SITE), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def metric_rows(run: Path) -> list[dict]:
    """metrics.jsonl without the timings (which differ between runs)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
    return rows


def outcome(run: Path) -> tuple[dict, list[dict]]:
    """A run's test metrics and per-epoch rows: equal for two CPU runs of the same seed."""
    results = read_json(run / "results.json")
    return {k: results[k] for k in RESULT_KEYS}, metric_rows(run)
