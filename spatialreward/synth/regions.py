"""Edit regions: where an edit should happen, as a mask plus the words an instruction uses to point at it.

scikit-image photos carry no segmentation, so regions are shapes we draw (ovals, rounded rectangles), unions of
SLIC superpixels (they follow the photo's own edges) or the footprint of a pasted object (`objects`). Each region
lives in one cell of a 3×3 grid, and its centroid names it: "upper-left", "top", …, "centre", … "lower-right". A
region is kept well inside its cell, so the position word in the instruction is never ambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# 3×3 grid cells (row, col) → position key; the phrases an instruction may use for each key.
CELL_NAMES = {
    (0, 0): "upper-left", (0, 1): "top", (0, 2): "upper-right",
    (1, 0): "left", (1, 1): "centre", (1, 2): "right",
    (2, 0): "lower-left", (2, 1): "bottom", (2, 2): "lower-right",
}
POSITION_PHRASES = {
    "upper-left": ("in the upper-left", "in the top-left corner", "at the top left"),
    "top": ("at the top", "in the top middle", "near the top edge"),
    "upper-right": ("in the upper-right", "in the top-right corner", "at the top right"),
    "left": ("on the left", "at the left side", "on the left-hand side"),
    "centre": ("in the centre", "in the middle", "at the center"),
    "right": ("on the right", "at the right side", "on the right-hand side"),
    "lower-left": ("in the lower-left", "in the bottom-left corner", "at the bottom left"),
    "bottom": ("at the bottom", "in the bottom middle", "near the bottom edge"),
    "lower-right": ("in the lower-right", "in the bottom-right corner", "at the bottom right"),
}
# Where an object should go ("move the ball to the upper-right").
DESTINATION_PHRASES = {
    "upper-left": ("to the upper-left", "into the top-left corner"),
    "top": ("to the top", "up to the top middle"),
    "upper-right": ("to the upper-right", "into the top-right corner"),
    "left": ("to the left", "over to the left side"),
    "centre": ("to the centre", "into the middle"),
    "right": ("to the right", "over to the right side"),
    "lower-left": ("to the lower-left", "into the bottom-left corner"),
    "bottom": ("to the bottom", "down to the bottom middle"),
    "lower-right": ("to the lower-right", "into the bottom-right corner"),
}
# Positions relative to another object ("the ball left of the box").
RELATIVE_PHRASES = {
    "left": ("left of", "to the left of"), "right": ("right of", "to the right of"),
    "above": ("above",), "below": ("below", "under"),
}
# Shape key → noun phrase for area regions ("the oval area").
SHAPE_NOUNS = {"oval": "oval area", "rectangle": "rectangular area", "patch": "patch", "disc": "round spot"}


@dataclass(frozen=True)
class Region:
    """A hard mask ``[H, W]`` (bool), what it is (``shape``: oval, rectangle, patch, object, background, subject,
    whole) and its position key. ``box`` is the pixel box ``(y0, x0, y1, x1)`` it was drawn in (objects are drawn
    into it)."""

    mask: np.ndarray
    shape: str
    position: str
    box: tuple[int, int, int, int]

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def position_of(mask: np.ndarray) -> str:
    """Position key of a mask's centroid on the 3×3 grid."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return "centre"
    row = min(int(3 * (ys.mean() + 0.5) / h), 2)
    col = min(int(3 * (xs.mean() + 0.5) / w), 2)
    return CELL_NAMES[(row, col)]


