"""Several processes on the CPU (Gloo): sharding, gradient averaging, and runs end to end.

The two-process runs fork this process and give each copy the environment
torchrun gives its processes (``torchrun --nproc_per_node=2 -m wsolbench run
...``), so that nothing is imported again.
"""

from __future__ import annotations

import csv
import json

import distributed_support
import pytest
import torch
from conftest import TINY

from wsolbench.cli import main
from wsolbench.errors import UserError
from wsolbench.training import distributed
from wsolbench.training.distributed import Context, shard_batches

METRICS = ("cl_error", "f1_pos", "f1_neg", "pxap", "dice_best", "iou_best", "threshold_best", "n_images",
           "maxboxacc", "maxboxaccv2", "boxacc_30", "boxacc_70", "box_threshold_70", "top1_loc", "top5_loc")


@pytest.mark.parametrize(("size", "batch", "world"), [(8, 3, 2), (10, 4, 3), (2, 5, 4), (7, 1, 2)])
def test_evaluation_shards_are_the_single_process_batches_dealt_out(size, batch, world):
    single = shard_batches(size, batch, 0, 1)
    shards = [shard_batches(size, batch, r, world) for r in range(world)]
    dealt = [b for r in range(world) for b in shards[r]]
    assert sorted(dealt) == single  # the same batches, each once
    assert sorted(i for b in dealt for i in b) == list(range(size))
    assert all(shards[r] == single[r::world] for r in range(world))


class FakeWorld(Context):
    """A context whose gather returns prepared parts, as the other processes would send them."""

    def __init__(self, parts):
        super().__init__(len(parts), 0, 0)
        object.__setattr__(self, "parts", parts)

    def gather(self, obj):
        return [obj, *self.parts[1:]]


def test_collect_puts_rows_back_in_image_order_and_sums_totals():
    rank1 = (torch.tensor([1, 4]), {"f1": torch.tensor([10.0, 40.0])}, {"hist": torch.tensor([1, 2])})
    rank2 = (torch.empty(0), {"f1": torch.empty(0)}, {"hist": None})  # a process without images
    world = FakeWorld([None, rank1, rank2])
    index, rows, totals = world.collect(torch.tensor([3, 0, 2]), {"f1": torch.tensor([30.0, 0.0, 20.0])},
                                        {"hist": torch.tensor([5, 5])})
    assert index.tolist() == [0, 1, 2, 3, 4]
    assert rows["f1"].tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert totals["hist"].tolist() == [6, 7]
    sums = FakeWorld([None, {"a": 1.0}, {"a": 2.0, "b": 1}]).sum({"a": 0.5, "n": 2})
    assert sums == {"a": 3.5, "n": 2, "b": 1}


def test_environment_is_read_like_torchrun_writes_it():
    assert distributed.from_environment({}) == Context(1, 0, 0)
    ctx = distributed.from_environment({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert (ctx.active, ctx.is_main, ctx.local_rank) == (True, False, 0)
    with pytest.raises(UserError, match="inconsistent"):
        distributed.from_environment({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(UserError, match="GPU of its LOCAL_RANK"):
        distributed.device_for(Context(2, 0, 0), "cuda:1")


def test_ddp_averages_gradients_of_one_and_of_several_backward_passes(tmp_path):
    """Each process's gradient equals the mean over both processes' batches, computed alone; weights stay equal.

    The second method makes one backward pass on rank 0 and three on rank 1,
    and uses a parameter on rank 1 only (and one nowhere), as min-max's
    recursive erasing can.
    """
    store = str(tmp_path / "store")
    distributed_support.start_two(distributed_support.check_steps, (2, store))
    for rank in range(2):
        result = json.loads((tmp_path / f"store.{rank}.json").read_text())
        for kind in ("one", "several"):
            assert result[kind] == {"missing": [], "extra": [], "max_error": 0.0, "same_weights": True}, (rank, kind)


def _two_processes(tmp_path, *argv: str) -> list[str]:
    """``wsolbench ARGV`` on two processes as torchrun starts them; returns each one's output.

    On the CPU (gloo): the suite hides GPUs (conftest.py), and the forked processes inherit that.
    """
    logs = str(tmp_path / "log")
    port = distributed_support.free_port()
    distributed_support.start_two(distributed_support.cli_as_rank, (2, port, list(argv), logs))
    return [open(f"{logs}.{rank}").read() for rank in range(2)]


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_two_process_run_equals_single_process_evaluation_of_its_checkpoint(tmp_path):
    pairs = [TINY[i:i + 2] for i in range(0, len(TINY), 2)]
    tiny = [a for pair in pairs if pair[1] not in ("eval.batch_size=8", "eval.pictures=0") for a in pair]
    out = tmp_path / "runs"
    logs = _two_processes(tmp_path, "run", "--method", "cam-avg", "-q", "--output-dir", str(out), "--run-name", "two",
                          *tiny, "--set", "eval.batch_size=3", "--set", "eval.pictures=3")
    assert "run directory:" in logs[0] and logs[1] == ""  # rank 0 alone speaks
    run = out / "two"
    assert sorted(p.name for p in out.iterdir()) == ["two"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["processes"] == 2
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0]
    assert (run / "overlays.png").is_file()  # pictures of images 0-2, scored on both processes

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process: CPU convolutions round by thread count
    try:
        main(["evaluate-run", str(run), "-q", "--output-dir", str(tmp_path / "again")])
    except SystemExit as exc:
        assert exc.code in (0, None)
    finally:
        torch.set_num_threads(threads)
    distributed_results = json.loads((run / "results.json").read_text())
    single = json.loads((tmp_path / "again" / "results.json").read_text())
    assert single["n_images"] == 8 and single["checkpoint"] == "best.pt"
    assert {k: distributed_results[k] for k in METRICS} == {k: single[k] for k in METRICS}
    assert _read_csv(run / "per_image.csv") == _read_csv(tmp_path / "again" / "per_image.csv")


def test_minmax_trains_on_two_processes(tmp_path):
    from wsolbench.plugin_host import registry

    if "minmax" not in registry("method").names():
        pytest.skip("the minmax method is not installed")
    _two_processes(tmp_path, "run", "--method", "minmax", "--pooling", "avg", "-q", "--output-dir", str(tmp_path),
                   "--run-name", "mm", *TINY, "--set", "method.u=3", "--set", "method.erase_start_epoch=0")
    rows = [json.loads(line) for line in (tmp_path / "mm" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train_erase_depth"] >= 1
    results = json.loads((tmp_path / "mm" / "results.json").read_text())
    assert results["n_images"] == 8 and 0 <= results["f1_pos"] <= 100
