"""Cost of the recursive erasing: time, throughput and peak memory of min-max with u = 4 against u = 0.

Settings of the issue (and of the reference implementation's measurement):
ResNet-18 from random weights, 224 px training crops, batch 8, a few epochs,
the paper's optimiser, the classifier on the half-resolution image. GlaS when
its dataset plug-in is installed and the data is found, else the synthetic
dataset at 224 px.

Time: both models are built from the same initial weights and trained on the
same batches, their epochs interleaved (u = 0, u = 4, u = 0, ...) so that a
change in the machine's load touches both. Memory: each setting trains a few
steps in its own process, whose peak resident memory (``ru_maxrss``) is read
before and after training.

    python benchmarks/minmax_erasing.py                       # GlaS if found, else synthetic
    python benchmarks/minmax_erasing.py --dataset synthetic --epochs 2
"""

from __future__ import annotations

import argparse
import json
import resource
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
    ap.add_argument("--memory-steps", type=int, default=3, help="training steps of each memory probe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probe-memory", type=int, default=None, metavar="U", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def choose_dataset(args: argparse.Namespace) -> str:
    from wsolbench.plugins import registry

    if args.dataset != "auto":
        return args.dataset
    return "glas" if "glas" in registry("dataset").names() and Path(args.data_root).is_dir() else "synthetic"


def make_config(args: argparse.Namespace, dataset: str, u: int, workers: int):
    from wsolbench import config
    from wsolbench.plugins import registry

    pooling = args.pooling or ("wildcat" if "wildcat" in registry("pooling").names() else "avg")
    sets = [
        f"model.backbone={args.backbone}", "model.pretrained=false", f"model.pooling={pooling}",
        f"train.batch_size={args.batch_size}", f"train.epochs={args.epochs}", f"train.num_workers={workers}",
        f"method.u={u}", f"method.trust_mode={args.trust_mode}", f"seed={args.seed}", "device=cpu",
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
    """``(method, optimizer, loader, split)`` on the CPU, weights drawn from ``cfg.seed``."""
    import torch

    from wsolbench import engine
    from wsolbench.utils import seed_everything

    device = torch.device("cpu")
    dataset = engine.build_dataset(cfg)
    if split is None:
        split = dataset.split("train")
        for i in range(len(split)):  # decode every image once, before the workers fork
            split[i]
    seed_everything(cfg.seed)
    method = engine.build_method(cfg, dataset.num_classes).to(device)
    optimizer = engine.make_optimizer(method, cfg)
    loader = engine.make_loader(split, cfg, True, device)
    return method, optimizer, loader, split


def time_epochs(args: argparse.Namespace, dataset: str) -> dict[int, dict[str, float]]:
    import torch

    from wsolbench import engine

    settings = (0, args.u)
    runs, split = {}, None
    for u in settings:
        cfg = make_config(args, dataset, u, args.workers)
        method, optimizer, loader, split = build(cfg, split)
        runs[u] = {"cfg": cfg, "method": method, "optimizer": optimizer, "loader": loader, "seconds": [], "logs": []}
    precision = engine.Precision.choose(torch.device("cpu"), amp=False)
    images_per_epoch = len(runs[0]["loader"]) * args.batch_size
    for epoch in range(args.epochs):
        for u in settings:
            r = runs[u]
            t0 = time.perf_counter()
            logs = engine.train_one_epoch(r["method"], r["loader"], r["optimizer"], precision, r["cfg"], epoch)
            r["seconds"].append(time.perf_counter() - t0)
            r["logs"].append(logs)
            print(
                f"epoch {epoch + 1}/{args.epochs}  u={u}: {r['seconds'][-1]:7.1f} s  "
                f"{images_per_epoch / r['seconds'][-1]:5.2f} images/s  depth {logs.get('train_erase_depth', 0):.2f}  "
                f"passes/sample {logs.get('train_erase_passes', 0):.2f}  loss {logs['train_loss']:.3f}",
                flush=True,
            )
    out = {}
    for u in settings:
        r = runs[u]
        out[u] = {
            "seconds": sum(r["seconds"]),
            "seconds_after_first": sum(r["seconds"][1:]),
            "images_per_s": images_per_epoch * len(r["seconds"]) / sum(r["seconds"]),
            "depth": sum(x.get("train_erase_depth", 0.0) for x in r["logs"]) / len(r["logs"]),
            "passes": sum(x.get("train_erase_passes", 0.0) for x in r["logs"]) / len(r["logs"]),
        }
    return out


def probe_memory(args: argparse.Namespace, dataset: str) -> None:
    """Train ``--memory-steps`` steps with ``u = --probe-memory``; print peak RSS before/after as JSON."""
    import torch

    from wsolbench import engine

    cfg = make_config(args, dataset, args.probe_memory, workers=0)
    method, optimizer, loader, _ = build(cfg)
    method.train()
    precision = engine.Precision.choose(torch.device("cpu"), amp=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    steps = 0
    while steps < args.memory_steps:
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                out = method.training_step(batch, lambda loss: loss.backward())
            optimizer.step()
            steps += 1
            if steps == args.memory_steps:
                break
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kib": before, "peak_kib": after, "depth": float(out.logs.get("erase_depth", 0))}))


def measure_memory(args: argparse.Namespace, dataset: str) -> dict[int, dict[str, float]]:
    out = {}
    for u in (0, args.u):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--dataset", dataset, "--probe-memory", str(u)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"memory probe u={u} failed:\n{proc.stderr}")
        out[u] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    dataset = choose_dataset(args)
    if args.probe_memory is not None:
        probe_memory(args, dataset)
        return
    u = args.u
    print(
        f"min-max erasing cost: dataset {dataset}, {args.backbone} from random weights, {args.crop} px, "
        f"batch {args.batch_size}, {args.epochs} epochs, {args.workers} loader workers, trust_mode "
        f"{args.trust_mode}, torch {torch.__version__} with {torch.get_num_threads()} threads",
        flush=True,
    )
    timing = time_epochs(args, dataset)
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
          f"{tu['passes']:.2f} passes per sample (compacted)")
    print(f"  paper: x{PAPER_RATIOS['GlaS']} (GlaS), x{PAPER_RATIOS['CUB5']} (CUB5); reference code here: "
          f"x{REFERENCE['ratio']} at depth {REFERENCE['depth']} of 4")
    print(f"u=0 training throughput            {t0['images_per_s']:.2f} images/s   "
          f"(x{t0['images_per_s'] / REFERENCE['u0_images_per_s']:.2f} the reference's {REFERENCE['u0_images_per_s']})")
    print(f"u={u} training throughput            {tu['images_per_s']:.2f} images/s")
    print(f"peak memory u={u} / u=0             x{peak:.3f}   ({memory[u]['peak_kib'] / 1024:.0f} / "
          f"{memory[0]['peak_kib'] / 1024:.0f} MiB resident)")
    print(f"  growth during training u={u} / u=0 x{growth:.3f}   ({args.memory_steps} steps each, own process)")


if __name__ == "__main__":
    main()
