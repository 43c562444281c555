"""Errors that are the user's to fix.

Every :class:`UserError` reaching the command line is printed as one clear
paragraph and the process exits with status 2 (``--debug`` shows the traceback).
Anything else is a bug in wsolbench or a plug-in and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input: names, options, files, data."""

    exit_code = 2

    def __str__(self) -> str:
        # A DataLoader worker re-raises an error as ``type("Caught X in DataLoader worker
        # process N.\nOriginal Traceback ...\n<module>.X: message")``: keep the message.
        text = super().__str__()
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        if text.startswith(f"Caught {type(self).__name__} ") and marker in text:
            return text.split(marker, 1)[1].strip()
        return text


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM that has already told the user how to continue it."""


class UnknownNameError(UserError, KeyError):
    """A name that is not registered (method, pooling, dataset, config key)."""

    def __init__(self, kind: str, name: str, choices: Iterable[str]):
        self.kind, self.name = kind, name
        self.choices = sorted(choices)
        lowered = {c.lower().replace("_", "-"): c for c in self.choices}
        key = name.lower().replace("_", "-")
        if key in lowered:  # only the spelling differs: that is the one
            close = [lowered[key]]
        else:
            close = difflib.get_close_matches(name, self.choices, n=3, cutoff=0.5)
        msg = f"Unknown {kind} {name!r}."
        if close:
            msg += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
        else:
            shown = ", ".join(self.choices[:20]) + (" ..." if len(self.choices) > 20 else "")
            msg += f" Known: {shown or '(none)'}."
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class DuplicateNameError(Exception):
    """Two plug-ins registered the same name (a packaging bug, not a user error)."""


class PluginImportError(UserError):
    """A registered name whose implementation cannot be imported (a broken or outdated plug-in install)."""


class DataError(UserError):
    """Missing, corrupt or inconsistent data."""


class ConfigError(UserError):
    """A bad configuration value, key or file."""


class WeightsUnavailableError(UserError):
    """Pretrained weights that cannot be obtained (for example, offline)."""


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used here: another method, a newer schema, another model."""
