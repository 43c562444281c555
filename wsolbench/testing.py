"""Contract checks for method plug-ins: run them on tiny inputs before a real experiment.

:func:`check_method` builds a registered method (built-in or from any installed
plug-in) on random images and asserts what the engine relies on::

    from wsolbench.testing import check_method

    def test_my_method_meets_the_contract():
        check_method("my-method")

Each failed check raises an :class:`AssertionError` that names the method and
says what to fix. The checks:

- the factory builds a :class:`~wsolbench.interfaces.Method`;
- for trainable methods, one training step on a batch gives a finite scalar
  loss and its backward pass reaches the parameters with finite gradients;
- methods without ``needs_masks = True`` train on batches without pixel masks
  (the engine never gives them masks); methods with it get them;
- in evaluation mode, ``predict`` gives finite ``(N, K)`` scores; ``localize``
  (with and without the scores) and ``infer`` give finite maps in [0, 1] of
  shape ``(N, H, W)``, the input's size, which agree with each other;
- inference leaves no gradient in any parameter (for methods with
  ``needs_grad_at_inference``, which run with autograd on, as in the engine).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from wsolbench.interfaces import Method, ModelSpec

#: the network of the quick profile: ResNet-18 from scratch, dilated to output stride 8
TINY_MODEL = ModelSpec(backbone="resnet18", pretrained=False, output_stride=8)


def make_batch(
    num_classes: int, size: tuple[int, int], n: int = 2, masks: bool = True, seed: int = 0
) -> dict[str, Tensor]:
    """A random training batch in the engine's format (``mask`` only when ``masks``)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    batch = {
        "image": torch.randn(n, 3, h, w, generator=g),
        "label": torch.arange(n) % num_classes,
        "index": torch.arange(n),
    }
    if masks:
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        square = ((yy >= h // 4) & (yy < 3 * h // 4) & (xx >= w // 4) & (xx < 3 * w // 4)).float()
        batch["mask"] = square.expand(n, 1, h, w).clone()
    return batch


def build_method(name: str, num_classes: int = 2, model: ModelSpec | None = None, **params: Any) -> Method:
    """Instantiate the registered method ``name`` as the engine does."""
    from wsolbench.plugins import registry

    method = registry("method").create(name, num_classes=num_classes, model=model or TINY_MODEL, **params)
    assert isinstance(method, Method), (
        f"method {name!r}: its factory returned {type(method).__name__}, not a wsolbench.interfaces.Method"
    )
    return method


def check_method(
    name: str,
    num_classes: int = 2,
    size: tuple[int, int] = (64, 48),
    model: ModelSpec | None = None,
    batch_size: int = 2,
    **params: Any,
) -> Method:
    """Build method ``name`` and check the contract on random ``size`` images; returns the method.

    ``model`` defaults to :data:`TINY_MODEL`; ``params`` override the method's
    ``defaults``. The size is deliberately not square so that swapped axes show.
    """
    torch.manual_seed(0)
    method = build_method(name, num_classes, model, **params)
    what = f"method {name!r} ({type(method).__name__})"
    if method.trainable:
        _check_training(method, what, num_classes, size, batch_size)
    _check_inference(method, what, num_classes, size, batch_size)
    return method


def _check_training(method: Method, what: str, num_classes: int, size: tuple[int, int], n: int) -> None:
    method.train()
    batch = make_batch(num_classes, size, n, masks=method.needs_masks)
    calls: list[Tensor] = []

    def backward(loss: Tensor) -> None:
        calls.append(loss)
        loss.backward()

    try:
        out = method.training_step(batch, backward)
    except KeyError as exc:
        if exc.args and exc.args[0] == "mask" and not method.needs_masks:
            raise AssertionError(
                f"{what} reads batch['mask'] during training but does not declare needs_masks = True; "
                f"weakly supervised methods never see training masks"
            ) from exc
        raise
    assert calls, f"{what}: training_step never called backward(loss)"
    loss = out.loss
    assert isinstance(loss, Tensor) and loss.dim() == 0, f"{what}: StepOutput.loss must be a scalar tensor"
    assert torch.isfinite(loss), f"{what}: the training loss is {loss.item()}"
    if out.logits is not None:
        assert tuple(out.logits.shape) == (n, num_classes), (
            f"{what}: StepOutput.logits has shape {tuple(out.logits.shape)}, expected {(n, num_classes)}"
        )
    grads = {k: p.grad for k, p in method.named_parameters() if p.requires_grad}
    reached = [k for k, g in grads.items() if g is not None and bool(g.abs().sum() > 0)]
    assert reached, f"{what}: the loss's backward pass reached no parameter (is the loss detached?)"
    bad = [k for k, g in grads.items() if g is not None and not bool(torch.isfinite(g).all())]
    assert not bad, f"{what}: non-finite gradients in {bad[:5]}"
    method.zero_grad(set_to_none=True)


def _check_inference(method: Method, what: str, num_classes: int, size: tuple[int, int], n: int) -> None:
    method.eval()
    images = make_batch(num_classes, size, n, masks=False, seed=1)["image"]
    with torch.no_grad():  # as the engine calls predict
        logits = method.predict(images)
    with torch.set_grad_enabled(method.needs_grad_at_inference):  # as the engine calls localize and infer
        maps_alone = method.localize(images)
        maps_given = method.localize(images, logits)
        infer_logits, infer_maps = method.infer(images)
    assert tuple(logits.shape) == (n, num_classes), (
        f"{what}: predict returned shape {tuple(logits.shape)}, expected (N, K) = {(n, num_classes)}"
    )
    assert torch.isfinite(logits).all(), f"{what}: predict returned non-finite scores"
    for label, maps in (("localize(images)", maps_alone), ("localize(images, logits)", maps_given),
                        ("infer(images)", infer_maps)):
        _check_maps(maps, what, label, (n, *size))
    assert torch.allclose(infer_logits.float(), logits.float(), atol=1e-4), f"{what}: infer and predict disagree"
    for label, maps in (("localize(images)", maps_alone), ("localize(images, logits)", maps_given)):
        assert torch.allclose(maps.float(), infer_maps.float(), atol=1e-4), (
            f"{what}: {label} and infer(images) give different maps for the same images in evaluation mode"
        )
    leaked = [k for k, p in method.named_parameters() if p.grad is not None]
    assert not leaked, f"{what}: inference left gradients in parameters {leaked[:5]} (keep no graph alive)"
    for label, out in (("localize", maps_alone), ("infer", infer_logits), ("infer", infer_maps)):
        assert not out.requires_grad, f"{what}: {label} returned a tensor attached to a graph; detach it"


def _check_maps(maps: Tensor, what: str, label: str, shape: tuple[int, ...]) -> None:
    assert isinstance(maps, Tensor), f"{what}: {label} returned {type(maps).__name__}, not a tensor"
    assert tuple(maps.shape) == shape, (
        f"{what}: {label} returned shape {tuple(maps.shape)}, expected (N, H, W) = {shape}, the input's size"
    )
    assert torch.isfinite(maps).all(), f"{what}: {label} returned NaN or infinite values"
    low, high = float(maps.min()), float(maps.max())
    assert low >= 0 and high <= 1, f"{what}: {label} values span [{low:.4g}, {high:.4g}], not within [0, 1]"
