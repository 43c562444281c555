"""Reports: run directories -> a pandas table -> rich, CSV, LaTeX (booktabs) or Markdown.

:func:`collect` reads run directories (or folders holding them) into one row
per run. A run counts when its ``manifest.json`` says ``completed`` and its
``results.json`` can be read; any other directory is listed in
``Collection.skipped`` with the reason, never an error. Runs scored with
``eval.crf = true`` give a second row, labelled ``<label> + CRF``. Two runs of the
same label, dataset and seed: the latest is kept, the other skipped.

:func:`summarize` groups the runs by report label (the method's own label, or
the ``label`` setting of the run) and dataset: mean, sample standard deviation
(n - 1) and count over seeds. The renderers put one row per label and one
column group per dataset, show ``mean ± std`` (the mean alone for a single
seed, ``-`` where a metric does not apply) and set the best value of each
column in bold: the lowest classification error, the highest of the other
metrics (the best threshold is a setting, not a score, and is never bold).
The CSV is the summary itself, one line per label and dataset, numbers only.
:func:`version_warnings` says when the runs of one table used different
versions of the plug-in providing a method (or pooling, or dataset);
:func:`origin_warnings`, when they were made by different code (commit or
uncommitted changes) or read different data (a dataset's fingerprint).
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from wsolbench import RUN_SCHEMA_VERSION
from wsolbench.errors import UnknownNameError, UserError
from wsolbench.plugin_host import registry
from wsolbench.runs.provenance import code_identity, describe_code
from wsolbench.runs.rundir import CRF_HISTOGRAMS, HISTOGRAMS, MANIFEST, RESULTS, slug
from wsolbench.scoring.metrics import METRICS, PROTOCOLS
from wsolbench.scoring.plots import Curve, draw_pr_curves
from wsolbench.utils import read_json

CRF_SUFFIX = " + CRF"

#: the metrics ``wsolbench report`` shows unless ``--metrics`` says otherwise
DEFAULT_METRICS = tuple(name for name, metric in METRICS.items() if metric.default)
FORMATS = ("table", "csv", "latex", "markdown")


#: ``eval.protocol``'s default geometry: its columns carry no mark
NATIVE = "native"


def column_title(metric: str, latex: bool = False, geometry: str = NATIVE) -> str:
    """``metric``'s column title; scored under another geometry than the native one (``eval.protocol``), the
    localization metrics name it: ``MaxBoxAccV2 (wsoleval)``."""
    title = METRICS[metric].latex if latex else METRICS[metric].title
    if geometry != NATIVE and METRICS[metric].protocol != "classification":
        title += f" ({geometry})"
    return title


def _geometry(results: dict[str, Any]) -> str:
    """The run's ``eval.protocol``: recorded as ``eval_protocol``, or read from the box protocol's text."""
    recorded = results.get("eval_protocol")
    if isinstance(recorded, str) and recorded:
        return recorded
    box = str((results.get("protocol") or {}).get("box", ""))
    return box.rsplit("geometry ", 1)[1].strip() if "geometry " in box else NATIVE


# -- reading runs ---------------------------------------------------------------
@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class Collection:
    """The readable runs (one row each) and the directories that were skipped."""

    runs: pd.DataFrame
    skipped: list[Skipped] = field(default_factory=list)


class _Skip(Exception):
    pass


def find_run_dirs(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Skipped]]:
    """Run directories among ``paths``: each path is a run or a folder searched recursively."""
    found: dict[Path, None] = {}
    skipped = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            skipped.append(Skipped(str(path), "does not exist"))
            continue
        if (path / RESULTS).exists() or (path / MANIFEST).exists():
            found[path] = None
            continue
        inside = sorted({f.parent for name in (RESULTS, MANIFEST) for f in path.rglob(name)})
        if not inside:
            skipped.append(Skipped(str(path), "no run directory (manifest.json or results.json) inside"))
        found.update(dict.fromkeys(inside))
    return list(found), skipped


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise _Skip(f"no {path.name}")
    try:
        data = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Skip(f"{path.name} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise _Skip(f"{path.name} is not a JSON object")
    return data


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def read_run(path: Path) -> list[dict[str, Any]]:
    """One record per report row of a completed run (two with CRF scores); raises ``_Skip``."""
    manifest = _read_json(path / MANIFEST)
    status = manifest.get("status")
    if status != "completed":
        error = manifest.get("error")
        raise _Skip(f"status {status!r}" + (f": {error}" if error else ""))
    results = _read_json(path / RESULTS)
    if int(results.get("schema_version", 0) or 0) > RUN_SCHEMA_VERSION:
        raise _Skip(f"written by a newer wsolbench (schema {results['schema_version']}); upgrade to read it")
    for key in ("dataset", "seed"):
        if key not in results:
            raise _Skip(f"results.json has no {key!r}")
    label = results.get("method_label") or results.get("method")
    if not label:
        raise _Skip("results.json names no method")
    base = {
        "label": str(label),
        "method": str(results.get("method", label)),
        "dataset": str(results["dataset"]),
        "seed": results["seed"],
        "path": str(path),
        "finished": str(manifest.get("finished") or ""),
        "provided_by": json.dumps(_provided_by(results, manifest), sort_keys=True),
        "code": describe_code(manifest.get("code")),
        "code_id": code_identity(manifest.get("code")),
        "data": _data_sha(manifest),
        "eval_protocol": _geometry(results),
    }
    records = [{**base, **{m: _number(results.get(m)) for m in METRICS}, "histograms": str(path / HISTOGRAMS)}]
    crf = results.get("crf")
    if isinstance(crf, dict):
        scores = {m: _number(crf.get(m)) for m in METRICS}
        scores["cl_error"] = records[0]["cl_error"]  # the CRF changes the maps, not the classes
        records.append(
            {**base, "label": base["label"] + CRF_SUFFIX, **scores, "histograms": str(path / CRF_HISTOGRAMS)}
        )
    return records


def collect(paths: Iterable[str | os.PathLike]) -> Collection:
    """Every readable run below ``paths``; the others in ``skipped`` with the reason."""
    dirs, skipped = find_run_dirs(paths)
    records = []
    for path in dirs:
        try:
            records.extend(read_run(path))
        except _Skip as exc:
            skipped.append(Skipped(str(path), str(exc)))
    columns = ["label", "method", "dataset", "seed", "path", "finished", "provided_by", "code", "code_id", "data",
               "eval_protocol", *METRICS, "histograms"]
    runs = pd.DataFrame(records, columns=columns)
    # one dataset scored under two geometries is two column groups, never one mean
    mixed = runs.groupby("dataset")["eval_protocol"].transform("nunique") > 1
    other = mixed & (runs["eval_protocol"] != NATIVE)
    runs.loc[other, "dataset"] = runs.loc[other, "dataset"] + " (" + runs.loc[other, "eval_protocol"] + ")"
    if len(runs):  # a rerun of the same label, dataset and seed replaces the older run, CRF row included
        runs = runs.sort_values(["finished", "path"], kind="stable")
        base = runs[~runs["label"].str.endswith(CRF_SUFFIX)]
        keys = ["label", "dataset", "seed"]
        latest = base.drop_duplicates(keys, keep="last").set_index(keys)["path"]
        older = base[base.duplicated(keys, keep="last")]
        for row in older.itertuples():
            newer = latest[(row.label, row.dataset, row.seed)]
            skipped.append(Skipped(row.path, f"same label, dataset and seed as {newer}, which is newer and is used"))
        runs = runs[~runs["path"].isin(set(older["path"]))].reset_index(drop=True)
    return Collection(runs, skipped)


# -- summary --------------------------------------------------------------------
def check_metrics(metrics: Sequence[str]) -> list[str]:
    chosen = list(METRICS) if list(metrics) == ["all"] else list(metrics)
    for m in chosen:
        if m not in METRICS:
            raise UnknownNameError("metric", m, [*METRICS, "all"])
    if not chosen:
        raise UserError("choose at least one metric")
    return chosen


def _order(present: Iterable[str], wanted: Sequence[str] | None, what: str) -> list[str]:
    present = list(dict.fromkeys(present))
    if not wanted:
        return sorted(present, key=lambda name: (name.lower(), name))
    missing = [w for w in wanted if w not in present]
    if missing:
        raise UserError(f"no completed runs for {what} {', '.join(map(repr, missing))}; present: {', '.join(present)}")
    return list(wanted)


def summarize(
    runs: pd.DataFrame,
    metrics: Sequence[str] = DEFAULT_METRICS,
    rows: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One line per (label, dataset): ``n_runs``, ``seeds``, ``<metric>_mean``, ``<metric>_std``.

    ``rows`` and ``datasets`` choose and order the labels and datasets
    (default: all, sorted). The std is the sample standard deviation (NaN for one seed).
    """
    metrics = check_metrics(metrics)
    if runs.empty:
        raise UserError("no completed runs to report")
    row_order = _order(runs["label"], rows, "label")
    dataset_order = _order(runs["dataset"], datasets, "dataset")
    runs = runs[runs["label"].isin(row_order) & runs["dataset"].isin(dataset_order)]
    groups = runs.groupby(["label", "dataset"], sort=False)
    stats = groups[metrics].agg(["mean", "std"])
    stats.columns = [f"{m}_{s}" for m, s in stats.columns]
    stats.insert(0, "n_runs", groups.size())
    stats.insert(1, "seeds", groups["seed"].agg(lambda s: " ".join(str(x) for x in sorted(s))))
    stats.insert(2, "eval_protocol", groups["eval_protocol"].first())
    order = pd.MultiIndex.from_product([row_order, dataset_order], names=["label", "dataset"])
    summary = stats.reindex([key for key in order if key in stats.index])
    geometry = runs.groupby("dataset")["eval_protocol"].first().to_dict()
    summary.attrs.update(metrics=metrics, rows=row_order, datasets=dataset_order,
                         geometry={d: geometry.get(d, NATIVE) for d in dataset_order})
    return summary


