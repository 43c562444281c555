"""Runs that are killed, interrupted, diverge or crash keep their work and resume to the same metrics."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from reliability_support import (
    FAST,
    cli,
    finished_run,
    metric_rows,
    outcome,
    plugin_host,
    read_json,
    subprocess_env,
)

from wsolbench.runs import rundir

EPOCHS = 3
#: 16 training images in batches of 8: two steps per epoch; global step 3 is epoch 1, step 1
PAUSE_STEP = 3
#: the settings of every run here
SETTINGS = ["--method", "fault-cam", "--epochs", str(EPOCHS), *FAST]


def run_args(out: Path, name: str, *extra: str) -> list[str]:
    return ["run", "-o", str(out), "--run-name", name, *SETTINGS, *extra]


@pytest.fixture(scope="module")
def host():
    with plugin_host() as h:
        yield h


@pytest.fixture(scope="module")
def reference(tmp_path_factory, host) -> Path:
    """An uninterrupted run of the settings every test here interrupts."""
    return finished_run(tmp_path_factory.mktemp("reference"), "ref", *SETTINGS)


def start_paused(tmp_path: Path, name: str) -> tuple[subprocess.Popen, Path]:
    """Start a run in a subprocess and return once it sits inside epoch 1, step 1."""
    flag = tmp_path / f"{name}.paused"
    env = subprocess_env(WSOLBENCH_FIXTURE_PAUSE_AT=str(PAUSE_STEP), WSOLBENCH_FIXTURE_PAUSE_FILE=str(flag))
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsolbench", *run_args(tmp_path, name)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 300
    while not flag.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the run never reached step {PAUSE_STEP}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.1)
    return proc, tmp_path / name


def assert_stopped_after_epoch_0(run: Path) -> None:
    assert [r["epoch"] for r in metric_rows(run)] == [0]
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] == 0 and last["train_state"]["next_epoch"] == 1
    assert not (run / "results.json").exists()


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_metrics(tmp_path, host, reference):
    proc, run = start_paused(tmp_path, "killed")
    # a second process may not write the run while the first one lives
    code, err = cli("run", "--resume", str(run))
    assert code == 2 and f"process {proc.pid}" in err and "Traceback" not in err
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert read_json(run / "manifest.json")["status"] == "running"  # it had no chance to write anything
    assert_stopped_after_epoch_0(run)

    code, err = cli("run", "--resume", str(run), "-q")
    assert code == 0, err
    assert outcome(run) == outcome(reference)
    manifest = read_json(run / "manifest.json")
    assert manifest["status"] == "completed" and manifest["epochs_done"] == EPOCHS
    assert [(r["from_epoch"], r["previous_status"]) for r in manifest["resumed"]] == [(1, "running")]
    assert not (run / "lock").exists()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_marks_the_run_interrupted_and_keeps_its_files(tmp_path, host, reference, monkeypatch, sig):
    """The run sends itself the signal mid-epoch, in this process: the path of a real Ctrl-C."""
    monkeypatch.setenv("WSOLBENCH_FIXTURE_PAUSE_AT", str(PAUSE_STEP))
    monkeypatch.setenv("WSOLBENCH_FIXTURE_PAUSE_FILE", str(tmp_path / "paused"))
    monkeypatch.setenv("WSOLBENCH_FIXTURE_RAISE_SIGNAL", sig)
    # a shell starts background jobs with SIGINT ignored, and Python keeps it so: restore Ctrl-C's handler
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, err = cli(*run_args(tmp_path, "stopped"))
    except KeyboardInterrupt:  # pragma: no cover - only when the command line lets it through
        pytest.fail(f"{sig} escaped the command line as KeyboardInterrupt")
    finally:
        signal.signal(signal.SIGINT, previous)
    run = tmp_path / "stopped"
    assert code == 130 and "Traceback" not in err
    assert f"wsolbench run --resume {run}" in " ".join(err.split())
    assert "Aborted" not in err and "Interrupted." not in err  # the run's own message is the last word
    manifest = read_json(run / "manifest.json")
    assert manifest["status"] == "interrupted"
    assert manifest["error"] == ("terminated by SIGTERM" if sig == "SIGTERM" else "interrupted by the user (Ctrl-C)")
    assert_stopped_after_epoch_0(run)
    assert (run / "best.pt").is_file() and not (run / "lock").exists()
    if sig == "SIGINT":
        monkeypatch.delenv("WSOLBENCH_FIXTURE_PAUSE_AT")
        code, err = cli("run", "--resume", str(run), "-q")
        assert code == 0, err
        assert outcome(run) == outcome(reference)


def test_options_cannot_accompany_resume_and_a_complete_run_is_left_alone(reference):
    code, err = cli("run", "--resume", str(reference), "--epochs", "5", "--set", "train.lr=1")
    assert code == 2 and "--epochs, --set" in err
    before = (reference / "results.json").stat().st_mtime_ns
    code, err = cli("run", "--resume", str(reference))
    assert code == 0 and "already complete" in err
    assert (reference / "results.json").stat().st_mtime_ns == before


def test_kill_between_last_row_and_checkpoint_or_before_testing(tmp_path, host, reference):
    """The states a kill can leave after the final epoch: an extra torn row, no results yet."""
    run = Path(shutil.copytree(reference, tmp_path / "copy"))
    (run / "results.json").unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": EPOCHS, "train_loss": 1.0}) + "\n" + '{"epoch": 9, "lr"')
    (run / ".last.pt.abc.tmp").write_bytes(b"half a checkpoint")
    rundir.RunDir(run).update_manifest(status="running")
    code, err = cli("run", "--resume", str(run), "-q")
    assert code == 0, err
    assert outcome(run) == outcome(reference)  # no epoch retrained, the extra rows dropped
    assert not list(run.glob(".*.tmp"))


def test_resume_rewrites_best_from_last_when_killed_between_them(tmp_path, host, reference):
    from wsolbench.training.runner import open_run

    run = Path(shutil.copytree(reference, tmp_path / "copy"))
    last = torch.load(run / "last.pt", weights_only=True)
    last["train_state"]["best"]["epoch"] = last["epoch"]  # last.pt improved, best.pt not yet written
    torch.save(last, run / "last.pt")
    rundir.RunDir(run).update_manifest(status="interrupted")
    point = open_run(run)
    point.run_dir.release()
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] == last["epoch"] and "optimizer" not in best
    assert all(torch.equal(best["model"][k], v) for k, v in last["model"].items())


@pytest.mark.parametrize("interval", [1, 25], ids=["every-step", "every-25-steps-as-on-a-gpu"])
def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path, host, monkeypatch, interval):
    from wsolbench.training import engine

    # on a GPU the host looks at the loss every 25 steps; the step reported is still the first bad one
    monkeypatch.setattr(engine, "loss_check_interval", lambda device: interval)
    code, err = cli(*run_args(tmp_path, "nan", "--set", f"method.nan_at={PAUSE_STEP}"))
    assert code == 2 and "Traceback" not in err
    assert "nan at epoch 1, step 1" in " ".join(err.split())
    run = tmp_path / "nan"
    manifest = read_json(run / "manifest.json")
    assert manifest["status"] == "failed" and manifest["error"].startswith("TrainingDivergedError")
    assert "epoch 1, step 1" in manifest["error"]
    assert_stopped_after_epoch_0(run)
    assert torch.isfinite(torch.cat([v.flatten().float() for v in
                                     torch.load(run / "last.pt", weights_only=True)["model"].values()])).all()
    assert not (run / "lock").exists()


def test_a_crash_marks_the_run_failed_with_its_reason(tmp_path, host):
    with pytest.raises(RuntimeError, match="on purpose"):  # a bug keeps its traceback
        cli(*run_args(tmp_path, "crash", "--set", f"method.crash_at={PAUSE_STEP}"))
    run = tmp_path / "crash"
    manifest = read_json(run / "manifest.json")
    assert manifest["status"] == "failed"
    assert manifest["error"] == f"RuntimeError: fault-cam crashes at step {PAUSE_STEP} on purpose"
    assert_stopped_after_epoch_0(run)
    assert not (run / "lock").exists()


def test_a_full_disk_fails_the_run_keeps_its_epochs_and_it_resumes(tmp_path, host, reference, monkeypatch):
    real = rundir.free_mb
    calls = []

    def filling_up(path):  # plenty for the start and epoch 0's checkpoints, then nothing
        calls.append(path)
        return real(path) if len(calls) <= 3 else 0.0

    monkeypatch.setattr(rundir, "free_mb", filling_up)
    code, err = cli(*run_args(tmp_path, "full"))
    assert code == 2 and "too little disk space" in err and "--resume" in err
    run = tmp_path / "full"
    manifest = read_json(run / "manifest.json")
    assert manifest["status"] == "failed" and manifest["error"].startswith("DiskFullError")
    # epoch 1's row was written before its checkpoint failed; resuming drops it
    assert [r["epoch"] for r in metric_rows(run)] == [0, 1]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 0

    monkeypatch.setattr(rundir, "free_mb", real)
    code, err = cli("run", "--resume", str(run), "-q")
    assert code == 0, err
    assert outcome(run) == outcome(reference)
    assert read_json(run / "manifest.json")["resumed"][0]["previous_status"] == "failed"


# -- the pieces ---------------------------------------------------------------------
def test_random_states_survive_a_checkpoint_round_trip(tmp_path):
    import io
    import random

    import numpy as np

    from wsolbench.training.checkpoints import rng_state, set_rng_state

    def draw():
        return torch.rand(3).tolist(), np.random.standard_normal(3).tolist(), [random.random() for _ in range(3)]

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    np.random.standard_normal()  # leaves a cached Gaussian, part of NumPy's state
    buf = io.BytesIO()
    torch.save({"rng": rng_state()}, buf)
    expected = draw()
    assert draw() != expected
    buf.seek(0)
    set_rng_state(torch.load(buf, weights_only=True)["rng"])
    assert draw() == expected


def test_epoch_seeds_depend_on_seed_and_epoch_only():
    from wsolbench.training.checkpoints import epoch_seed

    seeds = {epoch_seed(s, e) for s in (0, 1, -1) for e in range(50)}
    assert len(seeds) == 150 and all(0 <= x < 2**64 for x in seeds)
    assert epoch_seed(3, 7) == epoch_seed(3, 7)


def test_is_complete(tmp_path, reference):
    assert rundir.is_complete(reference)
    run = Path(shutil.copytree(reference, tmp_path / "copy"))
    rundir.RunDir(run).update_manifest(status="interrupted")
    assert not rundir.is_complete(run)
    rundir.RunDir(run).update_manifest(status="completed")
    (run / "results.json").unlink()
    assert not rundir.is_complete(run) and not rundir.is_complete(tmp_path / "absent")


def test_a_checkpoint_that_would_fill_the_disk_is_not_written(tmp_path, monkeypatch):
    import errno

    run = rundir.RunDir(tmp_path)
    run.save_checkpoint("last.pt", {"epoch": 0})
    monkeypatch.setattr(rundir, "free_mb", lambda path: 50.0)
    with pytest.raises(rundir.DiskFullError, match="50 MiB free; writing 0.0 MiB would leave less than the 100 MiB"):
        run.save_checkpoint("last.pt", {"epoch": 1}, reserve_mb=100)
    assert torch.load(tmp_path / "last.pt", weights_only=True) == {"epoch": 0}

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir, "atomic_write_bytes", no_space)
    with pytest.raises(rundir.DiskFullError, match="the disk is full: cannot write .*last.pt.*--resume"):
        run.save_checkpoint("last.pt", {"epoch": 1})
    assert torch.load(tmp_path / "last.pt", weights_only=True) == {"epoch": 0}


def test_tuples_in_the_configuration_do_not_look_like_an_edited_run(tmp_path, host, reference):
    """config.json stores a tuple setting as a list; last.pt keeps the tuple."""
    from wsolbench.training.runner import open_run

    run = Path(shutil.copytree(reference, tmp_path / "copy"))
    last = torch.load(run / "last.pt", weights_only=True)
    last["config"]["model"]["backbone_params"]["out_indices"] = (4,)
    torch.save(last, run / "last.pt")
    config = read_json(run / "config.json")
    config["model"]["backbone_params"]["out_indices"] = [4]
    (run / "config.json").write_text(json.dumps(config))
    rundir.RunDir(run).update_manifest(status="interrupted")
    open_run(run).run_dir.release()


def test_the_training_state_loads_weights_only_into_fresh_objects(tmp_path):
    import io

    from wsolbench.config import RunConfig
    from wsolbench.training.checkpoints import (
        TrainState,
        restore_training,
        training_state,
    )
    from wsolbench.training.engine import make_optimizer, make_scheduler

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 2)

        def parameter_groups(self):
            return None

    cfg = RunConfig()
    cfg.train.schedule, cfg.train.lr_step = "step", 1

    def build():
        model = Tiny()
        optimizer = make_optimizer(model, cfg)
        return optimizer, make_scheduler(optimizer, cfg), torch.amp.GradScaler("cpu", init_scale=2.0**10)

    optimizer, scheduler, scaler = build()
    optimizer.param_groups[0]["params"][0].grad = torch.ones(2, 3)
    optimizer.step()
    scheduler.step()
    scaler.scale(torch.ones(()))
    scaler.update(new_scale=123.0)
    state = TrainState(next_epoch=4, best={"epoch": 2, "cl_error": 10.0, "loss": 0.5}, stale=1, train_seconds=3.5)
    buf = io.BytesIO()
    torch.save(training_state(optimizer, scheduler, scaler, state), buf)
    buf.seek(0)
    fresh = build()
    restored = restore_training(torch.load(buf, weights_only=True), *fresh)
    assert restored == state
    assert fresh[1].state_dict()["last_epoch"] == 1 and fresh[1].get_last_lr() == scheduler.get_last_lr()
    momentum = fresh[0].state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, optimizer.state_dict()["state"][0]["momentum_buffer"])
    assert fresh[2].get_scale() == 123.0


def test_run_files_get_the_mode_of_a_plain_open(reference):
    """Files written atomically are readable by whoever the umask lets read (mkstemp alone gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    for name in ("manifest.json", "results.json", "config.json", "last.pt"):
        assert stat.S_IMODE((reference / name).stat().st_mode) == 0o666 & ~mask, name
