"""Image degradations that editing models leave behind: noise, blur, JPEG blockiness, seams, colour banding.

A degradation is applied *after* the deliberate edit, so the ground truth separates the two: the edit region comes
from the content change, the artifact score from the degradation residual. ``scope`` limits a degradation to the
edited area (the usual case for generative edits) or lets it cover the whole image. `jitter` is a barely visible
noise every candidate gets, so artifact scores spread continuously even among clean edits.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

ARTIFACT_TYPES = ("noise", "blur", "blockiness", "seams", "banding")


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0


def degrade(
    rng: np.random.Generator,
    image: np.ndarray,
    kind: str,
    severity: float,
    area: np.ndarray | None = None,
) -> np.ndarray:
    """Apply degradation ``kind`` at ``severity`` in [0, 1] (0.3 mild … 1 strong).

    ``area`` (bool ``[H, W]``) limits it to a region, blended with a short feather; None covers the whole image.
    For ``seams`` the area is required: the content inside it is shifted by a pixel or two and outlined, as when
    a generated patch is pasted back with a misaligned, hard edge.
    """
    size = image.shape[0]
    scale = size / 224.0
    if kind == "noise":
        sigma = 0.02 + 0.06 * severity
        noisy = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
        noisy += rng.normal(0.0, sigma * 0.5, image.shape[:2] + (1,)).astype(np.float32)  # luminance grain
        out = noisy
    elif kind == "blur":
        sigma = (0.9 + 2.0 * severity) * scale
        out = ndimage.gaussian_filter(image, (sigma, sigma, 0))
    elif kind == "blockiness":
        quality = int(round(30 - 25 * severity))  # 30 … 5
        out = _jpeg(image, max(quality, 3))
    elif kind == "banding":
        levels = int(round(14 - 10 * severity))  # 14 … 4 levels per channel
        out = np.round(image * (levels - 1)) / (levels - 1)
    elif kind == "seams":
        if area is None or not area.any():
            area = np.zeros(image.shape[:2], dtype=bool)
            area[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
        shift = max(1, int(round((1 + 2 * severity) * scale)))
        dy, dx = (shift, 0) if rng.random() < 0.5 else (0, shift)
        moved = np.roll(image, (dy, dx), axis=(0, 1))
        out = np.where(area[..., None], moved, image)
        edge = area & ~ndimage.binary_erosion(area, iterations=max(1, int(round(scale))))
        tone = np.float32(0.95 if rng.random() < 0.5 else 0.05)
        line = 0.35 + 0.45 * severity
        out = np.where(edge[..., None], out * (1 - line) + tone * line, out)
        return np.clip(out, 0, 1).astype(np.float32)  # a hard edge is the point: no feathered blend
    else:
        raise ValueError(f"unknown artifact kind {kind!r}; known: {', '.join(ARTIFACT_TYPES)}")
    out = np.clip(out, 0, 1).astype(np.float32)
    if area is None:
        return out
    weight = ndimage.gaussian_filter(area.astype(np.float32), 1.5 * scale)[..., None]
    return (image + weight * (out - image)).astype(np.float32)


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed field of unit Gaussian noise ``[640, 640, 3]``, the same in every process (seeded)."""
    return np.random.default_rng(20260207).standard_normal((640, 640, 3), dtype=np.float32)


def jitter(rng: np.random.Generator, image: np.ndarray, max_sigma: float = 0.006) -> np.ndarray:
    """A barely visible sensor-like noise (σ ≤ ``max_sigma``, 1.5/255): real outputs are never bit-exact copies.

    The noise is a random crop of a fixed noise field (drawing fresh Gaussian noise per candidate cost more than
    the rest of its rendering); images larger than the field draw fresh noise.
    """
    sigma = np.float32(rng.uniform(0.15 * max_sigma, max_sigma))  # never exactly 0: no ties at a perfect 25
    h, w = image.shape[:2]
    bank = _noise_bank()
    if h <= bank.shape[0] and w <= bank.shape[1]:
        y0, x0 = int(rng.integers(0, bank.shape[0] - h + 1)), int(rng.integers(0, bank.shape[1] - w + 1))
        noise = bank[y0 : y0 + h, x0 : x0 + w]
    else:
        noise = rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image + sigma * noise, 0, 1)