def _title(summary: pd.DataFrame, dataset: str, metric: str, latex: bool = False) -> str:
    return column_title(metric, latex, summary.attrs.get("geometry", {}).get(dataset, NATIVE))


def _best(summary: pd.DataFrame, metric: str, dataset: str) -> set[str]:
    """Labels with the best displayed mean of ``metric`` on ``dataset``."""
    facts = METRICS[metric]
    if facts.better == "none":
        return set()
    means = summary.xs(dataset, level="dataset")[f"{metric}_mean"].round(facts.decimals).dropna()
    if means.empty:
        return set()
    target = means.min() if facts.better == "lower" else means.max()
    return set(means.index[means == target])


@dataclass
class Cells:
    """The display grid: texts ``[label][(dataset, metric)]`` and which are the column's best."""

    rows: list[str]
    columns: list[tuple[str, str]]
    text: dict[str, dict[tuple[str, str], str]]
    best: dict[str, set[tuple[str, str]]]


def cells(summary: pd.DataFrame, pm: str = "±") -> Cells:
    metrics, rows, datasets = (summary.attrs[k] for k in ("metrics", "rows", "datasets"))
    columns = [(d, m) for d in datasets for m in metrics]
    text: dict[str, dict[tuple[str, str], str]] = {r: {} for r in rows}
    best: dict[str, set[tuple[str, str]]] = {r: set() for r in rows}
    for dataset, metric in columns:
        winners = _best(summary, metric, dataset)
        digits = METRICS[metric].decimals
        for label in rows:
            key = (label, dataset)
            if key not in summary.index or pd.isna(summary.at[key, f"{metric}_mean"]):
                text[label][(dataset, metric)] = "-"
                continue
            mean, std = summary.at[key, f"{metric}_mean"], summary.at[key, f"{metric}_std"]
            value = f"{mean:.{digits}f}" + ("" if pd.isna(std) else f" {pm} {std:.{digits}f}")
            text[label][(dataset, metric)] = value
            if label in winners:
                best[label].add((dataset, metric))
    return Cells(rows, columns, text, best)


