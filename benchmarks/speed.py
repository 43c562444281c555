"""Speed of wsolbench against bare loops, measured side by side in one process.

Prints, for one backbone, batch size and resolution:

1. training images/s of wsolbench's loop (``engine.train_one_epoch`` with the
   ``cam-avg`` method) against a bare timm loop (``timm.create_model(backbone,
   num_classes=K)``, SGD, cross-entropy), on the same batches, with the same
   optimizer settings, mixed precision and memory format (target: ratio >= 0.9);
2. evaluation images/s of ``engine.evaluate`` (class scores, maps, F1, PxAP),
   next to a bare timm forward pass over the same images (scores only);
3. metrics throughput: ``LocalizationAccumulator`` (per-image F1 plus PxAP
   histograms) against a straightforward NumPy implementation (per image:
   Dice from boolean masks, ``np.histogram`` of the foreground and background
   scores) on the same maps, with a check that both give identical values
   (target: ratio >= 3);
4. the cost of min-max's recursive erasing (training time and peak memory,
   u = 4 over u = 0), from ``benchmarks/minmax_erasing.py`` when the
   ``minmax`` method is installed.

Each comparison alternates its two sides (A, B, A, B, ...) so that a change in
the machine's load touches both, and reports medians. On a shared CPU the
process CPU time is steadier than the wall clock, so both are printed there;
on CUDA the figures are wall-clock time after synchronisation, with mixed
precision (bf16 where supported, else fp16 with a gradient scaler) and
channels-last on both sides.

    python benchmarks/speed.py                              # CPU: small defaults
    python benchmarks/speed.py --device cuda --batch-size 32 --size 224 --steps 20
    python benchmarks/speed.py --threads 1                  # one intra-op thread (shared machines)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wsolbench import assembly, config
from wsolbench.scoring.metrics import LocalizationAccumulator, histogram_metrics
from wsolbench.training import distributed, engine

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 32 on CUDA, 8 on the CPU")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels; default: 224 on CUDA, 96 on the CPU")
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="batches per timed pass; default: 20 on CUDA, 4 on the CPU")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes of each side (medians are reported)")
    ap.add_argument("--no-amp", dest="amp", action="store_false", help="full precision on CUDA")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--metric-images", type=int, default=64)
    ap.add_argument("--metric-size", type=int, default=224)
    ap.add_argument("--bins", type=int, default=1000)
    ap.add_argument("--minmax-epochs", type=int, default=2, help="epochs of the erasing benchmark")
    ap.add_argument("--minmax-size", type=int, default=None, help="its crops; default: 224 on CUDA, 64 on the CPU")
    ap.add_argument("--skip-minmax", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


# -- timing -------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def side_by_side(a: Callable[[], None], b: Callable[[], None], repeats: int, device: torch.device) -> dict:
    """Median wall and CPU seconds of ``a`` and ``b``, run alternately after one warm-up each."""
    times: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    for name, fn in (("a", a), ("b", b)):
        fn()
        sync(device)
    for _ in range(repeats):
        for name, fn in (("a", a), ("b", b)):
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for name, t in times.items()}


def report(title: str, label_a: str, label_b: str, images: int, t: dict, device: torch.device,
           target: str = "") -> None:
    """Print images/s of both sides and the ratio a/b of throughputs (wall, and CPU time on the CPU)."""
    (wa, ca), (wb, cb) = t["a"], t["b"]
    print(f"\n{title}")
    print(f"  {label_a:<38} {images / wa:10.1f} images/s" + (f"   ({images / ca:8.1f} per CPU-second)"
                                                           if device.type == "cpu" else ""))
    print(f"  {label_b:<38} {images / wb:10.1f} images/s" + (f"   ({images / cb:8.1f} per CPU-second)"
                                                           if device.type == "cpu" else ""))
    ratio = f"x{wb / wa:.2f} wall" + (f", x{cb / ca:.2f} CPU time" if device.type == "cpu" else "")
    print(f"  ratio {label_a.split(' (')[0]} / {label_b.split(' (')[0]}: {ratio}" + (f"   (target {target})" if target else ""))


# -- 1. training ----------------------------------------------------------------------
def make_config(args: argparse.Namespace, device: torch.device) -> config.RunConfig:
    sets = [
        f"model.backbone={args.backbone}", "model.pretrained=false", "model.output_stride=32",
        f"train.batch_size={args.batch_size}", f"eval.batch_size={args.batch_size}", "train.lr=0.01",
        f"train.channels_last={'true' if device.type == 'cuda' else 'false'}", f"train.amp={str(args.amp).lower()}",
        f"dataset.classes={args.classes}", f"seed={args.seed}",
    ]
    return config.resolve("cam-avg", "synthetic", "quick", options={"device": str(device)}, sets=sets)


def make_batches(args: argparse.Namespace, device: torch.device, n: int) -> list[dict]:
    g = torch.Generator().manual_seed(args.seed)
    batches = []
    for i in range(n):
        b = args.batch_size
        image = torch.randn(b, 3, args.size, args.size, generator=g)
        mask = (torch.rand(b, 1, args.size, args.size, generator=g) > 0.5).float()
        batch = {"image": image, "label": torch.randint(0, args.classes, (b,), generator=g),
                 "index": torch.arange(i * b, (i + 1) * b), "mask": mask}
        if device.type == "cuda":
            batch = {k: v.pin_memory() for k, v in batch.items()}
        batches.append(batch)
    return batches


def bare_model(args: argparse.Namespace, device: torch.device, channels_last: bool) -> torch.nn.Module:
    import timm

    torch.manual_seed(args.seed)
    model = timm.create_model(args.backbone, pretrained=False, num_classes=args.classes).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def training(args: argparse.Namespace, cfg: config.RunConfig, device: torch.device) -> None:
    from wsolbench.utils import seed_everything

    seed_everything(args.seed)
    method = assembly.build_method(cfg, args.classes).to(device)
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = engine.make_optimizer(method, cfg)
    precision = engine.Precision.choose(device, cfg.train.amp)
    batches = make_batches(args, device, args.steps)

    model = bare_model(args, device, cfg.train.channels_last)
    t = cfg.train
    bare_opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov,
                               weight_decay=t.weight_decay)
    bare_precision = engine.Precision.choose(device, cfg.train.amp)  # its own grad scaler, same dtype
    autocast = (torch.autocast(device.type, dtype=bare_precision.dtype) if bare_precision.dtype is not None
                else None)

    def wsolbench_loop() -> None:
        engine.train_one_epoch(method, batches, optimizer, precision, cfg, epoch=0)

    def bare_loop() -> None:
        model.train()
        for batch in batches:
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            if cfg.train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            bare_opt.zero_grad(set_to_none=True)
            if autocast is not None:
                with torch.autocast(device.type, dtype=bare_precision.dtype):
                    loss = F.cross_entropy(model(images).float(), labels)
            else:
                loss = F.cross_entropy(model(images).float(), labels)
            if bare_precision.scaler is not None:
                bare_precision.scaler.scale(loss).backward()
                bare_precision.scaler.step(bare_opt)
                bare_precision.scaler.update()
            else:
                loss.backward()
                bare_opt.step()

    t_ = side_by_side(wsolbench_loop, bare_loop, args.repeats, device)
    report("1. training", "wsolbench loop (cam-avg)", f"bare timm loop ({args.backbone})",
           args.steps * args.batch_size, t_, device, target=">= 0.90")


# -- 2. evaluation --------------------------------------------------------------------
def evaluation(args: argparse.Namespace, cfg: config.RunConfig, device: torch.device) -> None:
    from wsolbench.utils import seed_everything

    seed_everything(args.seed)
    method = assembly.build_method(cfg, args.classes).to(device)
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    precision = engine.Precision.choose(device, cfg.train.amp)
    batches = []
    for raw in make_batches(args, device, args.steps):
        n = raw["image"].shape[0]
        batches.append({"image": raw["image"], "label": raw["label"], "index": raw["index"],
                        "sizes": [(args.size, args.size)] * n, "masks": list(raw["mask"])})
    model = bare_model(args, device, cfg.train.channels_last).eval()

    def wsolbench_eval() -> None:
        engine.evaluate(method, batches, precision, cfg, localization=True)

    def bare_forward() -> None:
        with torch.no_grad(), precision.autocast():
            for batch in batches:
                images = batch["image"].to(device, non_blocking=True)
                if cfg.train.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                model(images)

    t = side_by_side(wsolbench_eval, bare_forward, args.repeats, device)
    report("2. evaluation", "wsolbench evaluate (maps + F1, PxAP)", "bare timm forward (scores only)",
           args.steps * args.batch_size, t, device)


# -- 3. metrics -----------------------------------------------------------------------
def numpy_metrics(maps: np.ndarray, masks: np.ndarray, bins: int, threshold: float = 0.5) -> dict:
    """The straightforward way: a loop over images, NumPy Dice and ``np.histogram`` per image."""
    f1_pos, f1_neg = [], []
    hist_fg = np.zeros(bins + 1, np.int64)
    hist_bg = np.zeros(bins + 1, np.int64)
    for m, mask in zip(maps, masks):
        gt = mask >= 0.5
        pred = m >= threshold
        for out, p, g in ((f1_pos, pred, gt), (f1_neg, ~pred, ~gt)):
            total = p.sum() + g.sum()
            out.append(100.0 * (2.0 * np.logical_and(p, g).sum() / total if total else 1.0))
        binned = np.floor(np.clip(m, 0, 1) * np.float32(bins))  # bin j holds [j/bins, (j+1)/bins); 1 alone in bin bins
        hist_fg += np.histogram(binned[gt], bins=bins + 1, range=(0, bins + 1))[0]
        hist_bg += np.histogram(binned[~gt], bins=bins + 1, range=(0, bins + 1))[0]
    tp = np.cumsum(hist_fg[::-1]).astype(np.float64)
    fp = np.cumsum(hist_bg[::-1]).astype(np.float64)
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    recall = tp / tp[-1]
    pxap = 100.0 * float(np.cumsum(precision * np.diff(recall, prepend=0.0))[-1])  # summed in order
    return {"f1_pos": np.array(f1_pos), "f1_neg": np.array(f1_neg), "hist_fg": hist_fg, "hist_bg": hist_bg,
            "pxap": pxap}


def smooth_maps(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps in [0, 1] and masks with some agreement: blurred noise, thresholded for the masks."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, max(size // 16, 2), max(size // 16, 2), generator=g)
    field = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    masks = (field > 0.55).float()
    maps = (0.7 * field + 0.3 * torch.rand(n, size, size, generator=g)).clamp(0, 1)
    maps[:, 0, 0] = 1.0  # exact ones, which have their own bin
    return maps, masks


def metrics(args: argparse.Namespace, device: torch.device) -> None:
    maps, masks = smooth_maps(args.metric_images, args.metric_size, args.seed)
    maps_np, masks_np = maps.numpy(), masks.numpy()
    maps_d, masks_d = maps.to(device), masks.to(device)
    chunk = 32

    def ours() -> LocalizationAccumulator:
        acc = LocalizationAccumulator(bins=args.bins)
        for i in range(0, len(maps_d), chunk):
            acc.update(maps_d[i:i + chunk], masks_d[i:i + chunk])
        return acc

    t = side_by_side(lambda: ours().compute(), lambda: numpy_metrics(maps_np, masks_np, args.bins), args.repeats,
                     device)
    report("3. metrics (per-image F1 + PxAP histograms)", "LocalizationAccumulator",
           "NumPy (per image, np.histogram)", args.metric_images, t, device, target=">= 3")
    acc, ref = ours(), numpy_metrics(maps_np, masks_np, args.bins)
    got = acc.compute()
    same = {
        "per-image F1+": np.array_equal(torch.cat(acc.f1_pos).cpu().numpy(), ref["f1_pos"]),
        "per-image F1-": np.array_equal(torch.cat(acc.f1_neg).cpu().numpy(), ref["f1_neg"]),
        "histograms": np.array_equal(acc.hist_fg.cpu().numpy(), ref["hist_fg"])
        and np.array_equal(acc.hist_bg.cpu().numpy(), ref["hist_bg"]),
        "mean F1+": got["f1_pos"] == float(np.mean(ref["f1_pos"])),
        "mean F1-": got["f1_neg"] == float(np.mean(ref["f1_neg"])),
        "PxAP": got["pxap"] == ref["pxap"],
    }
    print("  identical values: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()))
    if not (same["mean F1+"] and same["mean F1-"] and same["PxAP"]):
        print(f"  differences: F1+ {abs(got['f1_pos'] - np.mean(ref['f1_pos'])):.2e}, "
              f"F1- {abs(got['f1_neg'] - np.mean(ref['f1_neg'])):.2e}, PxAP {abs(got['pxap'] - ref['pxap']):.2e}")
    assert histogram_metrics(acc.hist_fg, acc.hist_bg)["pxap"] == got["pxap"]


# -- 4. min-max erasing ----------------------------------------------------------------
def minmax(args: argparse.Namespace, device: torch.device) -> None:
    from wsolbench.plugin_host import registry

    print("\n4. min-max recursive erasing (u = 4 over u = 0)")
    script = HERE / "minmax_erasing.py"
    if "minmax" not in registry("method").names() or not script.is_file():
        print("  skipped: the minmax method or benchmarks/minmax_erasing.py is not installed")
        return
    size = args.minmax_size or (224 if device.type == "cuda" else 64)
    cmd = [sys.executable, str(script), "--dataset", "synthetic", "--epochs", str(args.minmax_epochs), "--crop",
           str(size), "--backbone", args.backbone, "--workers", "0", "--seed", str(args.seed)]
    print(f"  {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = proc.stdout.rstrip().splitlines()
    blank = max((i for i, line in enumerate(lines) if not line.strip()), default=None)
    if proc.returncode != 0 or blank is None:
        print("  the erasing benchmark did not finish:")
        print("\n".join("    " + line for line in (proc.stdout + proc.stderr).splitlines()[-15:]))
        return
    print("\n".join("  " + line for line in lines[blank + 1:]))  # its summary: the lines after the last blank one


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = distributed.select_device(args.device)
    cuda = device.type == "cuda"
    args.batch_size = args.batch_size or (32 if cuda else 8)
    args.size = args.size or (224 if cuda else 96)
    args.steps = args.steps or (20 if cuda else 4)
    cfg = make_config(args, device)
    precision = engine.Precision.choose(device, cfg.train.amp)
    amp = {None: "off (full precision)", torch.bfloat16: "bf16", torch.float16: "fp16 + grad scaler"}[precision.dtype]
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"wsolbench speed: {where}; torch {torch.__version__}; {args.backbone} from random weights, "
          f"batch {args.batch_size}, {args.size} px, {args.steps} batches per pass, {args.repeats} passes; "
          f"mixed precision {amp}; channels-last {'on' if cfg.train.channels_last else 'off'}")
    training(args, cfg, device)
    evaluation(args, cfg, device)
    metrics(args, device)
    if not args.skip_minmax:
        minmax(args, device)
    if cuda:
        print(f"\npeak CUDA memory of this process: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
