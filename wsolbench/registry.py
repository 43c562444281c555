"""Name -> factory registries for methods, poolings and datasets.

A plug-in's one-line description is the ``summary`` class attribute of its
factory (see :mod:`wsolbench.interfaces`); registration does not repeat it.
:attr:`Entry.summary` reads it without importing the plug-in's module when the
factory is a ``"module:Class"`` string and the class (or a base class in the
same module) assigns ``summary`` a string literal, so ``wsolbench list`` stays
fast: see :func:`literal_summary`.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import importlib
import importlib.util
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from wsolbench.errors import DuplicateNameError, PluginImportError, UnknownNameError


@dataclass
class Entry:
    """One registered name."""

    name: str
    factory: Callable[..., Any] | str
    aliases: tuple[str, ...] = ()
    plugin: str = ""  #: the plug-in that registered it
    distribution: str = ""  #: the installed distribution providing that plug-in
    version: str = ""  #: that distribution's version
    _resolved: Any = field(default=None, repr=False)

    @property
    def summary(self) -> str:
        """The factory's ``summary`` class attribute (``""`` when it has none).

        A ``"module:Class"`` factory whose module is not imported yet is read
        from its source (:func:`literal_summary`); only when that cannot give
        the value is the factory imported (:class:`PluginImportError` when
        that fails).
        """
        value: Any = None
        if isinstance(self.factory, str) and self.factory.partition(":")[0] not in sys.modules:
            value = literal_summary(self.factory)
        if value is None:
            value = getattr(self.resolve(), "summary", None)
        return "" if value is None else str(value)

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


# -- reading ``summary`` from source ------------------------------------------------
# A hand-written reader of one class attribute: inspect.getsource and friends
# import the module, and importing a plug-in module (torch with it) takes
# seconds, which ``wsolbench list`` and ``--help`` must not. The standard ast
# module parses the source; these functions only find the assignment.


_UNASSIGNED: Any = object()  #: a class body that does not bind ``summary``


def literal_summary(factory: str) -> str | None:
    """The string literal that class ``Class`` of ``"module:Class"`` assigns to ``summary``, read without importing.

    The module's source is located with :func:`importlib.util.find_spec` (which
    imports its parent packages, not the module) and parsed with :mod:`ast`.
    When the class body has no ``summary``, its single base class is followed
    if it is defined in the same module. ``None`` when the value cannot be
    known this way, so the caller imports the factory instead: no source (an
    extension module, a missing module), a nested ``Class.Inner``, a value
    that is not a string literal, several base classes or one from another
    module, a decorator, a metaclass, or a module that binds the class's name
    again or assigns an attribute ``summary`` anywhere (``X.summary = ...``).
    """
    module_name, _, qualname = factory.partition(":")
    classes = _module_classes(module_name)
    seen: set[str] = set()
    while classes is not None and qualname in classes and qualname not in seen:
        seen.add(qualname)
        cls = classes[qualname]
        if cls.decorator_list or cls.keywords:
            return None
        assigned = _assigned_summary(cls)
        if assigned is not _UNASSIGNED:
            return assigned
        if len(cls.bases) != 1 or not isinstance(cls.bases[0], ast.Name):
            return None
        qualname = cls.bases[0].id
    return None


@functools.lru_cache(maxsize=None)
def _module_classes(module_name: str) -> dict[str, ast.ClassDef] | None:
    """The module's top-level classes whose names nothing else in it binds.

    ``None`` when the module has no readable source or assigns an attribute
    ``summary`` anywhere.
    """
    try:
        spec = importlib.util.find_spec(module_name)
        source = spec.loader.get_source(module_name) if spec and spec.loader else None
        tree = ast.parse(source) if source is not None else None
    except Exception:  # noqa: BLE001 - unreadable for any reason: the caller imports the factory instead
        return None
    if tree is None:
        return None
    bindings: Counter[str] = Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "summary" and isinstance(node.ctx, ast.Store):
            return None
        bindings.update(_bound_names(node))
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef) and bindings[node.name] == 1}


def _assigned_summary(cls: ast.ClassDef) -> Any:
    """What the class body last binds to ``summary``: a string literal, ``None`` (anything else) or :data:`_UNASSIGNED`."""
    value: Any = _UNASSIGNED
    for statement in cls.body:
        if isinstance(statement, ast.Assign) and all(_is_summary(t) for t in statement.targets):
            value = _string(statement.value)
        elif isinstance(statement, ast.AnnAssign) and _is_summary(statement.target):
            if statement.value is not None:
                value = _string(statement.value)
        elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):  # their bodies are not the class's
            if statement.name == "summary":
                value = None
        elif any("summary" in _bound_names(node) for node in ast.walk(statement)):
            value = None
    return value


def _bound_names(node: ast.AST) -> list[str]:
    """The names that ``node`` itself binds in its scope."""
    if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return [node.name]
    if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
        return [node.id]
    if isinstance(node, ast.alias):
        return [node.asname or node.name.partition(".")[0]]
    return []


def _is_summary(target: ast.expr) -> bool:
    return isinstance(target, ast.Name) and target.id == "summary"


def _string(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