def notes(summary: pd.DataFrame, latex: bool = False, bold: str = "in bold") -> list[str]:
    """What the columns mean, how cells are computed and where seed counts differ."""
    metrics = summary.attrs["metrics"]
    lines = []
    for protocol in PROTOCOLS.values():
        shown = [column_title(m, latex) for m in metrics if METRICS[m].protocol == protocol.name]
        if shown:
            lines.append(protocol.note.format(metrics=", ".join(shown), pct="\\%" if latex else "%"))
    for geometry in sorted(set(summary.attrs.get("geometry", {}).values()) - {NATIVE}):
        lines.append(GEOMETRY_NOTES.get(geometry, "({g}): scored under eval.protocol = {g}.").format(g=geometry))
    name = latex_escape if latex else str
    pm = "$\\pm$" if latex else "±"
    counts = summary["n_runs"]
    most = int(counts.max())
    stats = f"Mean {pm} sample standard deviation over {most} seed{'s' * (most > 1)}"
    fewer = [f"{name(label)} on {name(dataset)}: {n}" for (label, dataset), n in counts.items() if n != most]
    if fewer:
        stats += f" (fewer for {'; '.join(fewer)})"
    lines.append(stats + f"; best value per column {bold}; - : not applicable.")
    return lines


#: the note under a table with columns scored under another geometry (``eval.protocol``)
GEOMETRY_NOTES = {
    "wsoleval": "({g}): maps, masks and boxes resized to 224 x 224 as clovaai/wsolevaluation scores them "
                "(eval.protocol = {g}).",
}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (pandas keeps its own escaper private)."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(special.get(c, c) for c in text)


