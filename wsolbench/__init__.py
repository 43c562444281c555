"""wsolbench: a pluggable benchmark for weakly supervised object localization."""

__version__ = "0.1.0"

#: Version of the layout of run directories (manifest, results, checkpoints).
RUN_SCHEMA_VERSION = 1

from wsolbench.hookspecs import hookimpl  # noqa: E402  (re-exported for plug-in authors)

__all__ = ["__version__", "RUN_SCHEMA_VERSION", "hookimpl"]
