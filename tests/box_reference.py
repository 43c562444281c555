"""wsolevaluation's box arithmetic written again with OpenCV, one image and one threshold at a time: the
reference the box metrics are tested against."""

from __future__ import annotations

import cv2
import numpy as np


def reference_boxes(scoremap: np.ndarray, thresholds: np.ndarray, every_contour: bool) -> list[list[list[int]]]:
    height, width = scoremap.shape
    image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
    found = []
    for t in thresholds:
        _, binary = cv2.threshold(image, thresh=int(t * np.max(image)), maxval=255, type=cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        if len(contours) == 0:
            found.append([[0, 0, 0, 0]])
            continue
        if not every_contour:
            contours = [max(contours, key=cv2.contourArea)]
        boxes = []
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
        found.append(boxes)
    return found


def reference_iou(a: list[int], b: list[int]) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1) * max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return 0.0 if union <= 0 else inter / union


def reference_best_ious(scoremap: np.ndarray, truth: list[list[int]], thresholds: np.ndarray,
                        every_contour: bool) -> np.ndarray:
    """Per threshold, the best IoU of the map's predicted boxes with any true box."""
    return np.asarray([max(reference_iou(p, t) for p in boxes for t in truth)
                       for boxes in reference_boxes(scoremap, thresholds, every_contour)])
