"""Built-in datasets."""

from wsolbench import hookimpl

_HERE = "wsolbench_plugins.datasets"


@hookimpl
def wsolbench_register_datasets(register):
    register("synthetic", f"{_HERE}.synthetic:Synthetic")
    register("glas", f"{_HERE}.glas:Glas")
    register("cub", f"{_HERE}.cub:Cub")
    register("cub5", f"{_HERE}.cub:Cub5")
    register("oxf", f"{_HERE}.oxf:Oxf")
    register("folder", f"{_HERE}.folder:Folder")
    register("wsoleval", f"{_HERE}.wsoleval:WsolEval")
