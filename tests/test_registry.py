"""Registries and the plugin manager: names, suggestions, duplicates, third-party loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
from plugin_support import write_distribution

from wsolbench.errors import DuplicateNameError, UnknownNameError
from wsolbench.plugin_host import PluginHost, PluginWarning, get_host
from wsolbench.registry import Entry, Registry, literal_summary


def test_unknown_name_suggests_close_match():
    reg = Registry("method")
    reg.add(Entry("cam-avg", lambda **kw: kw))
    with pytest.raises(UnknownNameError) as info:
        reg.get("cam_avg")
    assert "Did you mean 'cam-avg'?" in str(info.value)


def test_duplicate_names_fail_naming_both_sources():
    reg = Registry("method")
    reg.add(Entry("x", dict, plugin="first", distribution="dist-a", version="1"))
    with pytest.raises(DuplicateNameError) as info:
        reg.add(Entry("x", dict, plugin="second", distribution="dist-b", version="2"))
    assert "dist-a" in str(info.value) and "dist-b" in str(info.value)
    with pytest.raises(DuplicateNameError):
        reg.add(Entry("y", dict, aliases=("x",)))


def test_glob_listing_and_aliases_and_create_drops_none():
    reg = Registry("pooling")
    reg.add(Entry("cam-avg", dict, aliases=("gap",)))
    reg.add(Entry("cam-max", dict))
    reg.add(Entry("wildcat", dict))
    assert reg.names("cam-*") == ["cam-avg", "cam-max"]
    assert reg.names(["wild*", "cam-m*"]) == ["cam-max", "wildcat"]
    assert reg.get("gap").name == "cam-avg"
    assert reg.create("cam-avg", a=1, b=None) == {"a": 1}


def test_lazy_factory_string_is_imported_on_use():
    reg = Registry("method")
    reg.add(Entry("od", "collections:OrderedDict"))
    from collections import OrderedDict

    assert reg.resolve("od") is OrderedDict


#: in a fresh interpreter: ``wsolbench list`` of each kind, then what it imported of the built-in plug-ins
LIST_AND_IMPORTS = """
import json, sys
from wsolbench.cli import main
for kind in ("methods", "poolings", "datasets", "loggers"):
    print("==", kind)
    try:
        main(["list", kind])
    except SystemExit:
        pass
print(json.dumps([m for m in sys.modules if m.startswith("wsolbench_plugins.") or m in ("torch", "timm")]))
"""


def test_list_shows_each_builtins_class_summary_without_importing_its_module():
    env = {**os.environ, "WSOLBENCH_DISABLE_PLUGIN_AUTOLOAD": "1", "COLUMNS": "250"}
    proc = subprocess.run([sys.executable, "-c", LIST_AND_IMPORTS], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    *listing, last = proc.stdout.strip().splitlines()
    assert sorted(json.loads(last)) == ["wsolbench_plugins.datasets", "wsolbench_plugins.loggers",
                                        "wsolbench_plugins.methods", "wsolbench_plugins.poolings"], \
        "list imported a plug-in module"
    shown: dict[str, dict[str, str]] = {}
    for line in listing:
        if line.startswith("== "):
            table = shown.setdefault(line[3:-1], {})  # "methods" -> "method"
        elif "│" in line:
            name, summary, _ = (cell.strip() for cell in line.split("│"))
            table[name.split(" (alias")[0]] = summary  # "has (alias: hide-and-seek)" -> "has"
    host = get_host()
    for kind in ("method", "pooling", "dataset", "logger"):
        entries = host.registry(kind).entries()
        assert sorted(shown[kind]) == [entry.name for entry in entries]
        for entry in entries:
            cls = entry.resolve()
            assert cls.summary and "summary" in vars(cls), f"{kind} {entry.name} has no summary of its own"
            assert shown[kind][entry.name] == cls.summary, (kind, entry.name)


def test_builtins_register_without_plugin_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        PluginHost().load_builtins()


SUMMARIES = """
    import typing
    from collections import OrderedDict as External

    PREFIX = "built "

    class Literal:
        summary = "a literal"

    class Annotated:
        summary: typing.ClassVar[str] = (
            "a literal "
            "on two lines"
        )

    class Child(Literal):
        other = 1

    class GrandChild(Child):
        pass

    class Computed:
        summary = PREFIX + "at import"

    class FromOutside(External):
        pass

    class Mixed(Literal, External):
        pass

    class Method:
        def summary(self):
            return "a method"

    class Shadowed:
        summary = "stale"

    Shadowed = Literal
