"""Built-in experiment loggers."""

from wsolbench import hookimpl

_HERE = "wsolbench_plugins.loggers"


@hookimpl
def wsolbench_register_loggers(register):
    register("csv", f"{_HERE}.files:CsvLogger")
    register("tensorboard", f"{_HERE}.files:TensorBoardLogger")
