"""``wsolbench hide-and-seek-demo``: a picture of how Hide-and-Seek hides one training image.

Use it to choose ``method.patch_sizes`` for a dataset: a patch should be small
enough that hiding half of them leaves parts of the object visible, and large
enough to hide a whole discriminative part. Heavy imports stay inside the
command so that ``wsolbench --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

import click


@click.command("hide-and-seek-demo")
@click.option("--dataset", "-d", default="synthetic", show_default=True, help="A registered dataset.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="The dataset's folder.")
@click.option("--profile", type=click.Choice(["quick", "paper"]), default="quick", show_default=True,
              help="Settings (image size) as in a run with this profile.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a setting, as for `wsolbench run`.")
@click.option("--split", default="train", show_default=True, help="The split to take the image from.")
@click.option("--index", type=click.IntRange(min=0), default=0, show_default=True, help="The image's position.")
@click.option("--patch-size", "patch_sizes", type=click.IntRange(min=0), multiple=True, default=(16,),
              show_default=True, help="Patch size S in pixels (repeat for one row per size; 0 hides nothing).")
@click.option("--hide-prob", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Probability of hiding each patch.")
@click.option("--draws", type=click.IntRange(min=1), default=4, show_default=True, help="Hidings per patch size.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random hidings.")
@click.option("--zoom", type=click.IntRange(min=1), default=2, show_default=True, help="Pixel magnification.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default="hide-and-seek.png", show_default=True)
def demo(dataset, data_root, profile, sets, split, index, patch_sizes, hide_prob, draws, seed, zoom,
         output) -> None:  # noqa: ANN001
    """Save a picture of one image as Hide-and-Seek hides it during training.

    One row per --patch-size: the image as evaluation sees it, then DRAWS
    random hidings, hidden pixels in the ImageNet mean colour (zero after
    wsolbench's default normalisation). Tiles are separated by 2 white pixels
    (before --zoom).
    """
    import io

    import numpy as np
    import torch
    from PIL import Image

    from wsolbench import assembly, config
    from wsolbench.data.transforms import IMAGENET_MEAN
    from wsolbench.errors import UserError
    from wsolbench.scoring.extras import raw_rgb
    from wsolbench.utils import atomic_write_bytes
    from wsolbench_hide_and_seek.method import hiding_mask

    cfg = config.resolve("hide-and-seek", dataset, profile, None, {"data_root": data_root}, list(sets))
    data = assembly.build_dataset(cfg)
    if split not in data.split_names:
        raise UserError(f"dataset {dataset!r} has no split {split!r}; its splits: {', '.join(data.split_names)}")
    items = data.split(split, train=False)
    if index >= len(items):
        raise UserError(
            f"split {split!r} of dataset {dataset!r} has {len(items)} images; --index {index} is past the end"
        )
    height, width = items[index]["image"].shape[-2:]
    image = raw_rgb(items, index, (height, width))
    mean_rgb = np.round(np.array(IMAGENET_MEAN) * 255).astype(np.uint8)
    generator = torch.Generator().manual_seed(seed)
    rows, fractions = [], []
    for size in patch_sizes:
        tiles = [image]
        for _ in range(draws):
            hidden = hiding_mask(1, (height, width), [size], hide_prob, generator=generator)[0, 0].numpy()
            tile = image.copy()
            tile[hidden] = mean_rgb
            tiles.append(tile)
            fractions.append(f"{100 * hidden.mean():.0f}%")
        rows.append(tiles)
    picture = _grid(rows, gap=2)
    picture = picture.repeat(zoom, axis=0).repeat(zoom, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    atomic_write_bytes(output, buffer.getvalue())
    click.echo(
        f"wrote {output}: {split} image {index} of {dataset} ({width}x{height}); one row per patch size "
        f"({', '.join(f'{s} px' for s in patch_sizes)}), the image then {draws} hidings; "
        f"hidden: {' '.join(fractions)}"
    )


def _grid(rows: list[list[Any]], gap: int) -> Any:
    """Equal-sized ``(H, W, 3)`` uint8 tiles in rows and columns on white, ``gap`` pixels apart."""
    import numpy as np

    h, w = rows[0][0].shape[:2]
    n_rows, n_cols = len(rows), len(rows[0])
    out = np.full((n_rows * (h + gap) - gap, n_cols * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = tile
    return out