"""
#: a module that sets a class's ``summary`` after its ``class`` statement
PATCHED = """
    class Patched:
        summary = "before"

    Patched.summary = "after"
"""


@pytest.fixture
def summaries_module(tmp_path, monkeypatch):
    """:data:`SUMMARIES` and :data:`PATCHED` as modules ``NAME`` and ``NAME_patched`` (``NAME`` unique per test)."""
    name = f"summaries_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(SUMMARIES))
    (tmp_path / f"{name}_patched.py").write_text(textwrap.dedent(PATCHED))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)
    sys.modules.pop(f"{name}_patched", None)


def test_summary_is_read_from_source_only_where_the_source_says_it(summaries_module):
    name = summaries_module
    read = {cls: literal_summary(f"{name}:{cls}") for cls in (
        "Literal", "Annotated", "Child", "GrandChild", "Computed", "FromOutside", "Mixed", "Method", "Shadowed",
        "Missing", "Literal.summary")}
    assert read == {
        "Literal": "a literal", "Annotated": "a literal on two lines", "Child": "a literal", "GrandChild": "a literal",
        "Computed": None, "FromOutside": None, "Mixed": None, "Method": None, "Shadowed": None, "Missing": None,
        "Literal.summary": None,
    }
    assert literal_summary(f"{name}_patched:Patched") is None
    assert name not in sys.modules and f"{name}_patched" not in sys.modules  # reading the source ran none of it
    assert literal_summary("no_such_package_anywhere.module:Class") is None


def test_entry_summary_imports_the_factory_when_the_source_does_not_say(summaries_module):
    name = summaries_module
    assert Entry("x", f"{name}:GrandChild").summary == "a literal"
    assert name not in sys.modules
    assert Entry("x", f"{name}:Computed").summary == "built at import"
    assert name in sys.modules
    assert Entry("x", f"{name}:Shadowed").summary == "a literal"
    assert Entry("x", f"{name}_patched:Patched").summary == "after"
    assert Entry("x", f"{name}:FromOutside").summary == ""  # OrderedDict has none

    class Callable:
        summary = "given as a class"

    assert Entry("x", Callable).summary == "given as a class"
    assert Entry("x", dict).summary == ""


def test_builtins_are_registered():
    host = get_host()
    assert "cam-avg" in host.registry("method")
    assert "avg" in host.registry("pooling")
    assert "synthetic" in host.registry("dataset")
    assert all(p.builtin for p in host.plugins if p.distribution == "wsolbench")


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """Install distributions into a temporary path that importlib.metadata scans.

    Afterwards the path is gone and the process-wide plugin host is rebuilt on next use.
    """
    import wsolbench.plugin_host as plugins

    roots = []

    def make(dist: str, module: str, source: str, ep_name: str | None = None) -> None:
        root = tmp_path / dist  # one folder per distribution: importlib.metadata caches listings
        write_distribution(root, dist, module, source, entry_point=ep_name)
        monkeypatch.syspath_prepend(str(root))
        roots.append(str(root))

    yield make
    sys.path[:] = [p for p in sys.path if p not in roots]
    for name in list(sys.modules):
        if name.startswith("fakeplug"):
            del sys.modules[name]
    plugins._HOST = None


GOOD = """
    from wsolbench import hookimpl

    @hookimpl
    def wsolbench_register_methods(register):
        register("third-party-method", "collections:OrderedDict")
