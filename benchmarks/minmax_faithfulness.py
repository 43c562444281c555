"""What the authors' code does to min-max's numbers: runs with ``method.reference_code`` off and on.

Trains min-max (u = 4, the ``quick`` profile by default) on the synthetic
set for each seed with the switch off and on, and with ``--each-row`` also
the switch on with one of its settings set back to wsolbench's default (the
user's ``--set`` wins over the switch), then prints the test metrics, mean
and sample standard deviation over the seeds (docs/minmax.md). Runs are
``wsolbench run`` processes; a run whose ``results.json`` exists is not run
again, so an interrupted measurement continues.

    python benchmarks/minmax_faithfulness.py                      # seeds 0-2, switch off and on
    python benchmarks/minmax_faithfulness.py --each-row --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

METRICS = ("cl_error", "f1_pos", "f1_neg", "pxap")


def variants(each_row: bool) -> dict[str, list[str]]:
    """Name -> the ``--set`` items of each variant."""
    from wsolbench.config import parse_value
    from wsolbench.plugin_host import registry

    out = {"default": ["method.reference_code=false"], "reference code": ["method.reference_code=true"]}
    if each_row:
        from wsolbench import config

        method_cls = registry("method").resolve("minmax")
        default = config.resolve("minmax", "synthetic", "quick").to_dict()
        for section, values in method_cls.switches["reference_code"].items():
            for key in values:
                value = default[section][key]
                text = json.dumps(value) if isinstance(value, str) else str(value).lower()
                assert parse_value(text) == value
                out[f"reference code but {section}.{key}"] = ["method.reference_code=true", f"{section}.{key}={text}"]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--u", type=int, default=4)
    ap.add_argument("--output-dir", default="runs/minmax-faithfulness")
    ap.add_argument("--each-row", action="store_true", help="also the switch with each of its rows set back")
    args = ap.parse_args(argv)
    out = Path(args.output_dir)
    table = {}
    for name, sets in variants(args.each_row).items():
        rows = []
        for seed in args.seeds:
            run = out / f"{name.replace(' ', '-').replace('.', '-')}-s{seed}"
            if not (run / "results.json").exists():
                cmd = ["wsolbench", "run", "--method", "minmax", "--dataset", "synthetic", "--profile", args.profile,
                       "--seed", str(seed), "-o", str(out), "--run-name", run.name, "--set", f"method.u={args.u}"]
                for item in sets:
                    cmd += ["--set", item]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                print(f"{run.name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            rows.append(json.loads((run / "results.json").read_text()))
        table[name] = rows
    width = max(len(n) for n in table)
    print(f"{'':{width}}  " + "  ".join(f"{m:>14}" for m in METRICS) + "  best epochs")
    for name, rows in table.items():
        cells = []
        for metric in METRICS:
            values = [r[metric] for r in rows]
            std = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells.append(f"{statistics.mean(values):6.2f} ± {std:5.2f}")
        print(f"{name:{width}}  " + "  ".join(cells) + "  " + ",".join(str(r["best_epoch"]) for r in rows))


if __name__ == "__main__":
    main()
