"""Built-in WSOL methods."""

from wsolbench import hookimpl

_HERE = "wsolbench_plugins.methods"


@hookimpl
def wsolbench_register_methods(register):
    register(
        "minmax", f"{_HERE}.minmax:MinMaxEntropy",
        summary="min-max entropy with recursive erasing (Belharbi et al.); u=0: no erasing",
    )
    register("cam-avg", f"{_HERE}.cam:CamAvg", summary="class activation maps with global average pooling")
