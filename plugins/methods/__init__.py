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
    register("cam-max", f"{_HERE}.cam:CamMax", summary="class activation maps with global max pooling")
    register("cam-lse", f"{_HERE}.cam:CamLse", summary="class activation maps with log-sum-exp pooling")
    register("wildcat", f"{_HERE}.cam:Wildcat", summary="Wildcat: multi-map class-wise pooling, top and bottom regions")
    register("deepmil", f"{_HERE}.cam:DeepMil", summary="attention-based deep MIL; the attention map localizes")
    register("gradcam", f"{_HERE}.gradcam:GradCam", summary="post-hoc Grad-CAM on a trained classifier")
    register("unet", f"{_HERE}.unet:UNet", summary="U-Net trained with pixel masks (full supervision, upper bound)")
    register("allones", f"{_HERE}.allones:AllOnes", summary="constant map of ones; no training, no classification")
