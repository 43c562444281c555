"""Built-in pooling heads."""

from wsolbench import hookimpl

_HERE = "wsolbench_plugins.poolings"


@hookimpl
def wsolbench_register_poolings(register):
    register("avg", f"{_HERE}.standard:AvgPooling", summary="global average pooling of class maps (CAM)")
    register("max", f"{_HERE}.standard:MaxPooling", summary="global max pooling of class maps")
    register(
        "lse", f"{_HERE}.standard:LsePooling", summary="log-sum-exp pooling of class maps, sharpness pooling.r"
    )
    register(
        "wildcat",
        f"{_HERE}.wildcat:WildcatPooling",
        summary="Wildcat: M maps per class, top-kmax mean + alpha x bottom-kmin mean",
    )
    register(
        "mil",
        f"{_HERE}.mil:GatedAttentionPooling",
        summary="gated-attention deep MIL (Ilse et al.), one attention map per class",
    )
