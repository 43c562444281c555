"""What model selection does to the test numbers: each run's kept epoch against its last epoch.

On a small validation split (GlaS: 18 images) the validation error is often
0% on dozens of epochs, and the kept model is chosen among them by the tie
rule (``train.select_ties``). For every completed training run under the given
folders this script scores the run's ``last.pt`` on the test split exactly as
the run scored its ``best.pt`` (``wsolbench evaluate-run RUN --checkpoint
last``, thresholds chosen on validation), and prints, as Markdown, one table
of how each run chose its kept epoch (the metric, the epochs tied at its best
value, the rule that broke the tie, the training time) and one of the test
metrics of the kept and the last epoch side by side, with the mean over seeds
of each row's difference.

The last epoch's scores go to ``--output`` (default: ``<folder>-last`` beside
the first folder, outside it, so that ``wsolbench report`` of the runs does not
read them as rows); an evaluation already there is not run again.

    python benchmarks/selection_effect.py runs/glas-cpu
    python benchmarks/selection_effect.py runs/glas-cpu --metrics cl_error,f1_pos,pxap,maxboxaccv2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from collections import defaultdict
from pathlib import Path

from wsolbench.runs import rundir
from wsolbench.runs.report import find_run_dirs
from wsolbench.scoring.metrics import METRICS
from wsolbench.training.checkpoint_eval import evaluate_checkpoint

DEFAULT_METRICS = "cl_error,f1_pos,f1_neg,pxap,maxboxaccv2"


def training_runs(folders: list[str]) -> list[Path]:
    """Completed runs that trained (they hold a ``last.pt``), in path order."""
    found, _ = find_run_dirs(folders)
    return sorted(p for p in found if rundir.is_complete(p) and (p / rundir.LAST).is_file())


def last_epoch_results(run: Path, root: Path, output: Path) -> dict:
    """The test results of ``run``'s ``last.pt``, scored once into ``output`` (mirroring ``run`` under ``root``)."""
    target = output / run.relative_to(root)
    if rundir.is_complete(target):
        return rundir.RunDir(target, read_only=True).read_results()
    if target.exists():  # an interrupted evaluation: score again
        shutil.rmtree(target)
    return evaluate_checkpoint(run, "last", "test", output_dir=target)


def fmt(value: float | None, decimals: int = 2) -> str:
    return "–" if value is None else f"{value:.{decimals}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="run directories or folders of them (a suite's output)")
    ap.add_argument("--output", default=None, help="where the last epochs' scores go (default: <folder>-last)")
    ap.add_argument("--metrics", default=DEFAULT_METRICS, help=f"test metrics to compare (default {DEFAULT_METRICS})")
    args = ap.parse_args()
    metrics = args.metrics.split(",")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        ap.error(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")
    root = Path(args.folders[0]).resolve()
    output = Path(args.output) if args.output else root.with_name(root.name + "-last")

    selection, comparison = [], defaultdict(list)
    for run in training_runs(args.folders):
        path = run.resolve()
        directory = rundir.RunDir(path, read_only=True)
        kept, manifest, cfg = directory.read_results(), directory.read_manifest(), directory.read_config()
        last = last_epoch_results(path, root if path.is_relative_to(root) else path.parent, output)
        label = kept.get("method_label") or kept["method"]
        selection.append(
            f"| {label} | {kept['seed']} | {cfg.train.epochs} | {cfg.train.lr:g} | "
            f"{manifest.get('train_seconds', 0) / 60:.1f} min | {kept.get('selected_on', '–')} | "
            f"{kept.get('best_epoch', '–')} | {kept.get('tied_epochs', '–')} | {kept.get('tie_rule', '–')} | "
            f"{fmt(kept.get('valid_error'), 1)} |"
        )
        comparison[label].append((kept, last))

    print("| method | seed | epochs | lr | training time | selected on | kept epoch | epochs tied | tie rule "
          "| valid error % |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---|---:|")
    print("\n".join(selection))
    print()
    titles = " | ".join(f"{METRICS[m].title} kept | last" for m in metrics)
    print(f"| method | seeds | {titles} |")
    print("|---|---:|" + "---:|---:|" * len(metrics))
    for label, pairs in comparison.items():
        cells = []
        for m in metrics:
            kept_values = [k.get(m) for k, _ in pairs if k.get(m) is not None]
            last_values = [v.get(m) for _, v in pairs if v.get(m) is not None]
            cells.append(fmt(statistics.mean(kept_values)) if kept_values else "–")
            cells.append(fmt(statistics.mean(last_values)) if last_values else "–")
        print(f"| {label} | {len(pairs)} | " + " | ".join(cells) + " |")
    print(f"\n(means over seeds; the last epoch's scores are in {output})")


if __name__ == "__main__":
    main()
