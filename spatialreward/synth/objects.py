"""Procedural objects to paste into photos: a shaded shape, its alpha, and a soft cast shadow.

Each object is an implicit shape on normalised coordinates ``u, v ∈ [-1, 1]`` of its box (``u`` right, ``v``
down), lit from the upper left (Lambert shading on a pseudo-normal, plus a small specular highlight for round
things). `paste_object` composites it over an image with a shadow offset down-right, which is what makes a pasted
object read as part of the scene rather than a sticker. Colours are the shared vocabulary of `COLOURS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


# Colour name → RGB in [0, 1]. The chromatic ones are recolour targets; all may be an object's own colour.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12), "orange": (0.96, 0.52, 0.08), "yellow": (0.96, 0.86, 0.12),
    "green": (0.16, 0.66, 0.22), "teal": (0.02, 0.56, 0.56), "blue": (0.12, 0.30, 0.88),
    "purple": (0.52, 0.20, 0.72), "pink": (0.96, 0.46, 0.72), "brown": (0.52, 0.31, 0.13),
    "white": (0.95, 0.95, 0.95), "black": (0.08, 0.08, 0.09), "grey": (0.52, 0.52, 0.54),
}
CHROMATIC = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "brown")
OBJECT_KINDS = ("ball", "egg", "box", "balloon", "sign", "star", "heart", "ring", "can", "cone", "cushion")
ROUND_KINDS = {"ball", "egg", "balloon", "ring"}  # get a specular highlight


def hue_of(rgb: np.ndarray) -> np.ndarray:
    """Hue angle in degrees of ``[..., 3]`` colours, measured in the opponent (YCbCr chroma) plane."""
    rgb = np.asarray(rgb, dtype=np.float32)
    cb = -0.1687 * rgb[..., 0] - 0.3313 * rgb[..., 1] + 0.5 * rgb[..., 2]
    cr = 0.5 * rgb[..., 0] - 0.4187 * rgb[..., 1] - 0.0813 * rgb[..., 2]
    return np.degrees(np.arctan2(cr, cb)) % 360.0


def hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return float(min(d, 360.0 - d))


def colour_hue(name: str) -> float:
    return float(hue_of(np.array(COLOURS[name])))


@dataclass(frozen=True)
class ObjectSpec:
    """What to draw: ``kind`` (one of `OBJECT_KINDS`), ``colour`` (a `COLOURS` name) and its pixel ``box``."""

    kind: str
    colour: str
    box: tuple[int, int, int, int]

    @property
    def noun(self) -> str:
        return self.kind

    def phrase(self, with_colour: bool = True) -> str:
        return f"{self.colour} {self.kind}" if with_colour else self.kind


def _shape(kind: str, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inside mask and a pseudo-normal ``(nx, ny, nz)`` of one object kind (arrays on the whole image)."""
    r2 = u * u + v * v
    flat = np.zeros_like(u)
    if kind == "ball":
        inside = r2 <= 1.0
        return inside, u, v, np.sqrt(np.clip(1 - r2, 0, 1))
    if kind == "egg":
        uu, vv = u / (0.72 + 0.1 * v), v
        e2 = uu * uu + vv * vv
        return e2 <= 1.0, uu, vv, np.sqrt(np.clip(1 - e2, 0, 1))
    if kind == "balloon":
        uu, vv = u / 0.8, (v + 0.18) / 0.8
        e2 = uu * uu + vv * vv
        body = e2 <= 1.0
        string = (np.abs(u + 0.08 * np.sin(6 * v)) < 0.045) & (v > 0.6) & (v <= 1.0)
        nz = np.where(body, np.sqrt(np.clip(1 - e2, 0, 1)), 0.6)  # the string is a flat, half-lit line
        return body | string, np.where(body, uu, 0), np.where(body, vv, 0), nz
    if kind == "ring":
        r = np.sqrt(r2)
        inside = (r <= 1.0) & (r >= 0.5)
        t = (r - 0.75) / 0.25  # across the tube
        nz = np.sqrt(np.clip(1 - t * t, 0, 1))
        return inside, t * u / np.maximum(r, 1e-3), t * v / np.maximum(r, 1e-3), nz
    if kind == "box":
        inside = (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9)
        top = v < -0.45  # a lighter top face and a darker right side fake a 3-D crate
        side = u > 0.55
        nx = np.where(side, 0.7, 0.0)
        ny = np.where(top, -0.8, 0.0)
        return inside, nx, ny, np.where(top | side, 0.6, 1.0)
    if kind == "sign":
        board = (np.abs(u) <= 0.92) & (v >= -0.95) & (v <= 0.25)
        pole = (np.abs(u) <= 0.07) & (v > 0.25) & (v <= 1.0)
        return board | pole, flat, flat, np.where(pole, 0.55, 1.0)
    if kind == "star":
        ang = np.arctan2(v, u) + np.pi / 2
        k = (ang % (2 * np.pi / 5)) - np.pi / 5
        rad = 0.42 + 0.55 * np.abs(k) / (np.pi / 5)
        inside = np.sqrt(r2) <= rad
        return inside, 0.3 * u, 0.3 * v, np.full_like(u, 0.9)
    if kind == "heart":
        x, y = 1.15 * u, -1.15 * v + 0.15
        inside = (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
        return inside, 0.5 * u, 0.5 * v, np.sqrt(np.clip(1 - 0.5 * r2, 0, 1))
    if kind == "can":
        body = (np.abs(u) <= 0.62) & (v >= -0.78) & (v <= 0.92)
        top = ((u / 0.62) ** 2 + ((v + 0.78) / 0.16) ** 2) <= 1.0
        nx = np.where(body, u / 0.62, 0.0)
        return body | top, nx, np.where(top & ~body, -0.9, 0.0), np.sqrt(np.clip(1 - nx * nx, 0, 1))
    if kind == "cone":
        inside = (v <= 0.95) & (np.abs(u) <= 0.85 * (v + 0.95) / 1.9) & (v >= -0.95)
        w = np.maximum(0.85 * (v + 0.95) / 1.9, 1e-3)
        nx = np.clip(u / w, -1, 1)
        return inside, nx, flat - 0.2, np.sqrt(np.clip(1 - nx * nx, 0, 1))
    if kind == "cushion":
        s = np.abs(u) ** 4 + np.abs(v) ** 4
        return s <= 0.85, 0.8 * u * np.abs(u), 0.8 * v * np.abs(v), np.sqrt(np.clip(1 - s, 0, 1))
    raise ValueError(f"unknown object kind {kind!r}; known: {', '.join(OBJECT_KINDS)}")


def _window(size: int, box: tuple[int, int, int, int]) -> tuple[slice, slice]:
    """The part of the canvas an object and its shadow can touch: its box, 2 px before, room for the shadow's
    offset and blur after. Everything is computed there only (objects cover a few % of the image)."""
    y0, x0, y1, x1 = box
    side = max(y1 - y0, x1 - x0)
    after = int(np.ceil(0.08 * side + 3 * max(0.6, 0.05 * side))) + 3
    return slice(max(y0 - 2, 0), min(y1 + after, size)), slice(max(x0 - 2, 0), min(x1 + after, size))


def _render(spec: ObjectSpec, size: int, win: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb, alpha)`` of the object inside window ``win`` of an ``size×size`` canvas."""
    ys, xs = win
    y0, x0, y1, x1 = spec.box
    yy, xx = np.mgrid[ys, xs].astype(np.float32) + 0.5
    v = (yy - (y0 + y1) / 2) / max((y1 - y0) / 2, 1.0)
    u = (xx - (x0 + x1) / 2) / max((x1 - x0) / 2, 1.0)
    inside, nx, ny, nz = _shape(spec.kind, u, v)
    light = np.array([-0.45, -0.55, 0.7], dtype=np.float32)
    light /= np.linalg.norm(light)
    norm = np.sqrt(nx * nx + ny * ny + nz * nz) + 1e-6
    lambert = np.clip((nx * light[0] + ny * light[1] + nz * light[2]) / norm, 0, 1)
    shade = 0.35 + 0.75 * lambert
    colour = np.array(COLOURS[spec.colour], dtype=np.float32)
    rgb = colour[None, None, :] * shade[..., None]
    if spec.kind in ROUND_KINDS:  # a small highlight where the normal faces the light
        spec_hl = np.clip((lambert - 0.9) / 0.1, 0, 1) ** 2 * 0.45
        rgb = rgb + spec_hl[..., None]
    alpha = ndimage.gaussian_filter(inside.astype(np.float32), 0.6)
    return np.clip(rgb, 0, 1).astype(np.float32), alpha


def render_object(spec: ObjectSpec, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb [H, W, 3], alpha [H, W])`` float32 of one object on an ``size×size`` canvas (alpha anti-aliased)."""
    win = _window(size, spec.box)
    rgb_w, alpha_w = _render(spec, size, win)
    rgb = np.zeros((size, size, 3), np.float32)
    alpha = np.zeros((size, size), np.float32)
    rgb[win], alpha[win] = rgb_w, alpha_w
    return rgb, alpha


def shadow_alpha(obj_alpha: np.ndarray, spec: ObjectSpec) -> np.ndarray:
    """A soft shadow: the object's alpha shifted down-right by ~8 % of its size and blurred."""
    y0, x0, y1, x1 = spec.box
    side = max(y1 - y0, x1 - x0)
    dy, dx = max(1, round(0.08 * side)), max(1, round(0.06 * side))
    sh = np.zeros_like(obj_alpha)
    sh[dy:, dx:] = obj_alpha[:-dy, :-dx]
    return ndimage.gaussian_filter(sh, max(0.6, 0.05 * side))


SHADOW_DARKNESS = 0.45


def paste_object(image: np.ndarray, spec: ObjectSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Composite ``spec`` over ``image`` with its shadow. Returns ``(composite, object_alpha, support)`` where
    ``support`` (float32 in [0, 1]) covers object and shadow: where the composite differs from ``image``."""
    size = image.shape[0]
    win = _window(size, spec.box)
    rgb, alpha = _render(spec, size, win)
    sh = shadow_alpha(alpha, spec) * (1.0 - alpha)  # in the window: it leaves room for the shadow
    patch = image[win] * (1.0 - SHADOW_DARKNESS * sh[..., None])
    patch = patch * (1.0 - alpha[..., None]) + rgb * alpha[..., None]
    out = image.astype(np.float32, copy=True)
    out[win] = patch
    alpha_full = np.zeros((size, size), np.float32)
    support = np.zeros((size, size), np.float32)
    alpha_full[win] = alpha
    support[win] = np.clip(1.0 - (1.0 - alpha) * (1.0 - np.clip(sh * 2.0, 0, 1)), 0, 1)
    return out, alpha_full, support
