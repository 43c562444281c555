"""Cost of the recursive erasing: time, throughput and peak memory of min-max with u = 4 against u = 0.

Settings of the issue (and of the reference implementation's measurement):
ResNet-18 from random weights, 224 px training crops, batch 8, a few epochs,
the paper's optimiser, the classifier on the half-resolution image. GlaS when
its dataset plug-in is installed and the data is found, else the synthetic
dataset at 224 px.

Time: both models are built from the same initial weights and trained on the
same batches, their steps interleaved (u = 0 then u = 4 on one batch, u = 4
then u = 0 on the next), so that a change in the machine's load touches both
alike; only the training steps are timed (the loader's workers prefetch).
Memory: each setting trains a few steps in its own process; the kernel's
resident-memory high-water mark is reset before training and read after.

    python benchmarks/minmax_erasing.py                       # GlaS if found, else synthetic
    python benchmarks/minmax_erasing.py --dataset synthetic --epochs 2
    python benchmarks/minmax_erasing.py --device cuda       # GPU: times after synchronisation,
                                                            # memory from the CUDA allocator's peak
    python benchmarks/minmax_erasing.py --device cuda --gpu-settings   # the issue's two settings,
        # ResNet-101 at 480 px and ResNet-18 at 224 px, batch 8, the full erasing batch without and
        # with CUDA graphs (method.cuda_graphs): ratio, mean depth and peak-memory ratio of each
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GLAS = REPO.parent / "shared" / "data" / "glas"

#: figures to compare with (method notes and the issue)
PAPER_RATIOS = {"GlaS": 1.84, "CUB5": 2.17}
REFERENCE = {"ratio": 2.70, "depth": 3.93, "u0_images_per_s": 4.3}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="auto", help="auto (glas when available, else synthetic), glas, synthetic")
    ap.add_argument("--data-root", default=str(GLAS), help="GlaS folder (default: ../shared/data/glas)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", type=int, default=224, help="training crop size (synthetic: the image size)")
    ap.add_argument("--n-train", type=int, default=67, help="synthetic training images (GlaS reference split: 67)")
    ap.add_argument("--u", type=int, default=4, help="erasing depth compared with u = 0")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--pooling", default=None, help="default: the method's (wildcat) when registered, else avg")
    ap.add_argument("--trust-mode", default="paper", choices=["paper", "reference"])
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="channels-last tensors (train.channels_last; faster convolutions on CPU too)")
    ap.add_argument("--classifier-batch", default="joint", choices=["joint", "separate"],
                    help="g on X+ and X- in one call or in two (method.classifier_batch)")
    ap.add_argument("--erase-batch", default="compact", choices=["compact", "full"],
                    help="stopped samples leave the erasing batch or stay (method.erase_batch)")
    ap.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=False,
                    help="f's erasing passes as CUDA graphs (method.cuda_graphs; needs --erase-batch full)")
    ap.add_argument("--gpu-settings", action="store_true",
                    help="run ResNet-101 480 px and ResNet-18 224 px (batch 8, --erase-batch full), each without "
                         "and with CUDA graphs, and print a summary")
    ap.add_argument("--memory-steps", type=int, default=3, help="training steps of each memory probe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (full precision on both)")
    ap.add_argument("--probe-memory", type=int, default=None, metavar="U", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what the memory probes are started with
    return args


def choose_dataset(args: argparse.Namespace) -> str:
    from wsolbench.plugin_host import registry

    if args.dataset != "auto":
        return args.dataset
    return "glas" if "glas" in registry("dataset").names() and Path(args.data_root).is_dir() else "synthetic"


def make_config(args: argparse.Namespace, dataset: str, u: int, workers: int):
    from wsolbench import config
    from wsolbench.plugin_host import registry

    pooling = args.pooling or ("wildcat" if "wildcat" in registry("pooling").names() else "avg")
    sets = [
        f"model.backbone={args.backbone}", "model.pretrained=false", f"model.pooling={pooling}",
        f"train.batch_size={args.batch_size}", f"train.epochs={args.epochs}", f"train.num_workers={workers}",
        f"method.u={u}", f"method.trust_mode={args.trust_mode}", f"seed={args.seed}", f"device={args.device}",
        f"method.classifier_batch={args.classifier_batch}", f"train.channels_last={str(args.channels_last).lower()}",
        f"method.erase_batch={args.erase_batch}", f"method.cuda_graphs={str(args.cuda_graphs).lower()}",
    ]
    dataset_keys = registry("dataset").resolve(dataset).defaults
    if dataset == "synthetic":
        sets += [f"dataset.image_size={args.crop}", f"dataset.n_train={args.n_train}"]
    elif "crop_size" in dataset_keys:
        sets.append(f"dataset.crop_size={args.crop}")
    else:
        print(f"note: dataset {dataset!r} has no crop_size setting; its paper-profile crops are used")
    root = args.data_root if dataset != "synthetic" else None
    return config.resolve("minmax", dataset, "paper", options={"data_root": root}, sets=sets)


def build(cfg, split=None):
    """``(method, optimizer, loader, split)`` on ``cfg.device``, weights drawn from ``cfg.seed``.

    The loader's order depends on the seed only, so two builds see the same batches.
    """
    import torch

    from wsolbench import assembly
    from wsolbench.training import engine
    from wsolbench.utils import seed_everything

    device = torch.device(cfg.device)
    dataset = assembly.build_dataset(cfg)
    if split is None:
        split = dataset.split("train")
        for i in range(len(split)):  # decode every image once, before the workers fork
            split[i]
    seed_everything(cfg.seed)
    method = assembly.build_method(cfg, dataset.num_classes).to(device)
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = engine.make_optimizer(method, cfg)
    loader = engine.make_loader(split, cfg, True, device)
    return method, optimizer, loader, split


def time_steps(args: argparse.Namespace, dataset: str) -> dict[int, dict[str, float]]:
    """Train both models on the same batches, their steps interleaved; seconds and logs per setting."""
    settings = (0, args.u)
    runs, split = {}, None
    for u in settings:
        cfg = make_config(args, dataset, u, args.workers)
        method, optimizer, loader, split = build(cfg, split)
        runs[u] = {"method": method, "optimizer": optimizer, "seconds": [0.0] * args.epochs, "logs": []}
    # one loader feeds both models: the same batches, loaded once
    warmup = prepare(next(iter(loader)), args)
    for r in runs.values():  # one untimed step each: lazy initialisation is not the method's cost
        r["method"].train()
        r["method"].training_step(warmup, lambda loss: loss.backward())
        r["method"].zero_grad(set_to_none=True)
    images = 0
    for epoch in range(args.epochs):
        for r in runs.values():
            r["method"].train()
            r["method"].on_epoch_start(epoch)
        for step, batch in enumerate(loader):
            batch = prepare(batch, args)
            order = settings if step % 2 == 0 else settings[::-1]  # neither always runs first
            for u in order:
                r = runs[u]
                sync(args)
                t0 = time.perf_counter()
                r["optimizer"].zero_grad(set_to_none=True)
                out = r["method"].training_step(batch, lambda loss: loss.backward())
                r["optimizer"].step()
                sync(args)
                r["seconds"][epoch] += time.perf_counter() - t0
                r["logs"].append({k: float(v) for k, v in out.logs.items()})
            images += len(batch["label"])
        print(
            f"epoch {epoch + 1}/{args.epochs}: "
            + "  ".join(f"u={u} {runs[u]['seconds'][epoch]:6.1f} s" for u in settings)
            + f"  u={args.u} so far: {mean_log(runs[args.u]['logs'], 'erase_depth'):.2f} passes per batch, "
            f"{mean_log(runs[args.u]['logs'], 'erase_passes'):.2f} per sample",
            flush=True,
        )
    ceiling = time_localizer_alone(runs[0]["method"], runs[0]["optimizer"], loader, args)
    out = {"ceiling": ceiling}
    for u in settings:
        r = runs[u]
        out[u] = {
            "seconds": sum(r["seconds"]),
            "seconds_after_first": sum(r["seconds"][1:]),
            "images_per_s": images / sum(r["seconds"]),
            "depth": mean_log(r["logs"], "erase_depth"),
            "passes": mean_log(r["logs"], "erase_passes"),
        }
    return out


def prepare(batch: dict, args: argparse.Namespace) -> dict:
    """The batch on ``--device``, its images channels-last when asked for."""
    import torch

    batch = {k: v.to(args.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    if args.channels_last:
        batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
    return batch


def on_gpu(args: argparse.Namespace) -> bool:
    return args.device.startswith("cuda")


def sync(args: argparse.Namespace) -> None:
    """Wait for the GPU's queued work, so that a timer read after it counts that work."""
    import torch

    if on_gpu(args):
        torch.cuda.synchronize(args.device)