def soft_alpha(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Feathered float32 alpha of a hard mask (Gaussian, ``sigma`` pixels); ``sigma <= 0`` keeps the hard edge.

    Filtered on the mask's bounding box plus 4σ only (most regions are small); equal to filtering the whole
    image up to float rounding, since the filter only reaches 4σ.
    """
    m = mask.astype(np.float32)
    if sigma <= 0 or not mask.any():
        return m
    pad = int(np.ceil(4 * sigma)) + 1
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    sl = (slice(max(rows[0] - pad, 0), rows[-1] + pad + 1), slice(max(cols[0] - pad, 0), cols[-1] + pad + 1))
    out = np.zeros_like(m)
    out[sl] = ndimage.gaussian_filter(m[sl], sigma, truncate=4.0)
    return out


def pick_cell(rng: np.random.Generator, exclude: tuple[tuple[int, int], ...] = ()) -> tuple[int, int]:
    """A random grid cell not in ``exclude`` (nor 4-adjacent to one, when enough cells remain)."""
    cells = [c for c in CELL_NAMES if c not in exclude]
    far = [c for c in cells if all(abs(c[0] - e[0]) + abs(c[1] - e[1]) > 1 for e in exclude)]
    pool = far or cells
    return pool[int(rng.integers(len(pool)))]


def cell_of(position: str) -> tuple[int, int]:
    return next(c for c, n in CELL_NAMES.items() if n == position)


def cell_box(rng: np.random.Generator, size: int, cell: tuple[int, int], scale: tuple[float, float]) -> tuple:
    """A pixel box ``(y0, x0, y1, x1)`` inside ``cell``: side ``scale`` × cell side, centre jittered by ≤ 10 %."""
    cs = size / 3.0
    bh = cs * rng.uniform(*scale)
    bw = bh * rng.uniform(0.8, 1.25)
    bw = min(bw, cs * 0.95)
    cy = (cell[0] + 0.5) * cs + rng.uniform(-0.1, 0.1) * cs
    cx = (cell[1] + 0.5) * cs + rng.uniform(-0.1, 0.1) * cs
    y0, x0 = int(round(cy - bh / 2)), int(round(cx - bw / 2))
    y1, x1 = int(round(cy + bh / 2)), int(round(cx + bw / 2))
    return max(y0, 0), max(x0, 0), min(y1, size), min(x1, size)


def _grid(size: int, box: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates u, v ∈ [-1, 1] over ``box``, evaluated on the whole ``size×size`` image."""
    y0, x0, y1, x1 = box
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    v = (yy - (y0 + y1) / 2) / max((y1 - y0) / 2, 1.0)
    u = (xx - (x0 + x1) / 2) / max((x1 - x0) / 2, 1.0)
    return u, v


def shape_region(rng: np.random.Generator, size: int, cell: tuple[int, int], shape: str) -> Region:
    """An oval, disc or rounded rectangle in ``cell``, about 45–80 % of the cell side."""
    box = cell_box(rng, size, cell, (0.45, 0.8))
    u, v = _grid(size, box)
    if shape in ("oval", "disc"):
        if shape == "disc":
            u = u * (box[3] - box[1]) / max(box[2] - box[0], 1)
        mask = u * u + v * v <= 1.0
    elif shape == "rectangle":
        r = rng.uniform(0.15, 0.45)  # corner radius in normalised units
        du, dv = np.clip(np.abs(u) - (1 - r), 0, None), np.clip(np.abs(v) - (1 - r), 0, None)
        mask = (np.abs(u) <= 1) & (np.abs(v) <= 1) & (du * du + dv * dv <= r * r)
    else:
        raise ValueError(f"unknown shape {shape!r}; use oval, disc or rectangle")
    return Region(mask=mask, shape=shape, position=position_of(mask), box=box)


def superpixel_region(rng: np.random.Generator, image: np.ndarray, cell: tuple[int, int]) -> Region:
    """A union of SLIC superpixels around a point of ``cell`` (computed on a 48×48 thumbnail, so it is fast),
    clipped to the cell's neighbourhood so that its position word stays right."""
    from skimage.segmentation import slic

    size = image.shape[0]
    thumb_side = 48
    step = size / thumb_side
    thumb = image[:: max(int(step), 1), :: max(int(step), 1)][:thumb_side, :thumb_side]
    labels = slic(thumb, n_segments=64, compactness=8.0, start_label=0, channel_axis=-1)
    # Labels → full size by nearest neighbour, then smoothed so the outline is not blocky.
    idx = np.minimum((np.arange(size) * thumb.shape[0] / size).astype(int), thumb.shape[0] - 1)
    labels_full = labels[idx][:, idx]
    box = cell_box(rng, size, cell, (0.7, 0.9))
    y0, x0, y1, x1 = box
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    inside = np.zeros((size, size), dtype=bool)
    inside[y0:y1, x0:x1] = True
    seed_label = labels_full[cy, cx]
    mask = labels_full == seed_label
    # Grow by whole neighbouring superpixels while the region is small, preferring those mostly inside the box.
    target = 0.35 * (y1 - y0) * (x1 - x0)
    for _ in range(6):
        if (mask & inside).sum() >= target:
            break
        ring = ndimage.binary_dilation(mask, iterations=2) & ~mask & inside
        cands = np.unique(labels_full[ring])
        if len(cands) == 0:
            break
        mask |= labels_full == cands[int(rng.integers(len(cands)))]
    mask &= inside
    mask = ndimage.gaussian_filter(mask.astype(np.float32), step / 2) > 0.5
    mask = ndimage.binary_fill_holes(mask)
    if mask.sum() < 0.2 * (y1 - y0) * (x1 - x0):  # a sliver: fall back to an oval in the same cell
        return shape_region(rng, size, cell, "oval")
    return Region(mask=mask, shape="patch", position=position_of(mask), box=box)


def area_region(rng: np.random.Generator, image: np.ndarray, cell: tuple[int, int]) -> Region:
    """A random area region (oval, disc, rounded rectangle or superpixel patch) in ``cell``."""
    shape = ("oval", "disc", "rectangle", "patch")[int(rng.integers(4))]
    if shape == "patch":
        return superpixel_region(rng, image, cell)
    return shape_region(rng, image.shape[0], cell, shape)


def half_cut(rng: np.random.Generator, mask: np.ndarray, keep: tuple[float, float] = (0.35, 0.65)) -> np.ndarray:
    """The part of ``mask`` on one side of a random line through it, keeping about ``keep`` of its area."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return mask.copy()
    theta = rng.uniform(0, 2 * np.pi)
    proj = ys * np.sin(theta) + xs * np.cos(theta)
    cut = np.quantile(proj, rng.uniform(*keep))
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w]
    return mask & ((yy * np.sin(theta) + xx * np.cos(theta)) <= cut)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a square of side ``2·radius + 1`` (fast, separable)."""
    if radius <= 0:
        return mask.copy()
    return ndimage.maximum_filter(mask, size=2 * radius + 1)


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask.copy()
    return ndimage.minimum_filter(mask, size=2 * radius + 1)
