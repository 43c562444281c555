"""Workers for the two-process Gloo tests (importable by the spawned processes)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from wsolbench.interfaces import Method, StepOutput


class OneLoss(Method):
    """Cross-entropy of a small network: the default training step (one backward pass)."""

    def __init__(self, num_classes: int = 3, model=None):
        super().__init__(num_classes, model)
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, num_classes)

    def training_loss(self, batch):
        logits = self.head(self.body(batch["image"]))
        loss = F.cross_entropy(logits, batch["label"])
        return StepOutput(loss, {"loss": loss.detach()}, logits.detach())


class SeveralBackwards(OneLoss):
    """Like min-max: a head trained in a data-dependent number of passes, each with its own backward.

    Rank ``r`` makes ``r + 1`` passes of ``aux``; ``rare`` is used on rank 1
    only and ``never`` by nobody, so their gradients must be averaged from one
    process and left empty, respectively.
    """

    def __init__(self, num_classes: int = 3, model=None):
        super().__init__(num_classes, model)
        self.aux = nn.Linear(8, num_classes)
        self.rare = nn.Linear(8, num_classes)
        self.never = nn.Linear(8, num_classes)

    def training_step(self, batch, backward):
        x, y = batch["image"], batch["label"]
        passes = int(batch["passes"])
        for t in range(passes):
            backward(F.cross_entropy(self.aux(self.body(x * (t + 1))), y) / passes)
        if passes > 1:
            backward(F.cross_entropy(self.rare(self.body(x)), y))
        out = self.training_loss(batch)
        backward(out.loss)
        return out


def batch_of(rank: int) -> dict:
    g = torch.Generator().manual_seed(100 + rank)
    return {"image": torch.randn(6, 4, generator=g), "label": torch.randint(0, 3, (6,), generator=g),
            "passes": torch.tensor(rank + 1)}


def reference_gradients(method: Method, world: int) -> dict:
    """The average over the processes' batches of one process's gradients, computed alone."""
    total: dict = {}
    for rank in range(world):
        alone = copy.deepcopy(method)
        alone.train()
        alone.zero_grad(set_to_none=True)
        alone.training_step(batch_of(rank), lambda loss: loss.backward())
        for name, p in alone.named_parameters():
            if p.grad is not None:
                total[name] = total.get(name, 0) + p.grad / world
    return total


def check_steps(rank: int, world: int, store: str) -> None:
    """One optimizer step of each method under DDP; writes ``<store>.<rank>.json``: are gradients and weights right?"""
    import json

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    result = {}
    try:
        for kind, cls in (("one", OneLoss), ("several", SeveralBackwards)):
            result[kind] = _one_step(cls(), rank, world)
        with open(f"{store}.{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def _one_step(method: Method, rank: int, world: int) -> dict:
    from wsolbench.training import distributed

    expected = reference_gradients(method, world)
    ctx = distributed.Context(world, rank, rank)
    step = distributed.training_step(method, ctx, torch.device("cpu"))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    method.train()
    optimizer.zero_grad(set_to_none=True)
    step(batch_of(rank), lambda loss: loss.backward())
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in method.named_parameters()}
    optimizer.step()
    weights = [p.detach().clone() for p in method.parameters()]
    everyone = ctx.gather(weights)
    return {
        "missing": sorted(n for n in expected if grads[n] is None),
        "extra": sorted(n for n, g in grads.items() if g is not None and n not in expected),
        "max_error": max(float((grads[n] - g).abs().max()) for n, g in expected.items() if grads[n] is not None),
        "same_weights": all(torch.equal(a, b) for a, b in zip(everyone[0], everyone[1])),
    }


def start_two(fn, args: tuple, timeout: float = 300) -> None:
    """``fn(rank, *args)`` in two forked processes; fails (and stops them) if they take over ``timeout`` seconds."""
    import time

    import torch.multiprocessing as mp

    context = mp.start_processes(fn, args=args, nprocs=2, join=False, start_method="fork")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            raise TimeoutError(f"{fn.__name__} did not finish within {timeout} s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_as_rank(rank: int, world: int, port: int, argv: list, logs: str) -> None:
    """``wsolbench ARGV`` as process ``rank`` of a torchrun launch (its environment), output in ``<logs>.<rank>``.

    Started by forking the test process, so nothing is imported again.
    """
    import os
    import sys

    from wsolbench.cli import main

    torch.set_num_threads(1)  # torchrun's OMP_NUM_THREADS=1
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with open(f"{logs}.{rank}", "w", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        try:
            main(argv)
        except SystemExit as exc:
            if exc.code:
                raise
