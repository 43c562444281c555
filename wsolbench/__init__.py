"""wsolbench: a pluggable benchmark for weakly supervised object localization.

``wsolbench.load(RUN_DIR_OR_WSOL_FILE)`` returns a trained model for new
images and ``wsolbench.export(RUN_DIR, FILE)`` writes a ``.wsol`` file (see
:mod:`wsolbench.runs.inference`); both are imported on first use, so
``import wsolbench`` does not import torch.
"""

from typing import Any

__version__ = "0.1.0"

#: Version of the layout of run directories (manifest, results, checkpoints).
RUN_SCHEMA_VERSION = 1

from wsolbench.hookspecs import hookimpl  # noqa: E402  (re-exported for plug-in authors)

__all__ = ["__version__", "RUN_SCHEMA_VERSION", "hookimpl", "load", "export"]

#: names served from wsolbench.runs.inference on first use (importing it imports torch: 2 s or more)
_LAZY = ("load", "export")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from wsolbench.runs import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'wsolbench' has no attribute {name!r}")
