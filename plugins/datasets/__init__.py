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
