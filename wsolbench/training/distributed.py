"""One run on several processes: ``torchrun --nproc_per_node=N -m wsolbench run ...``.

torchrun starts N copies of the command with ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` set; :func:`start` joins them in one process group (NCCL on
CUDA, each process on the GPU of its ``LOCAL_RANK``; Gloo on the CPU). Then:

Training
    :class:`~torch.nn.parallel.DistributedDataParallel` averages the
    gradients; each process trains on its share of every epoch
    (:class:`~torch.utils.data.DistributedSampler`, reshuffled each epoch), so
    ``train.batch_size`` is per process and the effective batch is N times
    larger. Random augmentations are seeded per process and per epoch. On CUDA
    the BatchNorm layers become :class:`~torch.nn.SyncBatchNorm`; on the CPU
    (Gloo) SyncBatchNorm does not run, so each process normalises its own batch
    and DDP copies rank 0's running statistics to the others at each step.

Methods that override ``training_step``
    Their backward passes (several per batch, their number possibly depending
    on the data, as in min-max's recursive erasing) accumulate gradients
    locally under ``no_sync``; then one backward pass of a zero loss over the
    parameters that received a gradient makes DDP average the accumulated
    gradients. DDP runs with ``find_unused_parameters`` for them, so a
    parameter that only some processes used is averaged too, and one that no
    process used keeps no gradient, as in a single process. (Methods with the
    default step must use every trainable parameter in ``training_loss``: DDP
    then runs without that search, and the first step checks it.) These methods keep per-process
    BatchNorm even on CUDA: SyncBatchNorm communicates in every forward pass,
    which needs the same number of passes on every process.

Evaluation
    The evaluation loader's batches are the ones a single process would make
    (same images together, same padding); process ``r`` takes batches
    ``r, r + N, ...``, so no image is seen twice and none is padded in. Per-image
    scores, logits and labels are gathered and put back in image order, and the
    histograms summed, so every metric, ``results.json`` and ``per_image.csv``
    equal those of one process evaluating the same checkpoint.

Files
    Only rank 0 writes the run directory (its path is broadcast to the others),
    prints progress and results, and loads checkpoints; model states reach the
    other processes by broadcast, so the run directory need not be on a shared
    file system (except to resume a run: see :func:`wsolbench.training.runner.resume`).

This module holds the process-group primitives; the run's use of them is in
:mod:`wsolbench.training.runner`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from wsolbench.errors import UserError
from wsolbench.interfaces import Method
from wsolbench.utils import seed_everything


class DistributedError(UserError):
    """A multi-process launch that cannot work as set up."""


@dataclass(frozen=True)
class Context:
    """This process's place among the processes of one run (one process: the defaults)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (no-ops in a single process) ---------------------------------
    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process (any picklable object)."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order, on every process."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Sums over the processes of named numbers (a key missing on a process counts 0)."""
        if not self.active:
            return values
        total: dict[str, float] = {}
        for part in self.gather(values):
            for key, value in part.items():
                total[key] = total.get(key, 0) + value
        return total

    def broadcast_module(self, module: Any) -> None:
        """Give every process rank 0's parameters and buffers."""
        if not self.active:
            return
        with torch.no_grad():
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    # -- data -----------------------------------------------------------------------
    def loader_sampling(self, size: int, batch_size: int, train: bool, seed: int) -> dict[str, Any]:
        """The DataLoader arguments that choose this process's items of a split of ``size`` items."""
        if not self.active:
            return {"batch_size": batch_size, "shuffle": train, "drop_last": train and size > batch_size}
        if train:
            sampler = DistributedSampler(
                range(size), num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed
            )
            return {"batch_size": batch_size, "sampler": sampler, "drop_last": len(sampler) > batch_size}
        return {"batch_sampler": shard_batches(size, batch_size, self.rank, self.world_size)}

    def start_epoch(self, loader: Any, seed: int, epoch: int) -> None:
        """Reshuffle the training shards and seed this process's augmentations for ``epoch``."""
        if not self.active:
            return
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        state = np.random.SeedSequence([seed % 2**64, epoch, self.rank]).generate_state(1, dtype=np.uint64)
        seed_everything(int(state[0]))

    # -- evaluation -------------------------------------------------------------------
    def collect(
        self, index: Any, per_image: dict[str, Any], totals: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """All processes' per-image tensors in image order, and their ``totals`` summed.

        ``index`` gives each row's position in the split. Everything comes back
        on the CPU, also in a single process, so that the metrics computed from
        it are the same numbers whatever the number of processes.
        """
        def cpu(t: Any) -> Any:
            return t.detach().cpu() if t is not None else None

        local = ({k: cpu(v) for k, v in per_image.items()}, {k: cpu(v) for k, v in (totals or {}).items()})
        parts = self.gather((cpu(index), *local))

        def cat(tensors: list[Any]) -> Any:  # a process without images has empty tensors of no dtype
            return torch.cat([t for t in tensors if t.numel()] or tensors)

        order_index = cat([p[0] for p in parts])
        order = torch.argsort(order_index, stable=True)
        rows = {k: cat([p[1][k] for p in parts])[order] for k in per_image}
        summed: dict[str, Any] = {}
        for key in totals or {}:
            present = [p[2][key] for p in parts if p[2][key] is not None]
            summed[key] = None if not present else sum(present[1:], present[0].clone())
        return order_index[order], rows, summed


SINGLE = Context()


def shard_batches(size: int, batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """Batches ``rank, rank + world_size, ...`` of the sequential batches of ``range(size)``."""
    batches = [list(range(i, min(i + batch_size, size))) for i in range(0, size, batch_size)]
    return batches[rank::world_size]


def from_environment(environ: dict[str, str] | None = None) -> Context:
    """The context torchrun describes in ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (one process without them)."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise DistributedError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers: {exc}") from exc
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistributedError(f"inconsistent WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local}")
    return Context(world, rank, local)


def select_device(name: str) -> torch.device:
    """The device a single process uses for ``--device name`` (``auto``: CUDA when present)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
    return torch.device(name)


def device_for(ctx: Context, name: str) -> Any:
    """The device of this process: ``auto``/``cuda`` become the GPU of ``LOCAL_RANK`` when distributed."""
    if not ctx.active or name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return select_device(name)
    if name not in ("auto", "cuda"):
        raise DistributedError(
            f"--device {name} names one GPU, but under torchrun each process uses the GPU of its LOCAL_RANK; "
            f"use --device cuda (or auto)"
        )
    if not torch.cuda.is_available():
        raise DistributedError("--device cuda was asked for but CUDA is not available here; use --device cpu")
    count = torch.cuda.device_count()
    if ctx.local_rank >= count:
        raise DistributedError(
            f"process with LOCAL_RANK {ctx.local_rank} has no GPU: this machine has {count}; start at most "
            f"{count} processes per node (torchrun --nproc_per_node={count})"
        )
    torch.cuda.set_device(ctx.local_rank)
    return torch.device("cuda", ctx.local_rank)


@contextlib.contextmanager
def session(device_name: str) -> Iterator[tuple[Context, Any]]:
    """Join the process group torchrun set up (if any) for the block; yields ``(context, device)``."""
    ctx = from_environment()
    if not ctx.active:
        yield ctx, device_for(ctx, device_name)
        return
    if not dist.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed; run a single process")
    device = device_for(ctx, device_name)
    if dist.is_initialized():  # a caller already joined the group: use it, leave it to the caller
        yield ctx, device
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        if device.type == "cuda":
            dist.init_process_group(backend, device_id=device)
        else:
            dist.init_process_group(backend)
    except (ValueError, RuntimeError) as exc:
        raise DistributedError(
            f"WORLD_SIZE={ctx.world_size} is set but the process group cannot start ({exc}). Start the "
            f"processes with torchrun: torchrun --nproc_per_node=N -m wsolbench run ..."
        ) from exc
    try:
        yield ctx, device
    finally:
        with contextlib.suppress(Exception):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dist.destroy_process_group()


# -- training -----------------------------------------------------------------------
def overrides_training_step(method: Any) -> bool:
    return type(method).training_step is not Method.training_step


def prepare_model(method: Any, ctx: Context, device: Any) -> Any:
    """SyncBatchNorm on CUDA for methods with the default training step (see the module docstring)."""
    if ctx.active and device.type == "cuda" and not overrides_training_step(method):
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    return method


class _Holder(nn.Module):
    """Holds the method so that DDP sees its parameters; runs a given function as its forward."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


def _zero_loss(method: Any) -> Any:
    """``0 * sum(p)`` over the parameters holding a gradient: backward adds nothing, DDP averages them."""
    params = [p for p in method.parameters() if p.requires_grad]
    used = [p for p in params if p.grad is not None] or params[:1]
    return sum((p * 0).sum() for p in used)


TrainStep = Callable[[dict[str, Any], Callable[[Any], None]], Any]


def training_step(method: Any, ctx: Context, device: Any) -> TrainStep:
    """``step(batch, backward) -> StepOutput``: the method's step, with gradients averaged when distributed."""
    if not ctx.active:
        return method.training_step
    several_backwards = overrides_training_step(method)
    ddp = DistributedDataParallel(
        _Holder(method),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=several_backwards,
    )
    if several_backwards:

        def accumulate_then_average(batch: dict[str, Any], backward: Callable[[Any], None]) -> Any:
            with ddp.no_sync():
                out = ddp(method.training_step, batch, backward)
            ddp(_zero_loss, method).backward()
            return out

        return accumulate_then_average

    checked = False

    def one_backward(batch: dict[str, Any], backward: Callable[[Any], None]) -> Any:
        nonlocal checked
        out = ddp(method.training_loss, batch)
        backward(out.loss)
        if not checked:  # DDP without unused-parameter detection would leave such gradients unaveraged
            unused = [name for name, p in method.named_parameters() if p.requires_grad and p.grad is None]
            if unused:
                raise DistributedError(
                    f"method {type(method).__name__} leaves parameters out of its training loss "
                    f"({', '.join(unused[:4])}{' ...' if len(unused) > 4 else ''}); across processes a method must "
                    f"use every trainable parameter in training_loss, or override training_step"
                )
            checked = True
        return out

    return one_backward
