"""The plugin manager: built-in plug-ins first, then the ``wsolbench`` entry points.

Environment variables:

``WSOLBENCH_DISABLE_PLUGIN_AUTOLOAD=1``
    Load only the built-in plug-ins (no third-party code runs).
``WSOLBENCH_PLUGINS=name1,name2``
    Load only these third-party plug-ins (entry-point names or distribution
    names, commas between them; an empty value loads none). The others are
    listed by ``wsolbench list plugins`` as not loaded.

A third-party plug-in that fails to import, implements a hook that does not
exist (a misspelt name), fails inside a registration hook, registers an invalid
name or a name that is already taken is skipped as a whole, with a
:class:`PluginWarning` naming the distribution and the error; every other
plug-in keeps working. A command that fails to be added, or whose name is
already taken, is skipped the same way. A problem inside the built-ins is
raised, since it is a bug in wsolbench itself.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from wsolbench import __version__, hookspecs
from wsolbench.errors import DuplicateNameError
from wsolbench.registry import Entry, Registry, check_name

ENTRY_POINT_GROUP = "wsolbench"
DISABLE_AUTOLOAD_ENV = "WSOLBENCH_DISABLE_PLUGIN_AUTOLOAD"
ALLOW_LIST_ENV = "WSOLBENCH_PLUGINS"

#: Built-in plug-in modules, loaded in this order before any third-party plug-in.
BUILTIN_PLUGINS = (
    "wsolbench_plugins.poolings",
    "wsolbench_plugins.methods",
    "wsolbench_plugins.datasets",
    "wsolbench_plugins.loggers",
)

#: registration hook name -> registry kind
REGISTRATION_HOOKS = {
    "wsolbench_register_methods": "method",
    "wsolbench_register_poolings": "pooling",
    "wsolbench_register_datasets": "dataset",
    "wsolbench_register_loggers": "logger",
}


class PluginWarning(UserWarning):
    """A third-party plug-in could not be loaded (the others still work), or uses a deprecated argument."""


@dataclass
class PluginInfo:
    """What ``wsolbench list plugins`` shows about one plug-in."""

    name: str
    distribution: str
    version: str
    builtin: bool
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None  #: why loading failed
    skipped: str | None = None  #: why it was not loaded (an environment variable)

    @property
    def loaded(self) -> bool:
        return self.error is None and self.skipped is None


class PluginHost:
    """The loaded plug-ins and the registries they filled."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registries = {kind: Registry(kind) for kind in REGISTRATION_HOOKS.values()}
        self.plugins: list[PluginInfo] = []
        self._info_of: dict[int, PluginInfo] = {}  #: id(registered plug-in object) -> its info
        self.autoload = False  #: whether third-party plug-ins were looked for

    # -- loading -------------------------------------------------------------
    def load_builtins(self) -> None:
        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            info = PluginInfo(module_name.rsplit(".", 1)[-1], "wsolbench", __version__, builtin=True)
            self._register_plugin(module, info, strict=True)

    def load_entry_points(self) -> None:
        self.autoload = True
        allow = _allow_list()
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            if _normalise(dist) == "wsolbench":
                continue  # the built-ins are already loaded
            info = PluginInfo(ep.name, dist, version, builtin=False)
            if allow is not None and ep.name not in allow and _normalise(dist) not in allow:
                info.skipped = f"not in {ALLOW_LIST_ENV}"
                self.plugins.append(info)
                continue
            try:
                module = ep.load()
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - any import failure is reported
                self._fail(info, f"import failed: {type(exc).__name__}: {exc}")
                continue
            self._register_plugin(module, info, strict=False)

    def _register_plugin(self, module: ModuleType | Any, info: PluginInfo, strict: bool) -> None:
        staged: list[tuple[str, Entry]] = []
        try:
            self.pm.register(module, name=f"{info.distribution}:{info.name}")
            self.pm.check_pending()  # a hook wsolbench does not have (a misspelt name)
        except Exception as exc:  # noqa: BLE001
            if self.pm.is_registered(module):
                self.pm.unregister(module)
            if strict:
                raise
            self._fail(info, f"not a valid plug-in: {type(exc).__name__}: {exc}")
            return
        try:
            for hook_name, kind in REGISTRATION_HOOKS.items():
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    if impl.plugin is not module:
                        continue
                    register = _make_register(kind, info, staged)
                    kwargs = {"register": register}
                    impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
            for kind, entry in staged:  # dry run: detect duplicates before committing anything
                _check_free(self.registries[kind], entry, staged)
        except Exception as exc:  # noqa: BLE001
            self.pm.unregister(module)
            if strict:
                raise
            self._fail(info, f"{type(exc).__name__}: {exc}")
            return
        for kind, entry in staged:
            self.registries[kind].add(entry)
            info.registered.setdefault(kind, []).append(entry.name)
        self.plugins.append(info)
        self._info_of[id(module)] = info

    def _fail(self, info: PluginInfo, error: str) -> None:
        info.error = error
        self.plugins.append(info)
        warnings.warn(f"{_describe(info)} was not loaded: {error}", PluginWarning, stacklevel=3)

    # -- use -----------------------------------------------------------------
    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    def add_commands(self, cli: Any) -> None:
        """Let plug-ins add subcommands to the command line ``cli`` (a :class:`click.Group`).

        A command whose name is taken (by wsolbench or an earlier plug-in) is
        removed again, and a hook that raises adds nothing; both warn.
        """
        builtin = set(getattr(cli, "lazy", {}))
        for impl in self.pm.hook.wsolbench_register_commands.get_hookimpls():
            info = self._info_of.get(id(impl.plugin))
            who = _describe(info) if info else f"plug-in {impl.plugin_name!r}"
            before = dict(cli.commands)
            try:
                impl.function(**{k: v for k, v in {"cli": cli}.items() if k in impl.argnames})
            except Exception as exc:  # noqa: BLE001
                cli.commands.clear()
                cli.commands.update(before)
                warnings.warn(f"{who} failed to add its commands: {type(exc).__name__}: {exc}", PluginWarning)
                continue
            for name, command in list(cli.commands.items()):
                if before.get(name) is command:
                    continue
                if name in builtin or name in before:
                    if name in before:
                        cli.commands[name] = before[name]
                    else:
                        del cli.commands[name]
                    warnings.warn(f"{who} adds a command {name!r}, a name already taken; it was skipped",
                                  PluginWarning)
                elif info is not None:
                    info.registered.setdefault("command", []).append(name)

    def loaded_versions(self) -> dict[str, str]:
        """``{distribution: version}`` of every loaded plug-in (for manifests)."""
        return {p.distribution: p.version for p in self.plugins if p.loaded}

    def provenance(self, **names: str | None) -> dict[str, dict[str, str]]:
        """``{kind: {name, plugin, distribution, version}}`` for each ``kind=name`` given (``None``: left out).

        For example ``provenance(method="cam-avg", pooling="avg")``; recorded in
        each run's ``results.json`` as ``provided_by``.
        """
        out = {}
        for kind, name in names.items():
            if name is not None:
                entry = self.entry_for(kind, name)
                out[kind] = {"name": entry.name, "plugin": entry.plugin, "distribution": entry.distribution,
                             "version": entry.version}
        return out

    def entry_for(self, kind: str, name: str) -> Entry:
        return self.registries[kind].get(name)


