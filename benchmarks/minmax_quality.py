"""Localization quality of min-max (u = 0 and u = 4) against CAM-Avg and Deep MIL on the synthetic dataset.

Every method gets the same training budget: the same data, backbone, epochs,
batch size, optimiser and seeds (the ``quick`` profile unless overridden).
Prints the test classification error, per-image F1+ / F1- at threshold 0.5,
PxAP and the training time of each, as a table (mean ± sample standard
deviation over the seeds).

    python benchmarks/minmax_quality.py
    python benchmarks/minmax_quality.py --epochs 12 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

COLUMNS = (("cl_error", "cl. error %"), ("f1_pos", "F1+"), ("f1_neg", "F1-"), ("pxap", "PxAP"))


def contenders(pooling_for_minmax: str | None) -> list[tuple[str, list[str]]]:
    from wsolbench.plugin_host import registry

    minmax_pool = [f"model.pooling={pooling_for_minmax}"] if pooling_for_minmax else []
    out = [("minmax", ["method.u=0", *minmax_pool]), ("minmax", ["method.u=4", *minmax_pool]), ("cam-avg", [])]
    if "deepmil" in registry("method").names():
        out.append(("deepmil", []))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=None, help="default: the profile's")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--pooling", default=None, help="min-max's pooling (default: wildcat when registered, else avg)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra settings for every method")
    ap.add_argument("--output-dir", default=None, help="keep the run directories here (default: a temporary folder)")
    args = ap.parse_args(argv)

    from rich.table import Table

    from wsolbench import config
    from wsolbench.cli.console import out
    from wsolbench.plugin_host import registry
    from wsolbench.training import runner

    pooling = args.pooling or ("wildcat" if "wildcat" in registry("pooling").names() else "avg")
    common = [*args.sets, "device=cpu"] + ([f"train.epochs={args.epochs}"] if args.epochs is not None else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        output_dir = args.output_dir or tmp
        for method, sets in contenders(pooling):
            per_seed = []
            for seed in args.seeds:
                cfg = config.resolve(method, "synthetic", args.profile, sets=[*common, *sets, f"seed={seed}",
                                                                                f"output_dir={output_dir}"])
                result = runner.run(cfg)
                seconds = result.run_dir.read_manifest().get("train_seconds", float("nan"))
                per_seed.append({**result.results, "train_seconds": seconds})
                r = per_seed[-1]
                print(f"{r['method_label']:<16} seed {seed}: " + "  ".join(f"{k} {r[k]:.2f}" for k, _ in COLUMNS)
                      + f"  train {seconds:.0f} s", flush=True)
            rows.append(per_seed)
        cfg = config.resolve("cam-avg", "synthetic", args.profile, sets=common)
    table = Table(
        title=f"synthetic test set, profile {args.profile}, {cfg.train.epochs} epochs, {cfg.model.backbone}, "
        f"seeds {' '.join(map(str, args.seeds))} (mean ± sample sd over the seeds)"
    )
    table.add_column("method")
    for _, title in COLUMNS:
        table.add_column(title, justify="right")
    table.add_column("train s", justify="right")
    for per_seed in rows:
        seconds = statistics.fmean(r["train_seconds"] for r in per_seed)
        table.add_row(per_seed[0]["method_label"], *(spread([r[k] for r in per_seed]) for k, _ in COLUMNS),
                      f"{seconds:.0f}")
    out.print(table)
    out.print("F1+/F1-: per-image Dice at 0.5, mean over images (the paper's protocol); PxAP: pixel AP over the set.")


def spread(values: list[float]) -> str:
    """``mean ± sample sd`` (the mean alone for one value)."""
    mean = statistics.fmean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


if __name__ == "__main__":
    main()
