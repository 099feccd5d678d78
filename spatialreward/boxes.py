"""Box utilities: the one place that converts between 0–1000 boxes, pixel boxes and masks.

Frames: a *normalised* box is ``(x1, y1, x2, y2)`` in 0–1000 on the edited image (the teacher's frame); a *pixel*
box is the same in pixels of an ``H×W`` image, with ``x2, y2`` exclusive edges (a box ``(0, 0, W, H)`` covers the
whole image). Rasterising marks every pixel whose centre lies inside a box, so a box converted to pixels and back
round-trips at any resolution up to one pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from spatialreward.types import BOX_SCALE


def normalized_to_pixels(boxes: Sequence[Sequence[float]] | np.ndarray, height: int, width: int) -> np.ndarray:
    """``[K, 4]`` boxes in 0–1000 → ``[K, 4]`` float pixel boxes on an ``height×width`` image."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = np.array([width, height, width, height], dtype=np.float64) / BOX_SCALE
    return b * scale


def pixels_to_normalized(boxes: Sequence[Sequence[float]] | np.ndarray, height: int, width: int) -> np.ndarray:
    """``[K, 4]`` pixel boxes → ``[K, 4]`` boxes in 0–1000, clipped to the image."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = BOX_SCALE / np.array([width, height, width, height], dtype=np.float64)
    return np.clip(b * scale, 0.0, BOX_SCALE)


def boxes_to_mask(boxes: Sequence[Sequence[float]] | np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterise 0–1000 boxes to a boolean ``[height, width]`` mask (union of boxes; empty list → all False).

    A pixel is inside when its centre ``(x + 0.5, y + 0.5)`` lies inside the box.
    """
    mask = np.zeros((height, width), dtype=bool)
    px = normalized_to_pixels(boxes, height, width)
    for x1, y1, x2, y2 in px:
        # Pixel i has centre i + 0.5; inside when x1 <= i + 0.5 < x2, i.e. ceil(x1 - 0.5) <= i < ceil(x2 - 0.5).
        c0, c1 = int(np.ceil(x1 - 0.5)), int(np.ceil(x2 - 0.5))
        r0, r1 = int(np.ceil(y1 - 0.5)), int(np.ceil(y2 - 0.5))
        mask[max(r0, 0) : min(r1, height), max(c0, 0) : min(c1, width)] = True
    return mask


def mask_to_boxes(
    mask: np.ndarray, *, min_area: int = 1, max_boxes: int | None = None, connectivity: int = 2
) -> np.ndarray:
    """Boolean ``[H, W]`` mask → ``[K, 4]`` boxes in 0–1000, one per connected component.

    Components smaller than ``min_area`` pixels are dropped; with ``max_boxes`` the largest components are kept.
    Boxes are sorted by area, largest first. ``connectivity=2`` joins diagonal neighbours (8-connectivity).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    h, w = mask.shape
    structure = ndimage.generate_binary_structure(2, connectivity)
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return np.zeros((0, 4), dtype=np.float64)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]  # ~3x cheaper than ndimage.sum_labels
    slices = ndimage.find_objects(labels)
    rows = []
    for area, sl in zip(areas, slices):
        if area < min_area:
            continue
        ys, xs = sl
        rows.append((area, (xs.start, ys.start, xs.stop, ys.stop)))
    rows.sort(key=lambda r: -r[0])
    if max_boxes is not None:
        rows = rows[:max_boxes]
    if not rows:
        return np.zeros((0, 4), dtype=np.float64)
    return pixels_to_normalized([r[1] for r in rows], h, w)


def box_iou(a: Sequence[Sequence[float]] | np.ndarray, b: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[Ka, Kb]`` of two sets of ``(x1, y1, x2, y2)`` boxes (any common frame)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def mask_iou(pred: np.ndarray, target: np.ndarray, *, empty_value: float = 1.0) -> float:
    """IoU of two boolean masks of one shape. Both empty → ``empty_value`` (agreeing that nothing changed)."""
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {target.shape}")
    union = np.logical_or(pred, target).sum()
    if union == 0:
        return float(empty_value)
    return float(np.logical_and(pred, target).sum() / union)