def time_localizer_alone(method, optimizer, loader, args: argparse.Namespace) -> float:
    """Training images/s of the localizer's pass alone (forward, Eq.8, backward, step) for one epoch.

    Every u = 0 step does this pass and, on top of it, g's passes on X+ and
    X-: its images/s is a ceiling for the whole step's on this machine.
    """
    import torch.nn.functional as F

    seconds, images = 0.0, 0
    method.train()
    for batch in loader:
        batch = prepare(batch, args)
        sync(args)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        scores, _ = method.localizer(batch["image"])
        F.cross_entropy(scores, batch["label"]).backward()
        optimizer.step()
        sync(args)
        seconds += time.perf_counter() - t0
        images += len(batch["label"])
    return images / seconds


def mean_log(logs: list[dict[str, float]], key: str) -> float:
    return sum(x.get(key, 0.0) for x in logs) / max(len(logs), 1)


def probe_memory(args: argparse.Namespace, dataset: str) -> None:
    """Train ``--memory-steps`` steps with ``u = --probe-memory``; print resident memory before and at peak (JSON).

    The kernel's high-water mark is reset just before training
    (``/proc/self/clear_refs``), so the peak is that of the training steps,
    not of building the model or the data. On a GPU: the CUDA allocator's
    allocated bytes, its peak reset likewise.
    """
    import gc

    import torch

    cfg = make_config(args, dataset, args.probe_memory, workers=0)
    method, optimizer, loader, _ = build(cfg)
    method.train()
    gc.collect()
    if on_gpu(args):
        torch.cuda.reset_peak_memory_stats(args.device)
        before = torch.cuda.memory_allocated(args.device) // 1024
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = proc_status_kib("VmRSS")
    steps, depth = 0, 0.0
    while steps < args.memory_steps:
        for batch in loader:
            batch = prepare(batch, args)
            optimizer.zero_grad(set_to_none=True)
            out = method.training_step(batch, lambda loss: loss.backward())
            optimizer.step()
            steps += 1
            depth += float(out.logs.get("erase_depth", 0.0))
            if steps == args.memory_steps:
                break
    peak = torch.cuda.max_memory_allocated(args.device) // 1024 if on_gpu(args) else proc_status_kib("VmHWM")
    print(json.dumps({"before_kib": before, "peak_kib": peak, "depth": depth / steps}))


def proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(args: argparse.Namespace, dataset: str) -> dict[int, dict[str, float]]:
    out = {}
    for u in (0, args.u):
        cmd = [sys.executable, __file__, *args.argv, "--dataset", dataset, "--probe-memory", str(u)]
        # a fixed mmap threshold: freed tensors go back to the system, so resident memory follows live memory
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"memory probe u={u} failed:\n{proc.stderr}")
        out[u] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


#: the issue's two GPU settings: (backbone, crop), batch 8
GPU_SETTINGS = (("resnet101", 480), ("resnet18", 224))


def gpu_settings(argv: list[str]) -> None:
    """Each of :data:`GPU_SETTINGS` with the full erasing batch, without and with CUDA graphs; then a summary."""
    rest = [a for a in argv if a != "--gpu-settings"]
    rows = []
    for backbone, crop in GPU_SETTINGS:
        for graphs in (False, True):
            flags = ["--backbone", backbone, "--crop", str(crop), "--batch-size", "8", "--erase-batch", "full",
                     "--cuda-graphs" if graphs else "--no-cuda-graphs"]
            print(f"\n== {backbone}, {crop} px, batch 8, full erasing batch, CUDA graphs {'on' if graphs else 'off'}")
            summary = main(rest + flags)
            rows.append((backbone, crop, graphs, summary))
    print("\nsetting                      graphs  time u/0  mean depth  peak memory u/0")
    for backbone, crop, graphs, s in rows:
        print(f"{backbone:>10} {crop:>4} px batch 8      {'on ' if graphs else 'off'}    x{s['ratio']:.2f}"
              f"     {s['depth']:.2f}        x{s['peak']:.3f}")
    print(f"targets: under x{PAPER_RATIOS['GlaS']} (ResNet-101, 480 px), under x2 (ResNet-18, 224 px), "
          "peak memory <= x1.1")


