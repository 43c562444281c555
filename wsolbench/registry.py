"""Name -> factory registries for methods, poolings and datasets."""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from wsolbench.errors import DuplicateNameError, PluginImportError, UnknownNameError


@dataclass
class Entry:
    """One registered name."""

    name: str
    factory: Callable[..., Any] | str
    summary: str = ""
    aliases: tuple[str, ...] = ()
    plugin: str = ""  #: the plug-in that registered it
    distribution: str = ""  #: the installed distribution providing that plug-in
    version: str = ""  #: that distribution's version
    _resolved: Any = field(default=None, repr=False)

    @property
    def source(self) -> str:
        dist = f"{self.distribution} {self.version}".strip()
        return f"plug-in {self.plugin!r}" + (f" ({dist})" if dist else "")

    def resolve(self) -> Callable[..., Any]:
        """The factory itself, importing it if it was given as ``"module:attr"``."""
        if self._resolved is None:
            if isinstance(self.factory, str):
                module_name, _, attr = self.factory.partition(":")
                try:
                    obj: Any = importlib.import_module(module_name)
                    for part in attr.split(".") if attr else []:
                        obj = getattr(obj, part)
                except (ImportError, AttributeError) as exc:
                    raise PluginImportError(
                        f"{self.name!r} cannot be used: {self.source} names {self.factory!r}, which fails to "
                        f"import ({type(exc).__name__}: {exc}). Reinstall or update that distribution, or "
                        f"uninstall it."
                    ) from exc
                self._resolved = obj
            else:
                self._resolved = self.factory
        return self._resolved


class Registry:
    """Names of one kind (``method``, ``pooling``, ``dataset``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def add(self, entry: Entry) -> None:
        for name in (entry.name, *entry.aliases):
            check_name(self.kind, name)
            existing = self._lookup(name)
            if existing is not None:
                raise DuplicateNameError(
                    f"{self.kind} name {name!r} is registered twice: by {existing.source} "
                    f"and by {entry.source}"
                )
        self._entries[entry.name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = entry.name

    def _lookup(self, name: str) -> Entry | None:
        return self._entries.get(self._aliases.get(name, name))

    def __contains__(self, name: str) -> bool:
        return self._lookup(name) is not None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> Entry:
        entry = self._lookup(name)
        if entry is None:
            raise UnknownNameError(self.kind, name, [*self._entries, *self._aliases])
        return entry

    def names(self, pattern: str | Iterable[str] = "*") -> list[str]:
        """Sorted names matching a glob pattern (or any of several)."""
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        return sorted(n for n in self._entries if any(fnmatch.fnmatchcase(n, p) for p in patterns))

    def entries(self, pattern: str | Iterable[str] = "*") -> list[Entry]:
        return [self._entries[n] for n in self.names(pattern)]

    def resolve(self, name: str) -> Callable[..., Any]:
        return self.get(name).resolve()

    def create(self, name: str, /, **kwargs: Any) -> Any:
        """Instantiate ``name``; keyword arguments that are ``None`` are dropped so defaults stand."""
        return self.resolve(name)(**{k: v for k, v in kwargs.items() if v is not None})


def check_name(kind: str, name: str) -> None:
    """Refuse names that cannot be typed as one command-line word."""
    if not isinstance(name, str) or not name or name != name.strip() or " " in name:
        raise ValueError(f"invalid {kind} name {name!r}: use lower-case words joined by '-'")
