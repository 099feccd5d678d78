"""Procedural scenes: an unbounded supply of edit sources rendered from a seed, mixed with the photos.

Eighteen photos, however cropped, are eighteen scenes; a student learns them. A rendered scene is drawn afresh per
group: a style (`SCENE_STYLES`: a room with a floor and a wall in perspective, a tabletop seen from above, an
outdoor landscape, an abstract still life), materials from `textures`, shaded objects with cast shadows from
`objects` plus flat shapes, a light direction (gradient and vignette), then a camera (noise, defocus blur, JPEG).
Whole styles can be held out (``SynthConfig.heldout_scene_styles``), so a split measures scenes of a kind never
seen in training. Scenes are uint8 ``[side, side, 3]`` like `photos.load_photo`, and go through
`photos.random_view` like a photo.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

from spatialreward.synth import objects as obj
from spatialreward.synth import textures as tex

SCENE_STYLES = ("room", "tabletop", "landscape", "still_life")
DEFAULT_HELDOUT_STYLES = ("landscape",)
_WALL_MATERIALS = ("brick", "marble", "wood", "tiles")
_FLOOR_MATERIALS = ("wood", "tiles", "marble", "gravel", "sand")


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.15, 0.9, 3).astype(np.float32)


def _perspective_floor(rng: np.random.Generator, fill: np.ndarray, side: int, horizon: int) -> np.ndarray:
    """Map ``fill`` (a flat material) onto a ground plane seen in perspective below ``horizon``."""
    h = side - horizon
    yy, xx = np.mgrid[0:h, 0:side].astype(np.float32)
    depth = 1.0 / ((yy + 1.0) / h)  # 1 at the bottom edge, large near the horizon
    u = ((xx - side / 2) / side * depth * rng.uniform(0.5, 1.0) + 0.5) * (fill.shape[1] - 1)
    v = (depth * rng.uniform(0.05, 0.15)) % 1.0 * (fill.shape[0] - 1)
    u = np.mod(u, fill.shape[1] - 1)
    out = np.stack([ndimage.map_coordinates(fill[..., c], [v, u], order=1, mode="wrap") for c in range(3)], 2)
    fog = np.clip(1.0 - (yy / h), 0, 1)[..., None] ** 3 * rng.uniform(0.2, 0.6)  # haze towards the horizon
    return out * (1 - fog) + fog * out.mean(axis=(0, 1))


def _backdrop(rng: np.random.Generator, style: str, side: int) -> tuple[np.ndarray, int]:
    """The empty scene and the row objects stand on from (0 for top-down views)."""
    if style == "room":
        horizon = int(side * rng.uniform(0.35, 0.6))
        wall = tex.material(rng, _WALL_MATERIALS[int(rng.integers(len(_WALL_MATERIALS)))], side)
        wall = wall * rng.uniform(0.6, 1.1) * (0.7 + 0.3 * _colour(rng))
        floor_fill = tex.material(rng, _FLOOR_MATERIALS[int(rng.integers(len(_FLOOR_MATERIALS)))], side)
        img = wall.copy()
        img[horizon:] = _perspective_floor(rng, floor_fill, side, horizon)
        img[max(horizon - 1, 0): horizon + 1] *= 0.6  # skirting line
        return img, horizon
    if style == "tabletop":
        fill = tex.material(rng, _FLOOR_MATERIALS[int(rng.integers(len(_FLOOR_MATERIALS)))], side)
        return fill * (0.6 + 0.5 * _colour(rng)), 0
    if style == "landscape":
        horizon = int(side * rng.uniform(0.3, 0.55))
        sky = tex.background(rng, ("sky", "sunset", "night")[int(rng.integers(3))], np.zeros((side, side, 3)))
        ground = tex.material(rng, ("grass", "sand", "gravel", "water")[int(rng.integers(4))], side)
        xx = np.arange(side, dtype=np.float32) / side
        ridge = horizon + side * 0.08 * (np.sin(2 * np.pi * (rng.uniform(1, 3) * xx + rng.random()))
                                         + 0.5 * np.sin(2 * np.pi * rng.uniform(4, 8) * xx))
        yy = np.arange(side, dtype=np.float32)[:, None]
        hills = (yy > ridge[None, :] - side * 0.12)[..., None]
        img = np.where(hills, _colour(rng) * 0.6, sky)
        return np.where((yy > ridge[None, :])[..., None], ground, img).astype(np.float32), int(ridge.mean())
    if style == "still_life":
        top, bottom = _colour(rng), _colour(rng)
        t = np.linspace(0, 1, side, dtype=np.float32)[:, None, None]
        img = np.broadcast_to(top * (1 - t) + bottom * t, (side, side, 3)).copy()
        horizon = int(side * rng.uniform(0.55, 0.75))
        img[horizon:] = img[horizon:] * 0.75 + 0.25 * _colour(rng)
        return img, horizon
    raise ValueError(f"unknown scene style {style!r}; known: {', '.join(SCENE_STYLES)}")


def _flat_shape(rng: np.random.Generator, img: np.ndarray, floor: int) -> np.ndarray:
    """A flat shape (a textured rectangle, disc or triangle) with a soft contact shadow."""
    side = img.shape[0]
    w = int(side * rng.uniform(0.08, 0.3))
    h = int(w * rng.uniform(0.5, 1.6))
    y0 = int(rng.integers(max(0, floor - h // 2), max(floor - h // 2 + 1, side - h)))
    x0 = int(rng.integers(0, max(1, side - w)))
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    u, v = (xx - x0) / max(w, 1), (yy - y0) / max(h, 1)
    kind = int(rng.integers(3))
    if kind == 0:
        inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    elif kind == 1:
        inside = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    else:
        inside = (v >= 0) & (v <= 1) & (np.abs(u - 0.5) <= 0.5 * v)
    if rng.random() < 0.5:
        fill = tex.material(rng, list(tex.MATERIALS)[int(rng.integers(len(tex.MATERIALS)))], side)
    else:
        fill = np.broadcast_to(_colour(rng), img.shape)
    alpha = ndimage.gaussian_filter(inside.astype(np.float32), 0.7)
    shadow = ndimage.gaussian_filter(np.roll(alpha, (int(0.1 * h) + 1, int(0.08 * w) + 1), (0, 1)), 0.08 * w + 1)
    shade = 0.75 + 0.35 * (1 - v.clip(0, 1))  # lit from above
    img = img * (1 - 0.4 * shadow[..., None] * (1 - alpha[..., None]))
    return img * (1 - alpha[..., None]) + alpha[..., None] * fill * shade[..., None]


def render_scene(rng: np.random.Generator, style: str, side: int = 288) -> np.ndarray:
    """One procedural scene of ``style`` as RGB uint8 ``[side, side, 3]``."""
    img, floor = _backdrop(rng, style, side)
    for _ in range(int(rng.integers(1, 4))):
        img = _flat_shape(rng, img, floor)
    for _ in range(int(rng.integers(1, 5))):
        w = int(side * rng.uniform(0.1, 0.28))
        y0 = int(rng.integers(max(0, floor - w), max(floor - w + 1, side - w)))
        x0 = int(rng.integers(0, side - w))
        kind = obj.OBJECT_KINDS[int(rng.integers(len(obj.OBJECT_KINDS)))]
        colour = list(obj.COLOURS)[int(rng.integers(len(obj.COLOURS)))]
        img, _, _ = obj.paste_object(np.clip(img, 0, 1).astype(np.float32), obj.ObjectSpec(kind, colour,
                                                                                       (y0, x0, y0 + w, x0 + w)))
    # Light: a directional gradient and a vignette.
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    angle = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0.05, 0.35) * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle))
    vignette = 1 - rng.uniform(0, 0.35) * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 2
    img = img * (light * vignette)[..., None] * rng.uniform(0.8, 1.15)
    # Camera: defocus, sensor noise, JPEG.
    if rng.random() < 0.4:
        img = ndimage.gaussian_filter(img, (rng.uniform(0.3, 1.2),) * 2 + (0,))
    img = img + rng.normal(0, rng.uniform(0.0, 0.02), img.shape).astype(np.float32)
    out = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    if rng.random() < 0.5:
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="JPEG", quality=int(rng.integers(60, 96)))
        buf.seek(0)
        out = np.asarray(Image.open(buf).convert("RGB"))
    return np.ascontiguousarray(out)