def main(argv: list[str] | None = None) -> dict[str, float] | None:
    args = parse_args(argv)
    import torch

    if args.gpu_settings:
        gpu_settings(list(sys.argv[1:] if argv is None else argv))
        return None
    dataset = choose_dataset(args)
    if args.probe_memory is not None:
        probe_memory(args, dataset)
        return
    u = args.u
    print(
        f"min-max erasing cost: dataset {dataset}, {args.backbone} from random weights, {args.crop} px, "
        f"batch {args.batch_size}, {args.epochs} epochs, {args.workers} loader workers, trust_mode "
        f"{args.trust_mode}, classifier_batch {args.classifier_batch}, channels_last {args.channels_last}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, device {args.device}",
        flush=True,
    )
    timing = time_steps(args, dataset)
    memory = measure_memory(args, dataset)
    t0, tu = timing[0], timing[u]
    ratio = tu["seconds"] / t0["seconds"]
    steady = tu["seconds_after_first"] / t0["seconds_after_first"] if args.epochs > 1 else float("nan")
    peak = memory[u]["peak_kib"] / memory[0]["peak_kib"]
    growth0 = memory[0]["peak_kib"] - memory[0]["before_kib"]
    growth = (memory[u]["peak_kib"] - memory[u]["before_kib"]) / growth0 if growth0 > 0 else float("nan")
    print()
    print(f"training time u={u} / u=0         x{ratio:.2f}   (after the first epoch: x{steady:.2f})")
    print(f"  mean erasing depth reached       {tu['depth']:.2f} of {u} passes per batch, "
          f"{tu['passes']:.2f} passes per sample ({args.erase_batch} batch)")
    print(f"  paper: x{PAPER_RATIOS['GlaS']} (GlaS), x{PAPER_RATIOS['CUB5']} (CUB5); reference code here: "
          f"x{REFERENCE['ratio']} at depth {REFERENCE['depth']} of 4")
    print(f"u=0 training throughput            {t0['images_per_s']:.2f} images/s   "
          f"(x{t0['images_per_s'] / REFERENCE['u0_images_per_s']:.2f} the reference's {REFERENCE['u0_images_per_s']})")
    ceiling = timing["ceiling"]
    print(f"  ceiling: f's pass alone          {ceiling:.2f} images/s   (x{ceiling / REFERENCE['u0_images_per_s']:.2f} "
          f"the reference's; u=0 runs at x{t0['images_per_s'] / ceiling:.2f} of it, g's passes take the rest)")
    print(f"u={u} training throughput            {tu['images_per_s']:.2f} images/s")
    print(f"peak memory u={u} / u=0             x{peak:.3f}   ({memory[u]['peak_kib'] / 1024:.0f} / "
          f"{memory[0]['peak_kib'] / 1024:.0f} MiB {'allocated on the GPU' if on_gpu(args) else 'resident'})")
    print(f"  growth during training u={u} / u=0 x{growth:.3f}   ({args.memory_steps} steps each, own process)")
    return {"ratio": ratio, "depth": tu["depth"], "peak": peak}


if __name__ == "__main__":
    main()
