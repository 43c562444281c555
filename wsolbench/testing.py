"""The conformance kit: the contract checks every built-in plug-in passes, for any plug-in.

Run them on tiny inputs before a real experiment::

    from wsolbench.testing import check_dataset, check_method, check_pooling

    def test_my_plugin_meets_the_contracts():
        check_method("my-method")
        check_pooling("my-pooling")
        check_dataset("my-dataset", root="path/to/a/small/copy")

Each failed check raises an :class:`AssertionError` that names the plug-in and
says what to fix. :func:`check_method` checks that:

- the factory builds a :class:`wsolbench.interfaces.Method`;
- for trainable methods, one training step on a batch gives a finite scalar
  loss and its backward pass reaches the parameters with finite gradients;
- methods without ``needs_masks = True`` train on batches without pixel masks
  (the engine never gives them masks); methods with it get them;
- in evaluation mode, ``predict`` gives finite ``(N, K)`` scores; ``localize``
  (with and without the scores) and ``infer`` give finite maps in [0, 1] of
  shape ``(N, H, W)``, the input's size, which agree with each other, and so
  does ``localize_class`` (a given class's map);
- in channels-last memory format (``train.channels_last``, the default), a
  training step gives the same loss and gradients, and inference the same
  scores and maps, as in the default contiguous format;
- inference leaves no gradient in any parameter (for methods with
  ``needs_grad_at_inference``, which run with autograd on, as in the engine).

:func:`check_pooling` checks that the factory builds a
:class:`wsolbench.interfaces.Pooling` that turns maps (or features, with
``consumes_features``) into finite ``(N, K)`` scores and ``(N, K, h, w)`` class
maps at the input's resolution, lets gradients reach its input, and scores
each image independently of the others in its batch (in evaluation mode).

:func:`check_dataset` checks that the factory builds a
:class:`wsolbench.interfaces.Dataset` whose splits have the labels
``split_labels`` announces, whose items are dictionaries in the documented
format (normalised ``(3, H, W)`` images, ``(1, H', W')`` binary masks, the
item's index), whose training items of a split share one size (they are
stacked into batches), and which the same seed rebuilds identically.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from wsolbench.interfaces import Dataset, Method, ModelSpec, Pooling
from wsolbench.plugin_host import registry

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
    _check_channels_last(method, what, num_classes, size, batch_size)
    return method


def _check_channels_last(method: Method, what: str, num_classes: int, size: tuple[int, int], n: int) -> None:
    """The same numbers, up to rounding, whichever memory format the model and images use."""

    other = copy.deepcopy(method).to(memory_format=torch.channels_last)
    batch = make_batch(num_classes, size, n, masks=method.needs_masks, seed=2)
    last = dict(batch, image=batch["image"].contiguous(memory_format=torch.channels_last))

    def close(a: Tensor, b: Tensor, label: str) -> None:
        # relative error of the whole tensor: sums run in another order in the other layout,
        # and batch norm on a batch of two amplifies that in the first layers' gradients
        # (up to 2e-3 seen); a layout bug mixes values up (an error near 1). The floor
        # covers gradients that are zero up to rounding.
        diff = float((a.float() - b.float()).norm())
        assert diff <= 1e-2 * max(float(a.float().norm()), 1e-3), (
            f"{what}: {label} differ between channels-last and contiguous tensors "
            f"(relative difference {diff / max(float(a.float().norm()), 1e-12):.3g}); a .view() on a "
            f"feature map or an op that assumes contiguous memory is the usual cause"
        )

    if method.trainable:
        results = []
        for model, data in ((method, batch), (other, last)):
            model.train()
            torch.manual_seed(0)
            out = model.training_step(data, lambda loss: loss.backward())
            grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
            model.zero_grad(set_to_none=True)
            results.append((out.loss.detach(), grads))
        (loss_a, grads_a), (loss_b, grads_b) = results
        close(loss_a, loss_b, "training losses")
        assert grads_a.keys() == grads_b.keys(), f"{what}: different parameters get gradients in channels-last"
        for k in grads_a:
            close(grads_a[k], grads_b[k], f"gradients of {k}")
    for model in (method, other):
        model.eval()
    with torch.set_grad_enabled(method.needs_grad_at_inference):
        logits_a, maps_a = method.infer(batch["image"])
        logits_b, maps_b = other.infer(last["image"])
    close(logits_a, logits_b, "inference scores")
    close(maps_a, maps_b, "inference maps")
    method.zero_grad(set_to_none=True)


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
        maps_class = method.localize_class(images, torch.arange(n) % num_classes)
    assert tuple(logits.shape) == (n, num_classes), (
        f"{what}: predict returned shape {tuple(logits.shape)}, expected (N, K) = {(n, num_classes)}"
    )
    assert torch.isfinite(logits).all(), f"{what}: predict returned non-finite scores"
    for label, maps in (("localize(images)", maps_alone), ("localize(images, logits)", maps_given),
                        ("infer(images)", infer_maps), ("localize_class(images, classes)", maps_class)):
        _check_maps(maps, what, label, (n, *size))
    assert torch.allclose(infer_logits.float(), logits.float(), atol=1e-4), f"{what}: infer and predict disagree"
    for label, maps in (("localize(images)", maps_alone), ("localize(images, logits)", maps_given)):
        assert torch.allclose(maps.float(), infer_maps.float(), atol=1e-4), (
            f"{what}: {label} and infer(images) give different maps for the same images in evaluation mode"
        )
    leaked = [k for k, p in method.named_parameters() if p.grad is not None]
    assert not leaked, f"{what}: inference left gradients in parameters {leaked[:5]} (keep no graph alive)"
    for label, out in (("localize", maps_alone), ("infer", infer_logits), ("infer", infer_maps),
                       ("localize_class", maps_class)):
        assert not out.requires_grad, f"{what}: {label} returned a tensor attached to a graph; detach it"


def _check_maps(maps: Tensor, what: str, label: str, shape: tuple[int, ...]) -> None:
    assert isinstance(maps, Tensor), f"{what}: {label} returned {type(maps).__name__}, not a tensor"
    assert tuple(maps.shape) == shape, (
        f"{what}: {label} returned shape {tuple(maps.shape)}, expected (N, H, W) = {shape}, the input's size"
    )
    assert torch.isfinite(maps).all(), f"{what}: {label} returned NaN or infinite values"
    low, high = float(maps.min()), float(maps.max())
    assert low >= 0 and high <= 1, f"{what}: {label} values span [{low:.4g}, {high:.4g}], not within [0, 1]"


def check_pooling(
    name: str,
    num_classes: int = 3,
    in_channels: int = 8,
    size: tuple[int, int] = (5, 7),
    batch_size: int = 2,
    **params: Any,
) -> Pooling:
    """Build pooling ``name`` and check the contract on random ``size`` maps; returns the pooling.

    ``params`` override the pooling's ``defaults``; ``in_channels`` is the
    number of backbone features a pooling with ``consumes_features`` receives.
    """

    torch.manual_seed(0)
    pooling = registry("pooling").create(name, num_classes=num_classes, in_channels=in_channels, **params)
    assert isinstance(pooling, Pooling), (
        f"pooling {name!r}: its factory returned {type(pooling).__name__}, not a wsolbench.interfaces.Pooling"
    )
    what = f"pooling {name!r} ({type(pooling).__name__})"
    channels = in_channels if pooling.consumes_features else num_classes * pooling.modalities
    n, (h, w) = batch_size, size
    x = torch.randn(n, channels, h, w, requires_grad=True)
    pooling.train()
    scores, maps = pooling(x)
    assert isinstance(scores, Tensor) and tuple(scores.shape) == (n, num_classes), (
        f"{what}: scores have shape {tuple(getattr(scores, 'shape', ()))}, expected (N, K) = {(n, num_classes)}"
    )
    assert isinstance(maps, Tensor) and tuple(maps.shape) == (n, num_classes, h, w), (
        f"{what}: class maps have shape {tuple(getattr(maps, 'shape', ()))}, expected (N, K, h, w) = "
        f"{(n, num_classes, h, w)}, one map per class at the input's resolution"
    )
    assert torch.isfinite(scores).all() and torch.isfinite(maps).all(), f"{what}: non-finite scores or maps"
    no_gradient = f"{what}: no gradient reaches the input maps, so the network below the pooling cannot learn"
    assert scores.requires_grad, no_gradient
    (scores * torch.randn_like(scores)).sum().backward()  # random weights: a plain sum can cancel out
    assert x.grad is not None and bool(x.grad.abs().sum() > 0), no_gradient
    pooling.eval()
    with torch.no_grad():
        together, _ = pooling(x.detach())
        alone, alone_maps = pooling(x.detach()[:1])
    assert torch.allclose(together[:1], alone, atol=1e-5), (
        f"{what}: in evaluation mode, an image's scores depend on the other images of its batch"
    )
    assert tuple(alone_maps.shape) == (1, num_classes, h, w), (
        f"{what}: class maps of a batch of one have the wrong shape"
    )
    return pooling


def check_dataset(
    name: str, root: str | None = None, seed: int = 0, items: int = 2, **params: Any
) -> Dataset:
    """Build dataset ``name`` and check the contract on the first ``items`` items of each split.

    ``root`` is the data folder (for datasets with ``needs_root``); ``params``
    override the dataset's ``defaults`` (small sizes keep the check fast).
    """

    def build() -> Dataset:
        return registry("dataset").create(name, root=root, seed=seed, **params)

    dataset = build()
    assert isinstance(dataset, Dataset), (
        f"dataset {name!r}: its factory returned {type(dataset).__name__}, not a wsolbench.interfaces.Dataset"
    )
    what = f"dataset {name!r} ({type(dataset).__name__})"
    classes = dataset.classes
    assert classes and all(isinstance(c, str) for c in classes), f"{what}: classes must be a non-empty list of names"
    k = len(classes)
    for split_name in dataset.split_names:
        labels = dataset.split_labels(split_name)
        assert labels, f"{what}: split {split_name!r} is empty"
        assert all(isinstance(y, int) and 0 <= y < k for y in labels), (
            f"{what}: split {split_name!r} has labels outside 0..{k - 1} (or not ints)"
        )
        train_sizes = set()
        for train in (True, False):
            split = dataset.split(split_name, train=train)
            assert len(split) == len(labels), (
                f"{what}: split {split_name!r} has {len(split)} items but split_labels gives {len(labels)} labels"
            )
            for i in range(min(items, len(split))):
                _check_item(split[i], i, labels[i], f"{what}, split {split_name!r} (train={train}), item {i}")
                if train:
                    train_sizes.add(tuple(split[i]["image"].shape))
        assert len(train_sizes) <= 1, (
            f"{what}: training items of split {split_name!r} differ in size {sorted(train_sizes)}; "
            f"training transforms must give equal sizes (they are stacked into batches)"
        )
    again = build()
    for split_name in dataset.split_names:
        assert again.split_labels(split_name) == dataset.split_labels(split_name), (
            f"{what}: the same seed gives different labels for split {split_name!r}"
        )
    return dataset


def _check_item(item: Any, index: int, label: int, what: str) -> None:
    assert isinstance(item, dict), f"{what}: items must be dictionaries, got {type(item).__name__}"
    missing = {"image", "label", "mask", "index"} - set(item)
    assert not missing, f"{what}: missing keys {sorted(missing)}"
    image, mask = item["image"], item["mask"]
    assert isinstance(image, Tensor) and image.dim() == 3 and image.shape[0] == 3 and image.is_floating_point(), (
        f"{what}: image must be a float tensor (3, H, W), got {getattr(image, 'dtype', type(image))} "
        f"{tuple(getattr(image, 'shape', ()))}"
    )
    assert torch.isfinite(image).all(), f"{what}: the image has NaN or infinite values"
    assert isinstance(mask, Tensor) and mask.dim() == 3 and mask.shape[0] == 1, (
        f"{what}: mask must be a tensor (1, H', W'), got {tuple(getattr(mask, 'shape', ()))}"
    )
    assert bool(((mask == 0) | (mask == 1)).all()), f"{what}: mask values must be 0 or 1"
    assert int(item["label"]) == label, f"{what}: label {int(item['label'])} but split_labels says {label}"
    assert int(item["index"]) == index, f"{what}: index {int(item['index'])}, expected its position {index}"
    if "boxes" in item:
        boxes = item["boxes"]
        assert isinstance(boxes, Tensor) and boxes.dtype == torch.int64 and boxes.dim() == 2 and boxes.shape[1] == 4, (
            f"{what}: boxes must be an int64 tensor (K, 4), got {getattr(boxes, 'dtype', type(boxes))} "
            f"{tuple(getattr(boxes, 'shape', ()))}"
        )
        height, width = mask.shape[-2:]
        inside = (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] < width) & (boxes[:, 3] < height)
        ordered = (boxes[:, 0] <= boxes[:, 2]) & (boxes[:, 1] <= boxes[:, 3])
        assert bool((inside & ordered).all()), (
            f"{what}: boxes must be inclusive (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1 inside the "
            f"{width} x {height} mask, got {boxes.tolist()}"
        )
    if "ignore" in item:
        ignore = item["ignore"]
        assert isinstance(ignore, Tensor) and ignore.dtype == torch.bool and ignore.shape == mask.shape, (
            f"{what}: ignore must be a bool tensor of the mask's shape {tuple(mask.shape)}, got "
            f"{getattr(ignore, 'dtype', type(ignore))} {tuple(getattr(ignore, 'shape', ()))}"
        )
