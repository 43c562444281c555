"""Registries and the plugin manager: names, suggestions, duplicates, third-party loading."""

from __future__ import annotations

import sys
import textwrap
import warnings

import pytest

from wsolbench.errors import DuplicateNameError, UnknownNameError
from wsolbench.plugins import PluginHost, PluginWarning, get_host
from wsolbench.registry import Entry, Registry


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


def test_builtins_are_registered():
    host = get_host()
    assert "cam-avg" in host.registry("method")
    assert "avg" in host.registry("pooling")
    assert "synthetic" in host.registry("dataset")
    assert all(p.builtin for p in host.plugins if p.distribution == "wsolbench")


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """Install distributions into a temporary path that importlib.metadata scans."""

    def make(dist: str, module: str, source: str, ep_name: str | None = None) -> None:
        root = tmp_path / dist  # one folder per distribution: importlib.metadata caches listings
        root.mkdir()
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
        (info / "entry_points.txt").write_text(f"[wsolbench]\n{ep_name or dist} = {module}\n")
        monkeypatch.syspath_prepend(str(root))

    yield make
    for name in list(sys.modules):
        if name.startswith("fakeplug"):
            del sys.modules[name]


GOOD = """
    from wsolbench import hookimpl

    @hookimpl
    def wsolbench_register_methods(register):
        register("third-party-method", "collections:OrderedDict", summary="a test method")
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


def test_autoload_can_be_disabled_and_allow_listed(fake_distribution, monkeypatch):
    import wsolbench.plugins as plugins

    fake_distribution("fakeplug-good", "fakeplug_good", GOOD)
    monkeypatch.setenv("WSOLBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "third-party-method" not in plugins.get_host(reload=True).registry("method")
    monkeypatch.delenv("WSOLBENCH_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("WSOLBENCH_PLUGINS", "someone-else")
    assert "third-party-method" not in plugins.get_host(reload=True).registry("method")
    monkeypatch.setenv("WSOLBENCH_PLUGINS", "fakeplug-good")
    assert "third-party-method" in plugins.get_host(reload=True).registry("method")
    monkeypatch.delenv("WSOLBENCH_PLUGINS")
    plugins.get_host(reload=True)