# -- rendering ------------------------------------------------------------------
def to_rich(summary: pd.DataFrame, title: str = "", plain: bool = False) -> Any:
    """A rich table; best cells bold (``plain``: wrapped in ``**``, for text files)."""

    grid = cells(summary)
    caption = "\n".join(notes(summary, bold="marked **" if plain else "in bold"))
    table = Table(title=title or None, caption=caption, caption_justify="left")
    table.add_column("method", style="bold")
    for i, (dataset, metric) in enumerate(grid.columns):
        first = i == 0 or grid.columns[i - 1][0] != dataset
        table.add_column(f"{escape(dataset) if first else ''}\n{_title(summary, dataset, metric)}", justify="right")
    for label in grid.rows:
        values = []
        for col in grid.columns:
            text = escape(grid.text[label][col])
            if col in grid.best[label]:
                text = f"**{text}**" if plain else f"[bold green]{text}[/bold green]"
            values.append(text)
        table.add_row(escape(label), *values)
    return table


def to_text(summary: pd.DataFrame, title: str = "", width: int = 200) -> str:
    """The table as plain text (for files)."""

    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(to_rich(summary, title, plain=True))
    return console.file.getvalue()


def print_table(renderable: Any, console: Any) -> None:
    """Print on ``console``; when it is not a terminal (a pipe, a file), at 200 columns rather than 80."""
    if console.is_terminal:
        console.print(renderable)
        return

    Console(file=console.file, width=200, color_system=None).print(renderable)


def to_csv(summary: pd.DataFrame) -> str:
    return summary.reset_index().to_csv(index=False, float_format="%.6g")


