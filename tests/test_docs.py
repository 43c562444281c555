"""The documentation: its generated sections are the code's, its links resolve, the README fits on a page,
and the hooks keep the promise docs/plugins.md makes."""

from __future__ import annotations

import inspect
import re

import pytest
from conftest import REPO

from wsolbench import docs, hookspecs
from wsolbench.plugin_host import PluginInfo, _make_register

#: every hook's arguments when it was published: hooks may gain arguments, never lose or rename one
PUBLISHED_HOOK_ARGUMENTS = {
    "wsolbench_register_methods": {"register"},
    "wsolbench_register_poolings": {"register"},
    "wsolbench_register_datasets": {"register"},
    "wsolbench_register_loggers": {"register"},
    "wsolbench_register_commands": {"cli"},
}
#: the ``register`` callback's arguments
PUBLISHED_REGISTER_ARGUMENTS = {"name", "factory", "summary", "aliases"}
#: what .ci/run executes: the second line after the marker in README.md
TEST_COMMAND = 'pip install -e ".[test]" && python -m pytest -q'
README_LIMIT = 8192  # bytes: the README fits on a page; the rest is in docs/

PAGES = docs.pages(REPO)


def _page(name: str) -> str:
    return (REPO / name).read_text(encoding="utf-8")


# -- generated sections ----------------------------------------------------------------
def _section(text: str, key: str) -> str:
    return text.split(docs.begin(key), 1)[1].split(docs.end(key), 1)[0]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_generated_section_is_the_generated_one(page):
    text = page.read_text(encoding="utf-8")
    updated = docs.rewrite(text)
    stale = [key for key in docs.section_keys(text) if _section(updated, key) != _section(text, key)]
    assert updated == text, f"{page.name}: stale sections {stale}: run python -m wsolbench.docs"


def test_every_generator_and_every_built_in_command_has_its_section():
    keys = [key for page in PAGES for key in docs.section_keys(page.read_text(encoding="utf-8"))]
    assert {key.split()[0] for key in keys} == set(docs.SECTIONS), "a generator that no page uses"
    assert {f"builtins {kind}" for kind in docs.KINDS} <= set(keys)
    cli_keys = docs.section_keys(_page("docs/cli.md"))
    missing = [path for path in docs.command_paths() if " ".join(("command", *path)) not in cli_keys]
    assert not missing, f"docs/cli.md has no 'command' section for {missing}"


def _new_metric(monkeypatch):
    from wsolbench.scoring import metrics

    extra = metrics.Metric("loc_acc", "Loc.", "Loc.", "higher", "f1", "a metric added to the code")
    monkeypatch.setitem(metrics.METRICS, extra.name, extra)


def _new_method_parameter(monkeypatch):
    cls = next(e for e in docs.builtin_entries("method") if e.name == "minmax").resolve()
    monkeypatch.setitem(cls.defaults, "new_parameter", 1)


def _new_option_help(monkeypatch):
    from wsolbench.cli.run import run

    monkeypatch.setattr(next(p for p in run.params if p.name == "seed"), "help", "A changed help text.")


def _new_config_default(monkeypatch):
    from wsolbench import config

    monkeypatch.setitem(config.PROFILES["quick"]["train"], "epochs", 9)


@pytest.mark.parametrize(
    ("page", "change"),
    [
        ("docs/metrics.md", _new_metric),
        ("docs/methods.md", _new_method_parameter),
        ("docs/cli.md", _new_option_help),
        ("docs/configuration.md", _new_config_default),
    ],
    ids=["metric", "method-parameter", "option-help", "profile"],
)
def test_a_change_in_the_code_makes_its_page_stale(monkeypatch, page, change):
    text = _page(page)
    assert docs.rewrite(text) == text
    change(monkeypatch)
    assert docs.rewrite(text) != text


def test_dict_comments_come_from_the_literal_and_its_bases():
    class Base:
        defaults = {
            "a": 1,  #: the a
            #: the b,
            #: on two lines
            "b": [1,
                  2],
            "c": 3,  # an ordinary comment
        }

    class Child(Base):
        defaults = {
            **Base.defaults,
            "a": 2,
            "c": 4,  #: the c
        }

    assert docs.dict_comments(Base) == {"a": "the a", "b": "the b, on two lines"}
    assert docs.dict_comments(Child) == {"a": "the a", "b": "the b, on two lines", "c": "the c"}


