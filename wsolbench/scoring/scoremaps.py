"""Score maps made outside wsolbench, scored with wsolbench's metrics.

The contract (as in clovaai/wsolevaluation): a folder with one ``<id>.npy`` per
image of the split, ``<id>`` being the split's image id (the ``id`` column of a
run's ``per_image.csv``; an id with ``/`` is a sub-folder). wsolevaluation's
own naming scores unchanged: it saves each map under its image id, file
extension and split folder included (``test/001.Black_footed_Albatross/
Black_Footed_Albatross_0046_18.jpg.npy``); a file matches an image when
both names agree once ``.npy``, an image extension and a leading
``train/``, ``val/`` or ``test/`` folder are set aside (see :func:`map_key`). Each file holds a
2-D floating-point array (a leading axis of length 1 is accepted) with values
in [0, 1] (1e-6 of rounding is tolerated and clipped), no NaN or infinity, at
the size of the image's mask, or at the size of the image as the dataset's
evaluation transform gives it (then resized bilinearly to the mask's size, as
wsolbench does with its own maps). Every file is checked; all problems are
reported together, per file, and nothing is scored while any remains.

Class predictions are optional: a CSV with ``id`` and ``pred`` columns (class
indices; a run's ``per_image.csv`` qualifies) gives the classification error;
without one it is ``null``.

Maps of the dataset's validation split (another folder, same contract) give
the thresholds of the CVPR 2020 protocol: they are checked and scored first
by the same :func:`score_folder`, and their best thresholds
(:meth:`ChosenThresholds.choose`, as a run chooses them) give the scored
split's ``*_at_val`` metrics and ``top*_loc``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from wsolbench.assembly import build_dataset, split_ids
from wsolbench.config import RunConfig
from wsolbench.errors import UnknownNameError, UserError
from wsolbench.runs import rundir
from wsolbench.runs.rundir import RunDir
from wsolbench.scoring.extras import TestExtras
from wsolbench.scoring.metrics import WSOLEVAL_SIZE, ChosenThresholds
from wsolbench.scoring.outputs import Evaluation, results_record, write_outputs
from wsolbench.scoring.scorer import Scorer, box_columns, split_metrics

TOLERANCE = 1e-6
#: extensions set aside when a map's file name is matched with an image id
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: leading folders set aside likewise (wsolevaluation's image ids start with their split)
SPLIT_FOLDERS = ("train", "val", "test")


def map_key(name: str) -> str:
    """The name a map file or an image id is matched by: without ``.npy``, an image extension, a split folder."""
    key = name[: -len(".npy")] if name.endswith(".npy") else name
    stem, dot, suffix = key.rpartition(".")
    if dot and "/" not in suffix and f".{suffix.lower()}" in IMAGE_SUFFIXES:
        key = stem
    first, slash, rest = key.partition("/")
    return rest if slash and first in SPLIT_FOLDERS else key


def match_files(directory: Path, ids: Sequence[str]) -> tuple[dict[str, str], list[Problem], list[str]]:
    """Each id's map file (relative to ``directory``): ``<id>.npy`` itself, else the one file of the same
    :func:`map_key`. Returns the matches, the ids that several files claim, and the files no id claims."""
    files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*.npy"))
    exact = set(files)
    by_key: dict[str, list[str]] = {}
    for name in files:
        by_key.setdefault(map_key(name), []).append(name)
    matched: dict[str, str] = {}
    problems = []
    for image_id in ids:
        if f"{image_id}.npy" in exact:
            matched[image_id] = f"{image_id}.npy"
            continue
        claims = by_key.get(map_key(image_id), [])
        if len(claims) == 1:
            matched[image_id] = claims[0]
        elif claims:
            matched[image_id] = ""  # reported here, not also as missing
            problems.append(Problem(f"{image_id}.npy", f"{len(claims)} files match this image: {', '.join(claims[:3])}"))
    used = set(matched.values())
    matched = {k: v for k, v in matched.items() if v}
    return matched, problems, [name for name in files if name not in used]


@dataclass
class Problem:
    file: str
    problem: str


class ScoreMapError(UserError):
    """Score maps (or predictions) that break the contract: ``groups`` lists them per folder (``(what, its
    problems)``, ``what`` naming the folder: "the score maps in DIR"), ``problems`` all of them."""

    def __init__(self, groups: list[tuple[str, list[Problem]]]):
        self.groups = [(what, problems) for what, problems in groups if problems]
        self.problems = [p for _, problems in self.groups for p in problems]
        super().__init__("; ".join(
            f"{len(problems)} problem{'s' * (len(problems) > 1)} with {what}: "
            + "; ".join(f"{p.file}: {p.problem}" for p in problems[:5])
            + (" ..." if len(problems) > 5 else "")
            for what, problems in self.groups
        ))


def _shape_text(shapes: Sequence[tuple[int, ...]]) -> str:
    return " or ".join(str(tuple(s)) for s in dict.fromkeys(tuple(s) for s in shapes))


def check_map(path: Path, shapes: Sequence[tuple[int, int]]) -> tuple[np.ndarray | None, str | None]:
    """``(map, None)`` for a valid file, ``(None, problem)`` otherwise."""
    if not path.is_file():
        return None, "missing"
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises several kinds for a bad file
        return None, f"unreadable: {type(exc).__name__}: {exc}"
    if not isinstance(array, np.ndarray):
        return None, "not a single array (an .npz archive?)"
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if tuple(array.shape) not in {tuple(s) for s in shapes}:
        return None, f"shape {tuple(array.shape)}, expected {_shape_text(shapes)}"
    if not np.issubdtype(array.dtype, np.floating):
        return None, f"dtype {array.dtype}, expected floating point"
    array = array.astype(np.float32)
    nan = int(np.isnan(array).sum())
    if nan:
        return None, f"{nan} NaN value{'s' * (nan > 1)}"
    inf = int(np.isinf(array).sum())
    if inf:
        return None, f"{inf} infinite value{'s' * (inf > 1)}"
    outside = int(((array < -TOLERANCE) | (array > 1 + TOLERANCE)).sum())
    if outside:
        return None, f"{outside} value{'s' * (outside > 1)} outside [0, 1] (min {array.min():.4g}, max {array.max():.4g})"
    return np.clip(array, 0.0, 1.0), None


def read_predictions(path: str | Path, ids: Sequence[str], num_classes: int) -> tuple[dict[str, int], list[Problem]]:
    """``{id: class index}`` from a CSV with ``id`` and ``pred`` columns, and its problems."""
    name = str(path)
    try:
        table = pd.read_csv(path, dtype={"id": str})
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds
        return {}, [Problem(name, f"unreadable: {exc}")]
    missing_columns = [c for c in ("id", "pred") if c not in table.columns]
    if missing_columns:
        return {}, [Problem(name, f"no column {', '.join(missing_columns)} (need id and pred)")]
    preds: dict[str, int] = {}
    problems = []
    for row in table.itertuples(index=False):
        value = row.pred
        if isinstance(value, (int, np.integer)) or (isinstance(value, float) and float(value).is_integer()):
            if 0 <= int(value) < num_classes:
                preds[str(row.id)] = int(value)
                continue
        problems.append(Problem(name, f"id {row.id}: pred {value!r} is not a class index in [0, {num_classes})"))
    absent = [i for i in ids if i not in preds]
    if absent:
        problems.append(Problem(name, f"no prediction for {len(absent)} image(s), e.g. {', '.join(absent[:3])}"))
    return preds, problems


@dataclass
class ScoreMapEvaluation:
    """The scored maps of a folder, their results and what is left to write."""

    results: dict[str, Any]
    evaluation: Evaluation
    extras: TestExtras
    unmatched: list[str] = field(default_factory=list)  #: .npy files that are no image of the split

    @property
    def per_image(self) -> list[dict[str, Any]]:
        return self.evaluation.per_image

    def finish(self, target: RunDir | None = None) -> dict[str, Any]:
        """Add the CRF scores (with ``eval.crf``) and write the outputs into ``target``; returns the results."""
        return write_outputs(target, self.evaluation, self.extras, self.results)


def write_run(evaluation: ScoreMapEvaluation, cfg: RunConfig, output_dir: str | Path, name: str,
              argv: list[str]) -> Path:
    """A run directory that ``wsolbench report`` reads like any other run; returns its path."""
    run_dir = RunDir.create(output_dir, name)
    config = cfg.to_dict()
    config["method"] = {"name": "external", "scoremaps": evaluation.results["scoremaps"]}
    if "valid_scoremaps" in evaluation.results:
        config["method"]["valid_scoremaps"] = evaluation.results["valid_scoremaps"]
    run_dir.write_config(config)
    manifest = rundir.new_manifest(config, "cpu", argv)
    manifest["method_label"] = evaluation.results["method_label"]
    run_dir.write_manifest(manifest)
    try:
        evaluation.finish(run_dir)
        run_dir.update_manifest(status="completed", finished=rundir.now())
    except BaseException as exc:
        run_dir.update_manifest(status="failed", finished=rundir.now(), error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        run_dir.release()
    return run_dir.path


@dataclass
class FolderScores:
    """One folder's maps checked against a split and, while no problem is found, scored."""

    problems: list[Problem]
    unmatched: list[str]  #: .npy files that are no image of the split
    scorer: Scorer
    rows: list[dict[str, Any]]  #: per image: id, label, f1_pos, f1_neg


