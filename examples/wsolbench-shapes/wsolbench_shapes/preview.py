"""``wsolbench shapes-preview``: a picture of the first images of a split of ``shapes`` and their masks.

Heavy imports stay inside the command so that ``wsolbench --help`` stays fast.
"""

from __future__ import annotations

import click


@click.command("shapes-preview")
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="train", show_default=True)
@click.option("--count", type=click.IntRange(min=1), default=4, show_default=True, help="Images to show.")
@click.option("--image-size", type=click.IntRange(min=16), default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="The dataset's seed (as `wsolbench run --seed`).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default="shapes.png", show_default=True)
def preview(split, count, image_size, seed, output) -> None:  # noqa: ANN001
    """Save the first COUNT images of a split of the shapes dataset, their masks below them.

    Tiles are separated by 2 white pixels; masks are white on black.
    """
    import numpy as np
    from PIL import Image

    from wsolbench_shapes.dataset import draw

    gap = 2
    step = image_size + gap
    picture = np.full((2 * step - gap, count * step - gap, 3), 255, dtype=np.uint8)
    labels = []
    for i in range(count):
        image, label, mask = draw(seed, split, i, image_size)
        picture[:image_size, i * step: i * step + image_size] = image
        picture[step:, i * step: i * step + image_size] = (mask[..., None] * 255).astype(np.uint8)
        labels.append(("disc", "square")[label])
    Image.fromarray(picture).save(output)
    click.echo(f"wrote {output}: the first {count} {split} images of shapes ({', '.join(labels)}), masks below")
