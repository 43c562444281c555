"""Built-in datasets."""

from wsolbench import hookimpl

_HERE = "wsolbench_plugins.datasets"


@hookimpl
def wsolbench_register_datasets(register):
    register(
        "synthetic",
        f"{_HERE}.synthetic:Synthetic",
        summary="generated on the fly: textured objects among distractors, exact masks (no download)",
    )
    register("glas", f"{_HERE}.glas:Glas", summary="GlaS colon histology: 165 images, benign/malignant, gland masks")
    register("cub", f"{_HERE}.cub:Cub", summary="CUB-200-2011 birds: 200 species, 11,788 images, segmentations")
    register("cub5", f"{_HERE}.cub:Cub5", summary="CUB5: the paper's five CUB-200-2011 species")
    register("oxf", f"{_HERE}.oxf:Oxf", summary="Oxford Flowers 102: 8,189 images, official splits, segmentations")
    register("folder", f"{_HERE}.folder:Folder", summary="your own data: class folders of images, masks alongside")