def score_folder(
    directory: Path, cfg: RunConfig, split: Any, ids: Sequence[str],
    on_map: Callable[[int, Tensor, Tensor], None] | None = None, score: bool = True,
) -> FolderScores:
    """Check every map of ``directory`` against ``split``'s images; score them in order until a problem is found
    (with ``score=False``, as when another file already has one: check only). ``on_map(index, map, mask)``
    sees each scored map at its mask's size."""
    matched, problems, unmatched = match_files(directory, ids)
    ambiguous = {p.file[: -len(".npy")] for p in problems}
    scorer = Scorer(cfg.eval)
    wsoleval = cfg.eval.protocol == "wsoleval"
    rows = []
    for index, image_id in enumerate(ids):
        item = split[index]
        mask = item["mask"].reshape(item["mask"].shape[-2:])
        # wsolevaluation's maps are 224 x 224 whatever the image's size
        shapes = [(WSOLEVAL_SIZE, WSOLEVAL_SIZE)] if wsoleval else [tuple(mask.shape), tuple(item["image"].shape[-2:])]
        if image_id in ambiguous:
            continue
        file = matched.get(image_id, f"{image_id}.npy")
        array, problem = check_map(directory / file, shapes)
        if problem is not None:
            problems.append(Problem(file, problem))
        if problems or not score:  # keep checking the other files, score nothing
            continue
        given = torch.from_numpy(array)
        prob = given
        if tuple(prob.shape) != tuple(mask.shape):
            prob = F.interpolate(prob[None, None], size=tuple(mask.shape), mode="bilinear", align_corners=False)[0, 0]
            prob = prob.clamp(0, 1)
        scored = scorer.update((given if wsoleval else prob)[None], mask[None], [item.get("boxes")],
                               [item.get("ignore")])
        if on_map is not None:
            on_map(index, prob, mask)
        rows.append({"id": image_id, "label": int(item["label"]), "f1_pos": round(float(scored["f1_pos"][0]), 4),
                     "f1_neg": round(float(scored["f1_neg"][0]), 4)})
    return FolderScores(problems, unmatched, scorer, rows)


