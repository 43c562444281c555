"""Built-in WSOL methods."""

from wsolbench import hookimpl

_HERE = "wsolbench_plugins.methods"


@hookimpl
def wsolbench_register_methods(register):
    register("minmax", f"{_HERE}.minmax:MinMaxEntropy")
    register("cam-avg", f"{_HERE}.cam:CamAvg")
    register("cam-max", f"{_HERE}.cam:CamMax")
    register("cam-lse", f"{_HERE}.cam:CamLse")
    register("wildcat", f"{_HERE}.cam:Wildcat")
    register("deepmil", f"{_HERE}.cam:DeepMil")
    register("gradcam", f"{_HERE}.gradcam:GradCam")
    register("unet", f"{_HERE}.unet:UNet")
    register("allones", f"{_HERE}.allones:AllOnes")
    register("has", f"{_HERE}.has:HideAndSeek", aliases=("hide-and-seek",))
    register("adl", f"{_HERE}.adl:Adl")
    register("cutmix", f"{_HERE}.cutmix:CutMix")
    register("acol", f"{_HERE}.acol:Acol")
    register("posthoc", f"{_HERE}.posthoc:PostHoc")
    register("spg", f"{_HERE}.spg:Spg")
