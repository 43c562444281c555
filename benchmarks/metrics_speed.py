"""Box metrics: images per second of wsolbench against a loop of wsolevaluation's arithmetic, side by side.

The maps look like class activation maps: a coarse random grid (7 x 7, a
ResNet's last stage) upsampled bilinearly to the image and min-max
normalised; each image has one to three random true boxes. The reference is
the loop wsolevaluation runs, written here once more: per image and per
threshold of ``np.arange(0, 1, interval)``, ``cv2.threshold`` of the 8-bit
map at ``int(t * max)``, ``cv2.findContours`` (``RETR_TREE``), every
contour's bounding box and the largest one's (both from one tracing, the
cheapest loop that gives MaxBoxAcc and MaxBoxAccV2 together), inclusive IoU
with the true boxes. Both give the same per-threshold IoUs (checked here);
the ratio is wsolbench's images/s over the reference's.

    python benchmarks/metrics_speed.py                 # 1,000 maps of 224 x 224 and of 500 x 375
    python benchmarks/metrics_speed.py --images 200 --interval 0.001
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from wsolbench.scoring.metrics import BoxAccumulator


def cam_like_maps(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 7, 7, generator=g) ** 3
    maps = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo)).view(n, height, width)


def true_boxes(n: int, height: int, width: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        xs = np.sort(rng.integers(0, width, (k, 2)), axis=1)
        ys = np.sort(rng.integers(0, height, (k, 2)), axis=1)
        out.append(np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1).astype(np.int64))
    return out


def reference_loop(maps: np.ndarray, boxes: list[np.ndarray], thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image and threshold, the best IoU of the largest contour's box and of any contour's box."""
    largest_all, any_all = [], []
    for scoremap, truth in zip(maps, boxes):
        height, width = scoremap.shape
        image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
        largest, anyone = [], []
        for t in thresholds:
            _, binary = cv2.threshold(image, thresh=int(t * np.max(image)), maxval=255, type=cv2.THRESH_BINARY)
            contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
            if len(contours) == 0:
                found, first = np.zeros((1, 4), np.int64), 0
            else:
                first = max(range(len(contours)), key=lambda i: cv2.contourArea(contours[i]))
                found = []
                for c in contours:
                    x, y, w, h = cv2.boundingRect(c)
                    found.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
                found = np.array(found, np.int64)
            p, q = found[:, None], truth[None]
            inter = (np.maximum(0, np.minimum(p[..., 2], q[..., 2]) - np.maximum(p[..., 0], q[..., 0]) + 1)
                     * np.maximum(0, np.minimum(p[..., 3], q[..., 3]) - np.maximum(p[..., 1], q[..., 1]) + 1))
            union = ((p[..., 2] - p[..., 0] + 1) * (p[..., 3] - p[..., 1] + 1)
                     + (q[..., 2] - q[..., 0] + 1) * (q[..., 3] - q[..., 1] + 1) - inter)
            iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0).max(1)
            largest.append(iou[first])
            anyone.append(iou.max())
        largest_all.append(largest)
        any_all.append(anyone)
    return np.array(largest_all), np.array(any_all)


def measure(n: int, height: int, width: int, interval: float, batch: int, seed: int) -> None:
    maps = cam_like_maps(n, height, width, seed)
    boxes = true_boxes(n, height, width, seed)
    acc = BoxAccumulator(interval=interval)
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        acc.update(maps[start:start + batch], [torch.from_numpy(b) for b in boxes[start:start + batch]])
    metrics = acc.compute()
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_largest, ref_any = reference_loop(maps.numpy(), boxes, acc.thresholds)
    reference = time.perf_counter() - t0
    same = (np.array_equal(torch.cat(acc.iou_largest).numpy(), ref_largest)
            and np.array_equal(torch.cat(acc.iou_any).numpy(), ref_any))
    print(f"{n} maps of {height} x {width}, {len(acc.thresholds)} thresholds: "
          f"wsolbench {n / ours:8.1f} images/s, reference loop {n / reference:8.1f} images/s, "
          f"ratio {reference / ours:5.2f}x; same IoUs: {same}; "
          f"MaxBoxAcc {metrics['maxboxacc']:.2f}, MaxBoxAccV2 {metrics['maxboxaccv2']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", default="224x224,375x500", help="height x width, comma-separated")
    args = parser.parse_args()
    print(f"OpenCV {cv2.__version__}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for size in args.sizes.split(","):
        height, width = (int(v) for v in size.split("x"))
        measure(args.images, height, width, args.interval, args.batch, args.seed)


if __name__ == "__main__":
    main()
