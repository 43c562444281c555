"""``wsolbench predict``: maps, overlays, boxes and classes of a trained model on your own images."""

from __future__ import annotations

import sys

import click
from rich.markup import escape

from wsolbench.cli.console import err, out
from wsolbench.cli.run import progress_display


@click.command("predict")
@click.argument("model_path", metavar="RUN_OR_FILE", type=click.Path(exists=True))
@click.argument("inputs", metavar="IMAGE_OR_FOLDER...", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder for maps/<id>.npy, overlays/<id>.png and predictions.csv.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per forward pass (default: the run's eval.batch_size).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Threshold of the region and box (default: the run's eval.threshold).")
@click.option("--class", "class_name", default=None, metavar="NAME",
              help="Draw the map of this class (a name or an index) instead of the predicted one.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="The run's dataset folder, for datasets whose class names are read from their files.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def predict(model_path, inputs, output, device, batch_size, threshold, class_name, data_root, quiet) -> None:  # noqa: ANN001
    """Predict the class and the map of each image with a trained model.

    RUN_OR_FILE is a run directory (its best.pt) or a .wsol file made by
    `wsolbench export`. Images are JPEG, PNG, BMP or TIFF files, greyscale or
    RGBA included; folders are searched recursively. Each image gets its map at
    its own size (maps/<id>.npy, float in [0, 1], ready for `wsolbench evaluate
    --scoremaps`), a picture (overlays/<id>.png: the image, the map, the region
    at the threshold and its box) and a row of predictions.csv (the predicted
    class, its probability, the top-5 classes, the box x0,y0,x1,y1). Files that
    cannot be read are listed at the end (exit status 2); the other images are
    still predicted. The run directory is never changed.
    """
    from wsolbench.runs import inference  # torch: see wsolbench.cli

    images = inference.collect_images(inputs)
    model = inference.load(model_path, device=device, data_root=data_root)
    wanted = None if class_name is None else model.class_index(class_name)
    with progress_display(quiet) as listener:
        failures = inference.predict_files(model, images, output, wanted, threshold, batch_size, listener)
    done = len(images) - len(failures)
    out.print(f"{done} image(s) predicted; written to [bold]{escape(str(output))}[/bold]")
    if failures:
        for _, reason in failures:
            err.print(f"[red]unreadable:[/red] {escape(reason)}", soft_wrap=True)
        err.print(f"[red]Error:[/red] {len(failures)} of {len(images)} file(s) could not be read.")
        sys.exit(2)