def _make_register(kind: str, info: PluginInfo, staged: list[tuple[str, Entry]]):
    def register(name, factory, *, aliases=(), summary=None):  # noqa: ANN001
        if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
            raise TypeError(f"{kind} {name!r}: factory must be callable or a 'module:attr' string")
        for each in (name, *aliases):
            check_name(kind, each)
        if summary is not None:
            warnings.warn(
                f"{_describe(info)} passes summary= when registering the {kind} {name!r}; that argument is "
                f"deprecated and ignored: `wsolbench list` shows the class attribute `summary` of {factory!r}. "
                f"Move the text there and drop the argument.",
                PluginWarning,
                stacklevel=2,
            )
        staged.append(
            (
                kind,
                Entry(
                    name=name,
                    factory=factory,
                    aliases=tuple(aliases),
                    plugin=info.name,
                    distribution=info.distribution,
                    version=info.version,
                ),
            )
        )

    return register


def _describe(info: PluginInfo) -> str:
    return f"plug-in {info.name!r} from {info.distribution} {info.version}"


def _check_free(registry: Registry, entry: Entry, staged: list[tuple[str, Entry]]) -> None:
    names = (entry.name, *entry.aliases)
    for name in names:
        if name in registry:
            other = registry.get(name)
            raise DuplicateNameError(
                f"{registry.kind} name {name!r} is registered twice: by {other.source} and by {entry.source}"
            )
    for kind, other in staged:
        if other is not entry and kind == registry.kind and set(names) & {other.name, *other.aliases}:
            raise DuplicateNameError(f"{registry.kind} name {entry.name!r} is registered twice by {entry.source}")


def _allow_list() -> set[str] | None:
    raw = os.environ.get(ALLOW_LIST_ENV)
    if raw is None:
        return None
    return {_normalise(x) for x in raw.replace(";", ",").split(",") if x.strip()} | {
        x.strip() for x in raw.split(",") if x.strip()
    }


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


_HOST: PluginHost | None = None


def get_host(reload: bool = False) -> PluginHost:
    """The process-wide plugin host, built on first use."""
    global _HOST
    if _HOST is None or reload:
        host = PluginHost()
        host.load_builtins()
        if os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("1", "true", "yes"):
            host.load_entry_points()
        _HOST = host
    return _HOST


def registry(kind: str) -> Registry:
    """The registry of ``method``, ``pooling`` or ``dataset`` names."""
    return get_host().registry(kind)
