"""Built-in pooling heads."""

from wsolbench import hookimpl

_HERE = "wsolbench_plugins.poolings"


@hookimpl
def wsolbench_register_poolings(register):
    register("avg", f"{_HERE}.standard:AvgPooling")
    register("max", f"{_HERE}.standard:MaxPooling")
    register("lse", f"{_HERE}.standard:LsePooling")
    register("wildcat", f"{_HERE}.wildcat:WildcatPooling")
    register("mil", f"{_HERE}.mil:GatedAttentionPooling")