def test_sections_are_rewritten_where_they_stand(monkeypatch):
    monkeypatch.setitem(docs.SECTIONS, "echo", lambda *words: " ".join(words) or "(nothing)")
    document = "\n".join([
        "# A page", docs.begin("echo one two"), "stale", docs.end("echo one two"),
        "between", docs.begin("echo"), docs.end("echo"), "after",
    ])
    assert docs.rewrite(document) == "\n".join([
        "# A page", docs.begin("echo one two"), "", "one two", "", docs.end("echo one two"),
        "between", docs.begin("echo"), "", "(nothing)", "", docs.end("echo"), "after",
    ])
    with pytest.raises(ValueError, match="no generated section 'nonesuch'"):
        docs.rewrite(f"{docs.begin('nonesuch')}\n{docs.end('nonesuch')}")
    with pytest.raises(ValueError, match="1 generated sections open but 0 close"):
        docs.rewrite(f"{docs.begin('echo')}\ntext without its end")


def test_the_command_checks_and_rewrites(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(docs.SECTIONS, "echo", lambda *words: " ".join(words))
    page = tmp_path / "page.md"
    stale = f"{docs.begin('echo fresh')}\n\nold\n\n{docs.end('echo fresh')}\n"
    page.write_text(stale, encoding="utf-8")
    assert docs.main(["--check", str(page)]) == 1
    assert "page.md is stale" in capsys.readouterr().err
    assert page.read_text(encoding="utf-8") == stale
    assert docs.main([str(page)]) == 0
    assert "\n\nfresh\n\n" in page.read_text(encoding="utf-8")
    assert docs.main(["--check", str(page)]) == 0
    page.write_text(docs.begin("echo"), encoding="utf-8")
    assert docs.main(["--check", str(page)]) == 2


# -- links and the README ----------------------------------------------------------------
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown page."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _FENCE.sub("", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in _LINK.findall(_FENCE.sub("", text)):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved.read_text(encoding="utf-8")):
            broken.append(target)
    assert not broken, f"{page.name}: links to missing files or headings: {broken}"


def test_anchors_are_github_s():
    assert _anchors("# A `code` title, with punctuation!\n```\n# not a heading\n```\n## Same\n## Same\n") == {
        "a-code-title-with-punctuation", "same", "same-1",
    }


def test_the_readme_fits_on_a_page_and_keeps_what_ci_reads():
    raw = (REPO / "README.md").read_bytes()
    assert len(raw) <= README_LIMIT, f"README.md is {len(raw)} bytes; move details to docs/"
    lines = raw.decode("utf-8").splitlines()
    marker = lines.index("<!-- test-command -->")
    assert lines[marker + 1] == "```bash"
    assert lines[marker + 2] == TEST_COMMAND
    assert "```bash\npip install . && wsolbench run\n```" in raw.decode("utf-8")


# -- the plug-in reference's promises ------------------------------------------------------
def test_hooks_keep_their_published_arguments():
    specs = {name: set(inspect.signature(f).parameters) for name, f in vars(hookspecs).items()
             if name.startswith("wsolbench_") and callable(f)}
    assert set(PUBLISHED_HOOK_ARGUMENTS) <= set(specs), "a published hook was removed"
    for name, published in PUBLISHED_HOOK_ARGUMENTS.items():
        assert published <= specs[name], f"{name} lost or renamed {sorted(published - specs[name])}"
    assert set(specs) <= set(PUBLISHED_HOOK_ARGUMENTS), "a new hook: add it to PUBLISHED_HOOK_ARGUMENTS"


def test_register_keeps_its_published_arguments():
    register = _make_register("method", PluginInfo("p", "d", "1", builtin=False), [])
    assert PUBLISHED_REGISTER_ARGUMENTS <= set(inspect.signature(register).parameters)


def test_docstring_markup_becomes_markdown():
    doc = '''First line with ``code`` and :class:`~wsolbench.interfaces.Method`.

    Use it like this::

        from wsolbench import hookimpl

    ``term``
        Its meaning,
        on two lines.
    - an item
      continued.

    1. a numbered item
       continued;
    2. another.
    '''
    assert docs.rst_to_markdown(doc) == (
        "First line with `code` and `Method`.\n\n"
        "Use it like this:\n\n```python\nfrom wsolbench import hookimpl\n```\n\n"
        "- `term`: Its meaning, on two lines.\n"
        "- an item continued.\n\n"
        "1. a numbered item continued;\n"
        "2. another.\n"
    )


def test_signatures_are_written_without_quotes_or_self():
    from wsolbench.interfaces import Method

    assert docs.signature(Method.localize) == "localize(images: Tensor, logits: Tensor | None = None) -> Tensor"


def test_values_are_written_as_toml():
    assert [docs.toml_value(v) for v in (True, "a", [1, 0.5], {"k": None}, 1e-5)] == [
        "true", '"a"', "[1, 0.5]", "{k = None}", "1e-05",
    ]
