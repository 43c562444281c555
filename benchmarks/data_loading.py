"""Does data loading keep up with training? Loader time per batch vs. one training step, side by side.

Measures, for one dataset and profile, the time to produce a training batch
(decode + transforms) with and without the in-memory cache and with DataLoader
worker processes, next to the time of one training step of the method on such
a batch, and prints each loader time as a ratio of the step time (below 1: the
loader keeps up; with workers, loading overlaps the step).

    python benchmarks/data_loading.py --dataset glas --data-root ../shared/data/glas --profile quick
    python benchmarks/data_loading.py --dataset cub5 --data-root DATA/cub --profile paper --workers 4
"""

from __future__ import annotations

import argparse
import time

import torch

from wsolbench import assembly, config
from wsolbench.training import distributed, engine


def loader_seconds_per_batch(split, cfg, device, workers: int, batches: int) -> float:
    cfg.train.num_workers = workers
    loader = engine.make_loader(split, cfg, True, device)
    it = iter(loader)
    next(it)  # workers start, first batch
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            next(it)
        n += 1
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="glas")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--profile", default="quick", choices=["quick", "paper"])
    parser.add_argument("--method", default="cam-avg")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()

    cfg = config.resolve(args.method, args.dataset, args.profile, options={"data_root": args.data_root},
                         sets=args.sets)
    device = distributed.select_device(cfg.device)
    dataset = assembly.build_dataset(cfg)
    method = assembly.build_method(cfg, dataset.num_classes).to(device)
    optimizer = engine.make_optimizer(method, cfg)
    split = dataset.split("train")
    print(f"{args.dataset} ({args.profile}): {len(split)} training images, batch {cfg.train.batch_size}, "
          f"device {device}, torch threads {torch.get_num_threads()}")

    cached = getattr(split, "cache", None) is not None
    if cached:
        split.cache = None  # measure decoding first
    cold = loader_seconds_per_batch(split, cfg, device, 0, args.batches)
    rows = [("decode + transform, main process", cold)]
    if cached:
        split.cache = {}
        for i in range(len(split)):
            split.raw(i)
        rows.append(("cached decoded images, main process", loader_seconds_per_batch(split, cfg, device, 0,
                                                                                     args.batches)))
        split.cache = None
    if args.workers:
        rows.append((f"decode + transform, {args.workers} workers",
                     loader_seconds_per_batch(split, cfg, device, args.workers, args.batches)))

    batch = next(iter(engine.make_loader(split, cfg, True, device)))
    batch = engine.to_device(batch, device, ("image", "label", "index", "mask"))
    method.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        method.training_step(batch, lambda loss: loss.backward())
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    step_s = (time.perf_counter() - t0) / 3
    print(f"{'training step':<40} {step_s * 1000:9.1f} ms")
    for name, seconds in rows:
        print(f"{name:<40} {seconds * 1000:9.1f} ms   loader / step = {seconds / step_s:5.2f}")


if __name__ == "__main__":
    main()