"""


def test_third_party_plugin_loads_and_broken_ones_warn(fake_distribution):
    fake_distribution("fakeplug-good", "fakeplug_good", GOOD)
    fake_distribution("fakeplug-broken", "fakeplug_broken", "raise ImportError('boom')\n")
    fake_distribution(
        "fakeplug-dup",
        "fakeplug_dup",
        """
        from wsolbench import hookimpl

        @hookimpl
        def wsolbench_register_methods(register):
            register("unique-name-from-dup", "collections:OrderedDict")
            register("cam-avg", "collections:OrderedDict")
        """,
    )
    host = PluginHost()
    host.load_builtins()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        host.load_entry_points()
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert any("fakeplug-broken" in m and "boom" in m for m in messages)
    assert any("fakeplug-dup" in m and "cam-avg" in m and "wsolbench" in m for m in messages), messages
    methods = host.registry("method")
    assert "third-party-method" in methods
    assert methods.get("third-party-method").distribution == "fakeplug-good"
    assert "unique-name-from-dup" not in methods  # a failing plug-in registers nothing
    assert methods.get("cam-avg").distribution == "wsolbench"
    errors = {p.distribution: p.error for p in host.plugins}
    assert errors["fakeplug-good"] is None and errors["fakeplug-broken"]


def test_a_summary_passed_to_register_is_ignored_with_a_warning(fake_distribution):
    fake_distribution("fakeplug-old", "fakeplug_old", """
        from wsolbench import hookimpl

        class Method:
            summary = "from the class"

        @hookimpl
        def wsolbench_register_methods(register):
            register("old-style-method", f"{__name__}:Method", summary="from the registration")
        """)
    host = _host()
    messages = _load(host)
    assert any("fakeplug-old" in m and "summary=" in m and "'old-style-method'" in m and "ignored" in m
               and "class attribute" in m for m in messages), messages
    assert host.registry("method").get("old-style-method").summary == "from the class"


def test_autoload_can_be_disabled_and_allow_listed(fake_distribution, monkeypatch):
    import wsolbench.plugin_host as plugins

    fake_distribution("fakeplug-good", "fakeplug_good", GOOD)
    monkeypatch.setenv("WSOLBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "third-party-method" not in plugins.get_host(reload=True).registry("method")
    monkeypatch.delenv("WSOLBENCH_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("WSOLBENCH_PLUGINS", "someone-else")
    assert "third-party-method" not in plugins.get_host(reload=True).registry("method")
    monkeypatch.setenv("WSOLBENCH_PLUGINS", "fakeplug-good")
    assert "third-party-method" in plugins.get_host(reload=True).registry("method")


def _load(host: PluginHost) -> list[str]:
    """Load the entry points into ``host``; the plug-in warnings' messages."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        host.load_entry_points()
    return [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]


def _host() -> PluginHost:
    host = PluginHost()
    host.load_builtins()
    return host


def test_invalid_names_unknown_hooks_and_exits_at_import_skip_only_that_plugin(fake_distribution):
    fake_distribution("fakeplug-good", "fakeplug_good", GOOD)
    fake_distribution(
        "fakeplug-spaces",
        "fakeplug_spaces",
        """
        from wsolbench import hookimpl

        @hookimpl
        def wsolbench_register_methods(register):
            register("fine-name", "collections:OrderedDict")
            register("two words", "collections:OrderedDict")
        """,
    )
    fake_distribution("fakeplug-exit", "fakeplug_exit", "import sys\nsys.exit('refusing to load')\n")
    fake_distribution(
        "fakeplug-typo",
        "fakeplug_typo",
        """
        from wsolbench import hookimpl

        @hookimpl
        def wsolbench_register_method(register):
            register("typo-method", "collections:OrderedDict")
        """,
    )
    host = _host()
    messages = _load(host)
    assert any("fakeplug-spaces" in m and "two words" in m for m in messages), messages
    assert any("fakeplug-exit" in m and "refusing to load" in m for m in messages), messages
    assert any("fakeplug-typo" in m and "wsolbench_register_method" in m for m in messages), messages
    methods = host.registry("method")
    assert "third-party-method" in methods and "fine-name" not in methods
    assert set(host.loaded_versions()) == {"wsolbench", "fakeplug-good"}


