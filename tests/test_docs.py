"""docs/plugins.md: its reference is the code's, and the hooks keep the promise it makes."""

from __future__ import annotations

import inspect

from wsolbench import docs, hookspecs
from wsolbench.plugins import PluginInfo, _make_register

from conftest import REPO

#: every hook's arguments when it was published: hooks may gain arguments, never lose or rename one
PUBLISHED_HOOK_ARGUMENTS = {
    "wsolbench_register_methods": {"register"},
    "wsolbench_register_poolings": {"register"},
    "wsolbench_register_datasets": {"register"},
    "wsolbench_register_commands": {"cli"},
}
#: the ``register`` callback's arguments
PUBLISHED_REGISTER_ARGUMENTS = {"name", "factory", "summary", "aliases"}


def test_the_committed_reference_is_the_generated_one():
    text = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert docs.with_reference(text) == text, "docs/plugins.md is stale: run python -m wsolbench.docs"


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
    '''
    assert docs.rst_to_markdown(doc) == (
        "First line with `code` and `Method`.\n\n"
        "Use it like this:\n\n```python\nfrom wsolbench import hookimpl\n```\n\n"
        "- `term`: Its meaning, on two lines.\n"
        "- an item continued.\n"
    )


def test_signatures_are_written_without_quotes_or_self():
    from wsolbench.interfaces import Method

    assert docs.signature(Method.localize) == "localize(images: Tensor, logits: Tensor | None = None) -> Tensor"
