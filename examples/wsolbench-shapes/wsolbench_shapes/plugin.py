"""The hook implementations wsolbench calls (the module named by the entry point).

It imports nothing heavy: each factory is a ``"module:attribute"`` string that
wsolbench imports only when the name is used, so ``wsolbench list`` and
``wsolbench --help`` stay fast; the line ``wsolbench list`` shows for each is
its class's ``summary``, which wsolbench reads from the module's source. The
command is imported when the command line is built, and its module keeps torch
out of its top level for the same reason.
"""

from wsolbench import hookimpl

_HERE = "wsolbench_shapes"


@hookimpl
def wsolbench_register_datasets(register):
    register("shapes", f"{_HERE}.dataset:Shapes")


@hookimpl
def wsolbench_register_poolings(register):
    register("gem", f"{_HERE}.pooling:GemPooling")


@hookimpl
def wsolbench_register_commands(cli):
    from wsolbench_shapes.preview import preview

    cli.add_command(preview)
