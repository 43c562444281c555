"""Hook specifications: the whole contract between wsolbench and its plug-ins.

A plug-in is a module (or object) with functions named like the hooks below and
decorated with :data:`hookimpl`::

    from wsolbench import hookimpl

    @hookimpl
    def wsolbench_register_methods(register):
        register("my-method", "my_package.method:MyMethod")

Plug-ins are found through the ``wsolbench`` entry-point group. An
implementation may accept fewer arguments than its specification lists, so
hooks can gain arguments without breaking plug-ins. Hooks never lose or rename
arguments.

Registration hooks receive a ``register`` callback rather than returning a list,
so wsolbench validates each entry as it arrives and can say which plug-in it
came from. ``register`` takes:

``name``
    The public name (lower case, words joined by ``-``), as typed on the
    command line: ``wsolbench run --method NAME``.
``factory``
    The class to instantiate, or a ``"module:attribute"`` string naming it.
    The string form is preferred: the module is imported only when the
    entry is used, so ``wsolbench list`` and ``--help`` stay fast.
``aliases``
    Other names that resolve to the same entry.

The line ``wsolbench list`` shows is not given here: it is the class's
``summary`` attribute (see the contracts). A ``summary=`` argument, which
``register`` once took, is accepted but ignored, with a warning.
"""

from __future__ import annotations

import pluggy

PROJECT = "wsolbench"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def wsolbench_register_methods(register):
    """Register WSOL methods.

    Each factory must produce a :class:`wsolbench.interfaces.Method` when called
    as ``factory(num_classes=K, **params)``; ``params`` are the method's
    ``defaults`` after profile, configuration-file and ``--set method.KEY=VALUE``
    overrides.
    """


@hookspec
def wsolbench_register_poolings(register):
    """Register pooling heads.

    Each factory must produce a :class:`wsolbench.interfaces.Pooling` when
    called as ``factory(num_classes=K, in_channels=C, **params)``.
    """


@hookspec
def wsolbench_register_datasets(register):
    """Register datasets.

    Each factory must produce a :class:`wsolbench.interfaces.Dataset` when
    called as ``factory(root=PATH_OR_NONE, seed=S, **params)``.
    """


@hookspec
def wsolbench_register_loggers(register):
    """Register experiment loggers.

    Each factory must produce a :class:`wsolbench.interfaces.Logger` when called
    as ``factory(run_dir=PATH, config=DICT)``; a run uses the loggers its
    ``loggers`` setting names (``wsolbench run --logger NAME``).
    """


@hookspec
def wsolbench_register_commands(cli):
    """Add subcommands to the ``wsolbench`` command line.

    ``cli`` is the top-level :class:`click.Group`; call ``cli.add_command(cmd)``.
    Keep heavy imports inside the command's function so ``wsolbench --help``
    stays fast.
    """