def _display_frame(summary: pd.DataFrame, pm: str, latex: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Strings with (dataset, title) columns and a same-shaped frame of booleans (best cells)."""
    grid = cells(summary, pm)
    columns = pd.MultiIndex.from_tuples([(d, _title(summary, d, m, latex)) for d, m in grid.columns])
    text = pd.DataFrame([[grid.text[r][c] for c in grid.columns] for r in grid.rows], index=grid.rows, columns=columns)
    best = pd.DataFrame([[c in grid.best[r] for c in grid.columns] for r in grid.rows], index=grid.rows, columns=columns)
    return text, best


def to_markdown(summary: pd.DataFrame) -> str:
    text, best = _display_frame(summary, "±", latex=False)
    text = text.where(~best, "**" + text + "**")
    text.columns = [f"{d} {t}".replace("*", "\\*") for d, t in text.columns]
    text.index = pd.Index([label.replace("|", "\\|") for label in text.index], name="method")
    body = text.to_markdown(tablefmt="pipe", colalign=["left"] + ["right"] * len(text.columns))
    return body + "\n\n" + "\n".join(
        "- " + line.replace("*", "\\*") for line in notes(summary)
    ) + "\n"


def to_latex(summary: pd.DataFrame, caption: str = "", label: str = "tab:wsol") -> str:
    """A ``table`` float with a booktabs ``tabular``: needs ``\\usepackage{booktabs}``."""
    text, best = _display_frame(summary, "$\\pm$", latex=True)
    text.columns.names = [None, "Method"]
    styler = text.style
    styler.apply(lambda frame: best.map(lambda b: "textbf:--rwrap;" if b else ""), axis=None)
    styler.format_index(escape="latex", axis=0)
    styler.format_index(escape="latex", axis=1, level=0)
    full_caption = latex_escape(caption.strip()) or "Localization on the test sets"
    full_caption += "" if full_caption.endswith((".", "!", "?")) else "."
    full_caption += " " + " ".join(notes(summary, latex=True))
    latex = styler.to_latex(
        hrules=True, multicol_align="c", column_format="l" + "r" * len(text.columns), caption=full_caption,
        label=label, position_float="centering",
    )
    metrics = summary.attrs["metrics"]
    rules = " ".join(
        f"\\cmidrule(lr){{{2 + i * len(metrics)}-{1 + (i + 1) * len(metrics)}}}"
        for i in range(len(summary.attrs["datasets"]))
    )
    lines = latex.splitlines()
    top = lines.index("\\toprule")
    lines.insert(top + 2, rules)
    return "% needs \\usepackage{booktabs}\n" + "\n".join(lines) + "\n"


def render(summary: pd.DataFrame, fmt: str, title: str = "") -> str:
    if fmt == "csv":
        return to_csv(summary)
    if fmt == "latex":
        return to_latex(summary, caption=title)
    if fmt == "markdown":
        return to_markdown(summary)
    if fmt == "table":
        return to_text(summary, title)
    raise UnknownNameError("report format", fmt, FORMATS)


def format_for(path: str | os.PathLike) -> str:
    """The format a file's suffix asks for (``table`` when it says nothing)."""
    suffix = Path(path).suffix.lower()
    return {".csv": "csv", ".tex": "latex", ".md": "markdown", ".markdown": "markdown"}.get(suffix, "table")


def _provided_by(results: dict[str, Any], manifest: dict[str, Any]) -> dict[str, list[str]]:
    """``{kind: [name, distribution, version]}`` of the plug-ins that provided a run's method, pooling, dataset.

    Runs made before ``results.json`` recorded ``provided_by`` get their
    method's entry from the distribution that provides that method now and the
    version of it that their manifest lists.
    """
    out = {}
    for kind, source in (results.get("provided_by") or {}).items():
        if isinstance(source, dict) and source.get("distribution"):
            out[kind] = [str(source.get("name", "")), str(source["distribution"]), str(source.get("version", ""))]
    method = results.get("method")
    if "method" not in out and method:

        try:
            distribution = registry("method").get(str(method)).distribution
        except UnknownNameError:
            return out
        versions = (manifest.get("versions") or {}).get("plugins") or {}
        if distribution in versions:
            out["method"] = [str(method), distribution, str(versions[distribution])]
    return out


def version_warnings(runs: pd.DataFrame, summary: pd.DataFrame | None = None) -> list[str]:
    """One line per method (or pooling, dataset) whose runs in the table came from different plug-in versions.

    ``summary`` limits the runs to its rows and datasets (those of the table).
    """
    if summary is not None:
        runs = runs[runs["label"].isin(summary.attrs["rows"]) & runs["dataset"].isin(summary.attrs["datasets"])]
    found: dict[tuple[str, str], dict[tuple[str, str], set[str]]] = {}
    for path, provided in runs.drop_duplicates("path")[["path", "provided_by"]].itertuples(index=False):
        for kind, (name, distribution, version) in json.loads(provided).items():
            found.setdefault((kind, name), {}).setdefault((distribution, version), set()).add(path)
    lines = []
    for (kind, name), versions in sorted(found.items()):
        if len(versions) > 1:
            seen = ", ".join(
                f"{dist} {version} ({len(paths)} run{'s' * (len(paths) > 1)})"
                for (dist, version), paths in sorted(versions.items())
            )
            lines.append(f"the runs of {kind} {name!r} in this table were made with different versions of its "
                         f"plug-in: {seen}; their results may not be comparable")
    return lines


def _data_sha(manifest: dict[str, Any]) -> str:
    data = manifest.get("data")
    sha = data.get("sha256") if isinstance(data, dict) else None
    return str(sha) if sha else "not recorded"


def _tally(counts: dict[str, set[str]]) -> str:
    return ", ".join(f"{what} ({len(paths)} run{'s' * (len(paths) > 1)})" for what, paths in sorted(counts.items()))


def origin_warnings(runs: pd.DataFrame, summary: pd.DataFrame | None = None) -> list[str]:
    """Lines saying when the runs of the table come from different code, or a dataset's runs from different data.

    Code: the code's trees and uncommitted changes recorded in the manifests
    (:func:`wsolbench.runs.provenance.code_identity`; the commit for runs that
    recorded no tree), named by commit (:func:`wsolbench.runs.provenance.describe_code`):
    commits that differ only outside the code do not warn. Data: per dataset, the
    fingerprint (:func:`wsolbench.runs.provenance.data_fingerprint`). Runs
    that recorded neither count as one more kind. ``summary`` limits the
    runs to its rows and datasets.
    """
    if summary is not None:
        runs = runs[runs["label"].isin(summary.attrs["rows"]) & runs["dataset"].isin(summary.attrs["datasets"])]
    runs = runs.drop_duplicates("path")
    lines = []
    identities: dict[str, dict[str, set[str]]] = {}
    for path, code, identity in runs[["path", "code", "code_id"]].itertuples(index=False):
        identities.setdefault(identity, {}).setdefault(code, set()).add(path)
    codes = {" = ".join(sorted(named)): set().union(*named.values()) for named in identities.values()}
    if len(codes) > 1:
        lines.append(f"the runs in this table were made by different code: {_tally(codes)}; their differences may "
                     f"come from the code rather than the methods")
    for dataset, group in runs.groupby("dataset", sort=True):
        prints: dict[str, set[str]] = {}
        for path, sha in group[["path", "data"]].itertuples(index=False):
            prints.setdefault(sha if sha == "not recorded" else f"fingerprint {sha[:12]}", set()).add(path)
        if len(prints) > 1:
            lines.append(f"the runs on dataset {dataset!r} in this table read different data: {_tally(prints)}; "
                         f"their results may not be comparable")
    return lines


def table_warnings(runs: pd.DataFrame, summary: pd.DataFrame | None = None) -> list[str]:
    """:func:`version_warnings` and :func:`origin_warnings`: what a reader of the table should know."""
    return version_warnings(runs, summary) + origin_warnings(runs, summary)


# -- figures --------------------------------------------------------------------
def dataset_curves(runs: pd.DataFrame, summary: pd.DataFrame) -> dict[str, list[Any]]:
    """Per dataset, one :class:`wsolbench.scoring.plots.Curve` per label of ``summary``.

    A label's histograms are summed over its seeds (one pooled curve); the
    legend gives the mean PxAP of the table. Runs without histograms, or with
    a different number of bins than the label's first run, are left out.
    """

    out: dict[str, list[Any]] = {}
    for dataset in summary.attrs["datasets"]:
        curves = []
        for label in summary.attrs["rows"]:
            group = runs[(runs["label"] == label) & (runs["dataset"] == dataset)]
            hists = [np.load(p) for p in group["histograms"] if Path(p).is_file()]
            hists = [h for h in hists if h["fg"].shape == hists[0]["fg"].shape]
            if not hists:
                continue
            fg = sum(h["fg"].astype(np.int64) for h in hists)
            bg = sum(h["bg"].astype(np.int64) for h in hists)
            pxap = summary.at[(label, dataset), "pxap_mean"] if "pxap_mean" in summary else None
            pxap = None if pxap is None or pd.isna(pxap) else float(pxap)
            curves.append(Curve(f"{label} ({len(hists)} run{'s' * (len(hists) > 1)})", fg, bg, pxap))
        if curves:
            out[dataset] = curves
    return out


def draw_curves(runs: pd.DataFrame, directory: str | os.PathLike, summary: pd.DataFrame) -> list[Path]:
    """``pr_<dataset>.png`` and ``.pdf`` in ``directory``: the curves of :func:`dataset_curves`."""

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset, curves in dataset_curves(runs, summary).items():
        stem = "pr_" + slug(dataset)
        written += draw_pr_curves(
            curves, directory / stem, title=f"{dataset}: pixel precision-recall", formats=("png", "pdf")
        )
    return written
