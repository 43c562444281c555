"""Built-in pooling heads."""

from wsolbench import hookimpl

_HERE = "wsolbench_plugins.poolings"


@hookimpl
def wsolbench_register_poolings(register):
    register("avg", f"{_HERE}.standard:AvgPooling", summary="global average pooling of class maps (CAM)")
