"""Materials (fills for "make it look like brick") and backgrounds (fills for "put it on a beach").

Three materials are real photos from scikit-image (brick, grass, gravel, tinted to their usual colour); the rest
are procedural (wood rings, marble veins, tiles, sand ripples, water). Each call returns a fresh random crop /
phase, ``[size, size, 3]`` float32 in [0, 1]. Backgrounds reuse the materials ("a brick wall") and add skies,
a sunset, a plain studio backdrop and a starry night.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

from spatialreward.synth.photos import load_photo

# material key → noun phrase used in instructions ("made of brick", "a brick texture").
MATERIALS = {
    "brick": "brick", "grass": "grass", "gravel": "gravel", "wood": "wood", "marble": "marble",
    "tiles": "tiles", "sand": "sand", "water": "water",
}
# background key → noun phrase ("Replace the background with a brick wall").
BACKGROUNDS = {
    "brick": "a brick wall", "grass": "a grassy field", "gravel": "a gravel path", "sand": "a sandy beach",
    "water": "a calm lake", "marble": "a marble wall", "wood": "a wooden wall", "tiles": "a tiled wall",
    "sky": "a clear blue sky", "sunset": "a sunset sky", "studio": "a plain white backdrop",
    "night": "a starry night sky", "blur": "a blurred version of itself",
}
_TINTS = {"brick": (1.25, 0.72, 0.55), "grass": (0.62, 1.12, 0.45), "gravel": (1.0, 0.96, 0.9)}


@lru_cache(maxsize=None)
def _photo_texture(name: str) -> np.ndarray | None:
    photo = load_photo(name)
    if photo is None:
        return None
    grey = photo.astype(np.float32).mean(axis=2) / 255.0
    tint = np.array(_TINTS[name], dtype=np.float32)
    return np.clip(grey[..., None] * tint, 0, 1)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise field ``[size, size]`` with correlation length ``sigma`` pixels.

    Drawn on a grid ``sigma / 2`` times coarser and interpolated: the same look as filtering full-size noise,
    at a fraction of the cost (``sigma`` is ``size / 16`` or more here).
    """
    step = max(1, int(sigma // 2))
    small = -(-size // step) + 1
    n = ndimage.gaussian_filter(rng.standard_normal((small, small)).astype(np.float32), sigma / step, mode="wrap")
    n = ndimage.zoom(n, size / (small - 1), order=1, grid_mode=False)[:size, :size]
    return (n - n.mean()) / (n.std() + 1e-6)


def _mix(a: tuple, b: tuple, t: np.ndarray) -> np.ndarray:
    a, b = np.array(a, np.float32), np.array(b, np.float32)
    return a + (b - a) * np.clip(t, 0, 1)[..., None]


def material(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    """A ``size×size`` fill of material ``name`` (a key of `MATERIALS`)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if name in _TINTS:
        tex = _photo_texture(name)
        if tex is not None:
            side = int(tex.shape[0] * rng.uniform(0.35, 0.7))
            y0 = int(rng.integers(0, tex.shape[0] - side + 1))
            x0 = int(rng.integers(0, tex.shape[1] - side + 1))
            crop = Image.fromarray((tex[y0 : y0 + side, x0 : x0 + side] * 255).astype(np.uint8))
            return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR), np.float32) / 255.0
        name = {"brick": "tiles", "grass": "water", "gravel": "sand"}[name]  # skimage without its data files
    if name == "wood":
        turb = _smooth_noise(rng, size, size / 16) * 0.04
        cx, cy = rng.uniform(-0.5, 1.5), rng.uniform(-2.0, -1.0)
        rings = np.sin(2 * np.pi * (rng.uniform(10, 16) * np.sqrt((xx - cx) ** 2 * 0.15 + (yy - cy) ** 2) + 4 * turb))
        return _mix((0.55, 0.34, 0.16), (0.78, 0.56, 0.32), 0.5 + 0.5 * rings)
    if name == "marble":
        turb = _smooth_noise(rng, size, size / 12)
        veins = np.abs(np.sin(2 * np.pi * (3 * xx + 2 * yy) + 2.5 * turb)) ** 0.35
        return _mix((0.45, 0.45, 0.48), (0.93, 0.92, 0.9), veins)
    if name == "tiles":
        n = int(rng.integers(5, 9))
        fy, fx = (yy * n) % 1.0, (xx * n) % 1.0
        grout = (fy < 0.07) | (fx < 0.07)
        tile_id = np.floor(yy * n) * 31 + np.floor(xx * n)
        shade = 0.85 + 0.1 * np.sin(tile_id * 12.9898)
        base = np.array((0.82, 0.84, 0.86) if rng.random() < 0.5 else (0.55, 0.72, 0.82), np.float32)
        out = base * shade[..., None]
        return np.where(grout[..., None], np.float32(0.35), out).astype(np.float32)
    if name == "sand":
        grain = rng.standard_normal((size, size)).astype(np.float32) * 0.04
        ripples = 0.05 * np.sin(2 * np.pi * (9 * yy + 0.6 * _smooth_noise(rng, size, size / 10)))
        return np.clip(_mix((0.78, 0.66, 0.45), (0.92, 0.83, 0.62), 0.5 + ripples * 6) + grain[..., None], 0, 1)
    if name == "water":
        waves = np.sin(2 * np.pi * (14 * yy + 0.8 * _smooth_noise(rng, size, size / 14)))
        return _mix((0.08, 0.28, 0.45), (0.3, 0.55, 0.72), 0.5 + 0.35 * waves + 0.3 * yy)
    raise ValueError(f"unknown material {name!r}; known: {', '.join(MATERIALS)}")


def background(rng: np.random.Generator, name: str, image: np.ndarray) -> np.ndarray:
    """A replacement background ``name`` (a key of `BACKGROUNDS`) for ``image`` (``blur`` blurs ``image``)."""
    size = image.shape[0]
    if name in MATERIALS:
        return material(rng, name, size)
    yy = (np.mgrid[0:size, 0:size][0].astype(np.float32) + 0.5) / size
    if name == "sky":
        clouds = np.clip(_smooth_noise(rng, size, size / 10) - 0.6, 0, None) * 0.35
        return np.clip(_mix((0.22, 0.45, 0.85), (0.7, 0.84, 0.97), yy) + clouds[..., None], 0, 1)
    if name == "sunset":
        top = _mix((0.25, 0.15, 0.45), (0.95, 0.45, 0.2), yy * 1.4)
        return np.where((yy > 0.72)[..., None], _mix((0.95, 0.45, 0.2), (0.3, 0.15, 0.12), (yy - 0.72) * 3), top)
    if name == "studio":
        xx = (np.mgrid[0:size, 0:size][1].astype(np.float32) + 0.5) / size
        vignette = 1.0 - 0.12 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 4
        return np.repeat((0.95 * vignette)[..., None], 3, axis=2).astype(np.float32)
    if name == "night":
        sky = _mix((0.02, 0.03, 0.12), (0.08, 0.12, 0.3), yy)
        stars = (rng.random((size, size)) > 0.992).astype(np.float32)
        stars = np.clip(ndimage.gaussian_filter(stars, 0.6) * 4, 0, 1)
        return np.clip(sky + stars[..., None], 0, 1)
    if name == "blur":
        sigma = size / rng.uniform(28, 40)
        return ndimage.gaussian_filter(image, (sigma, sigma, 0), mode="reflect")
    raise ValueError(f"unknown background {name!r}; known: {', '.join(BACKGROUNDS)}")
