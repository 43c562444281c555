"""Dense-CRF post-processing of localization maps (Krähenbühl & Koltun, NIPS 2011).

A map ``p`` in [0, 1] is read as the foreground probability of each pixel;
the two-label fully connected CRF (unary ``-log p`` / ``-log (1 - p)``, a
Gaussian smoothness kernel and a bilateral appearance kernel on the RGB image)
returns refined foreground marginals in [0, 1], scored like any other map.

The parameters are those of the paper (Belharbi et al., appendix "Post-processing
using CRF"): Gaussian compatibility 3, bilateral compatibility 10; histology
(GlaS) 2 iterations, ``sxy`` 3 (Gaussian), 13 (bilateral), ``srgb`` 3; natural
images (CUB, OxF) 5 iterations, 5, 19, 11. A dataset plug-in states its own as
the class attribute ``crf_params`` (keys of :class:`CrfParams`); datasets that
state none get :data:`NATURAL`. ``--set eval.crf_params={...}`` overrides single keys.

Needs ``pydensecrf`` (``pip install 'wsolbench[crf]'``, the ``pydensecrf2``
distribution).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsolbench.errors import ConfigError, UserError


@dataclass(frozen=True)
class CrfParams:
    iterations: int = 5
    gauss_sxy: float = 5.0
    gauss_compat: float = 3.0
    bilateral_sxy: float = 19.0
    bilateral_srgb: float = 11.0
    bilateral_compat: float = 10.0


#: CUB, CUB5, Oxford Flowers in the paper
NATURAL = CrfParams()
#: GlaS in the paper
HISTOLOGY = CrfParams(iterations=2, gauss_sxy=3.0, bilateral_sxy=13.0, bilateral_srgb=3.0)


def params_for(dataset: Any, overrides: dict[str, Any] | None = None) -> CrfParams:
    """The dataset's ``crf_params`` (or :data:`NATURAL`) with ``overrides`` applied."""
    merged = {**dataclasses.asdict(NATURAL), **(getattr(dataset, "crf_params", None) or {}), **(overrides or {})}
    known = {f.name for f in dataclasses.fields(CrfParams)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ConfigError(f"unknown CRF parameters {unknown}; known: {sorted(known)}")
    params = CrfParams(**merged)
    if params.iterations < 1:
        raise ConfigError("the CRF needs at least one iteration (eval.crf_params.iterations >= 1)")
    return params


def require_pydensecrf() -> Any:
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as exc:
        raise UserError(
            "dense-CRF post-processing needs pydensecrf: pip install 'wsolbench[crf]' "
            "(the pydensecrf2 distribution), or leave eval.crf off"
        ) from exc
    return dcrf


def refine(prob: np.ndarray, image: np.ndarray, params: CrfParams = NATURAL) -> np.ndarray:
    """CRF foreground marginals ``(H, W)`` float32 in [0, 1].

    ``prob``: the map ``(H, W)`` in [0, 1]; ``image``: the un-normalised RGB
    image ``(H, W, 3)`` uint8 at the same size.
    """
    dcrf = require_pydensecrf()
    from pydensecrf.utils import unary_from_softmax

    prob = np.asarray(prob, dtype=np.float32)
    h, w = prob.shape
    if image.shape != (h, w, 3) or image.dtype != np.uint8:
        raise ValueError(f"the CRF needs a uint8 RGB image of shape {(h, w, 3)}, got {image.dtype} {image.shape}")
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.stack([1.0 - prob, prob]))))
    crf.addPairwiseGaussian(sxy=params.gauss_sxy, compat=params.gauss_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=np.ascontiguousarray(image),
        compat=params.bilateral_compat,
    )
    marginals = np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(2, h, w)
    return marginals[1]