def test_allow_list_lists_the_others_as_not_loaded(fake_distribution, monkeypatch):
    fake_distribution("fakeplug-good", "fakeplug_good", GOOD)
    fake_distribution("fakeplug-broken", "fakeplug_broken", "raise ImportError('boom')\n")
    monkeypatch.setenv("WSOLBENCH_PLUGINS", "fakeplug_good")  # either spelling of a distribution name
    host = _host()
    assert _load(host) == []  # the broken one is never imported
    status = {p.distribution: (p.loaded, p.skipped) for p in host.plugins}
    assert status["fakeplug-good"] == (True, None)
    assert status["fakeplug-broken"] == (False, "not in WSOLBENCH_PLUGINS")
    assert "fakeplug-broken" not in host.loaded_versions()


COMMANDS = """
    import click
    from wsolbench import hookimpl

    @hookimpl
    def wsolbench_register_commands(cli):
        {body}
"""


def test_plugin_commands_cannot_replace_taken_names(fake_distribution):
    import click

    def plugin(dist: str, body: str) -> None:
        fake_distribution(dist, dist.replace("-", "_"), COMMANDS.format(body=body))

    plugin("fakeplug-a", "cli.add_command(click.Command('extra', help='from a'))")
    plugin("fakeplug-b", "cli.add_command(click.Command('extra', help='from b')); "
                         "cli.add_command(click.Command('run')); cli.add_command(click.Command('b-own'))")
    plugin("fakeplug-c", "cli.add_command(click.Command('c-own')); raise RuntimeError('half-way')")
    host = _host()
    assert _load(host) == []
    group = click.Group("wsolbench")
    group.lazy = {"run": ("wsolbench.cli.run:run", "")}  # as the real group keeps its built-ins
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        host.add_commands(group)
    messages = [str(w.message) for w in caught]
    assert sorted(group.commands) == ["b-own", "extra"]
    assert group.commands["extra"].help == "from a"
    assert any("fakeplug-b" in m and "'extra'" in m for m in messages), messages
    assert any("fakeplug-b" in m and "'run'" in m for m in messages), messages
    assert any("fakeplug-c" in m and "half-way" in m for m in messages), messages
    registered = {p.distribution: p.registered.get("command") for p in host.plugins}
    assert registered["fakeplug-a"] == ["extra"] and registered["fakeplug-b"] == ["b-own"]
    assert registered["fakeplug-c"] is None


def test_a_factory_that_fails_to_import_is_a_user_error_naming_the_distribution(fake_distribution, capsys):
    import wsolbench.plugin_host as plugins
    from wsolbench.cli import main
    from wsolbench.errors import PluginImportError

    fake_distribution(
        "fakeplug-stale",
        "fakeplug_stale",
        """
        from wsolbench import hookimpl

        @hookimpl
        def wsolbench_register_methods(register):
            register("stale-method", "fakeplug_stale_gone.method:Method")
        """,
    )
    plugins.get_host(reload=True)
    with pytest.raises(PluginImportError, match="fakeplug-stale 1.2.3"):
        plugins.registry("method").resolve("stale-method")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--method", "stale-method", "--show-config"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "fakeplug-stale" in err and "fakeplug_stale_gone" in err and "Traceback" not in err
    main(["list", "methods", "stale-*"])  # the listing says so in the summary's place and goes on
    listing = capsys.readouterr().out
    assert "stale-method" in listing and "fakeplug_stale_gone.method:Method" in listing and "fails" in listing
