"""The ``.wsol`` model file: a trained model shared without its run directory.

A ``.wsol`` file is a zip archive of exactly two members:

``wsol.json``          the format and its version; the run's configuration (as
                       ``config.json`` holds it); the class names; the epoch and
                       checkpoint the weights come from; the plug-ins that
                       provided the method, pooling and dataset (name,
                       distribution, version); the versions of wsolbench,
                       torch, timm and every plug-in when the run was made
                       (its manifest) and when it was exported
``model.safetensors``  the method's state dict, in the safetensors format

Reading one never executes code from it: JSON and safetensors are data
formats, and nothing in the file is unpickled. A file holding anything else
(a third member, a pickle in place of the weights, a ``torch.save``
checkpoint renamed) is refused with :class:`ModelFileError` before any
member is parsed.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import Tensor

from wsolbench import __version__
from wsolbench.config import RunConfig
from wsolbench.errors import UserError
from wsolbench.utils import atomic_write_bytes, json_bytes

#: the ``format`` field of ``wsol.json``
FORMAT = "wsolbench-model"
#: the version of the layout this wsolbench writes and reads up to
FORMAT_VERSION = 1
META = "wsol.json"
WEIGHTS = "model.safetensors"
MEMBERS = (META, WEIGHTS)
#: the protocol marker every pickle of protocol 2 or later starts with (``torch.save`` writes protocol 2)
_PICKLE_MARK = b"\x80"


class ModelFileError(UserError):
    """A file that is not a readable ``.wsol`` model file."""


@dataclass
class ModelFile:
    """The contents of a ``.wsol`` file."""

    meta: dict[str, Any]  #: ``wsol.json``
    state: dict[str, Tensor]  #: the method's state dict

    @property
    def config(self) -> RunConfig:
        return RunConfig.from_dict(self.meta["config"])

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])


def write_model_file(path: str | Path, meta: dict[str, Any], state: dict[str, Tensor]) -> Path:
    """Write ``meta`` (``config``, ``classes`` and provenance) and the state dict ``state`` to ``path``.

    Tensors are copied to the CPU one by one (safetensors refuses tensors that
    share memory). The file is written atomically.
    """
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(META, json_bytes(header))
        archive.writestr(WEIGHTS, safetensors.torch.save(tensors))
    target = Path(path)
    try:
        atomic_write_bytes(target, buf.getvalue())
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target


def read_model_file(path: str | Path) -> ModelFile:
    """The configuration, class names and weights in the ``.wsol`` file ``path``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        archive = zipfile.ZipFile(path)
    except FileNotFoundError as exc:
        raise ModelFileError(f"model file not found: {path}") from exc
    except zipfile.BadZipFile as exc:
        if head.startswith(_PICKLE_MARK):
            raise ModelFileError(_pickled(path, "the file itself")) from exc
        raise ModelFileError(f"{path} is not a .wsol model file (not a zip archive)") from exc
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with archive:
        names = archive.namelist()
        for name in sorted(set(names) - set(MEMBERS)):
            with archive.open(name) as member:
                if member.read(1) == _PICKLE_MARK or name.endswith((".pkl", ".pickle")):
                    raise ModelFileError(_pickled(path, f"member {name!r}"))
        unexpected = sorted(set(names) - set(MEMBERS))
        missing = [m for m in MEMBERS if m not in names]
        if unexpected or missing:
            what = f"unexpected members {unexpected}" if unexpected else f"no {', '.join(missing)}"
            raise ModelFileError(
                f"{path} is not a .wsol model file: it has {what} (a .wsol file holds exactly {META} and "
                f"{WEIGHTS}; write one with `wsolbench export RUN_DIR -o FILE.wsol`)"
            )
        try:
            meta = json.loads(archive.read(META))
        except ValueError as exc:
            raise ModelFileError(f"{path}: {META} is not valid JSON ({exc})") from exc
        weights = archive.read(WEIGHTS)
        try:
            state = safetensors.torch.load(weights)  # parses a header and copies bytes: no code runs
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            if weights.startswith(_PICKLE_MARK):
                raise ModelFileError(_pickled(path, f"member {WEIGHTS!r}")) from exc
            raise ModelFileError(f"{path}: {WEIGHTS} is not a safetensors file ({exc})") from exc
    _check_meta(path, meta)
    return ModelFile(meta, state)


def _check_meta(path: Path, meta: Any) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a .wsol model file: {META} does not name the format {FORMAT!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer wsolbench (model file format {version}; wsolbench {__version__} "
            f"reads up to {FORMAT_VERSION}); upgrade wsolbench to read it"
        )
    if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("classes"), list):
        raise ModelFileError(f"{path}: {META} lacks the configuration or the class names")


def _pickled(path: Path, where: str) -> str:
    return (
        f"{path} holds a pickled object ({where}) and is refused: unpickling can run any code, so wsolbench "
        f"never loads pickles from model files. A .wsol file holds JSON and safetensors only; write one with "
        f"`wsolbench export RUN_DIR -o FILE.wsol`"
    )
