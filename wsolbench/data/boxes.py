"""Ground-truth boxes from a ground-truth mask.

Where a dataset gives no boxes, the box metrics read one box per connected
component of the mask's foreground (``mask >= 0.5``), in inclusive pixel
coordinates ``(x0, y0, x1, y1)``. Components are 8-connected (pixels that
touch by a corner belong together): the connectivity OpenCV's contours give
the predicted boxes, so that a map equal to the mask gives boxes that cover
the true ones.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

_EIGHT = np.ones((3, 3), dtype=bool)


def boxes_from_mask(mask: Tensor) -> Tensor:
    """``(K, 4)`` int64 boxes, one per 8-connected foreground component, in the order of their first pixel
    (row by row); ``(0, 4)`` for a mask without foreground."""
    foreground = (mask.detach().reshape(mask.shape[-2:]).float() >= 0.5).cpu().numpy()
    labels, count = ndimage.label(foreground, structure=_EIGHT)
    boxes = [(s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1) for s in ndimage.find_objects(labels)]
    return torch.tensor(boxes, dtype=torch.int64).reshape(count, 4)