def valid_split(dataset: Any, split_name: str, name: str) -> Any:
    """The validation split whose maps choose the thresholds for ``split_name``'s; a :class:`UserError` when
    there is none to choose them on."""
    if split_name == "valid":
        raise UserError("--valid-scoremaps chooses the thresholds of another split's maps on the validation "
                        "split's; the scored split is the validation split itself (its own thresholds are "
                        "used): leave out --valid-scoremaps or score --split test")
    split = dataset.split("valid", train=False) if "valid" in dataset.split_names else None
    if split is None or len(split) == 0:
        raise UserError(f"dataset {name!r} has no validation images to choose thresholds on "
                        f"(its splits: {', '.join(dataset.split_names)}); leave out --valid-scoremaps to use "
                        f"the scored split's own thresholds")
    return split


def evaluate_directory(
    directory: str | Path,
    cfg: RunConfig,
    split_name: str = "test",
    predictions: str | Path | None = None,
    label: str | None = None,
    valid_directory: str | Path | None = None,
) -> ScoreMapEvaluation:
    """Validate every map of ``directory`` against ``cfg``'s dataset split, then score them.

    With ``valid_directory`` (maps of the dataset's validation split, checked
    the same way and scored first), the ``*_at_val`` metrics and ``top*_loc``
    take the validation maps' best thresholds (:meth:`ChosenThresholds.choose`,
    as a run does); without it, the scored split's own. Raises
    :class:`ScoreMapError` listing every problem of both folders.
    ``cfg.eval.crf`` and ``cfg.eval.pictures`` work as in a run once
    :meth:`ScoreMapEvaluation.finish` (or :func:`write_run`) is called.
    """
    directory = Path(directory)
    folders = [directory] if valid_directory is None else [Path(valid_directory), directory]
    for folder in folders:
        if not folder.is_dir():
            raise UserError(f"score map folder {folder} does not exist")
    dataset = build_dataset(cfg)
    if split_name not in dataset.split_names:
        raise UnknownNameError("split", split_name, dataset.split_names)
    split = dataset.split(split_name, train=False)
    ids = split_ids(split)
    groups: list[tuple[str, list[Problem]]] = []
    valid = None
    if valid_directory is not None:
        items = valid_split(dataset, split_name, cfg.dataset)
        valid = score_folder(folders[0], cfg, items, split_ids(items))
        groups.append((f"the validation maps in {folders[0]}", valid.problems))
    preds: dict[str, int] = {}
    problems: list[Problem] = []
    if predictions is not None:
        preds, problems = read_predictions(predictions, ids, dataset.num_classes)
    extras = TestExtras(cfg, dataset, split, ids)
    scored = score_folder(directory, cfg, split, ids, extras.update,
                          score=not problems and not (valid and valid.problems))
    groups.append((f"the score maps in {directory}", problems + scored.problems))
    if any(found for _, found in groups):
        raise ScoreMapError(groups)

    chosen = None
    if valid is not None:
        valid_scores = valid.scorer.per_image()
        chosen = ChosenThresholds.choose(valid_scores["iou_largest"], valid_scores["iou_any"],
                                         valid.scorer.pixels.hist_fg, valid.scorer.pixels.hist_bg)
    scores = scored.scorer.per_image()
    rows = [{"id": row["id"], "label": row["label"], "pred": preds[row["id"]], **row} if preds else row
            for row in scored.rows]
    wrong = sum(row["pred"] != row["label"] for row in rows) if preds else 0
    labels = torch.tensor([int(row["label"]) for row in rows], dtype=torch.long)
    # predictions are class indices, no scores: top-1 localization only
    logits = F.one_hot(torch.tensor([preds[i] for i in ids]), dataset.num_classes).float() if preds else None
    metrics, acc = split_metrics(cfg.eval, scores, scored.scorer.pixels.hist_fg, scored.scorer.pixels.hist_bg,
                                 logits, labels, chosen)
    metrics["top5_loc"] = float("nan")
    rows = [{**row, **boxes} for row, boxes in zip(rows, box_columns(scores, chosen))]
    results = results_record(
        cfg, metrics, method="external", label=label or directory.resolve().name, split=split_name,
        thresholds_from=split_name if chosen is None else "valid", dataset=dataset.report_name or cfg.dataset,
        scoremaps=str(directory.resolve()),
        **({} if valid is None else {"valid_scoremaps": str(folders[0].resolve())}),
        cl_error=100.0 * wrong / len(ids) if preds and ids else None,
    )
    unmatched = scored.unmatched
    if valid is not None and folders[0].resolve() == directory.resolve():  # wsolevaluation's root: val/ and test/
        unmatched = [name for name in unmatched if name in valid.unmatched]
    return ScoreMapEvaluation(results, Evaluation(metrics, rows, acc), extras, unmatched)
