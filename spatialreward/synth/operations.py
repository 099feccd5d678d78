"""The edit operations: recolour, add, remove, texture, background, tone (a global tone/style change), move and
resize.

Each operation does two things:

* ``plan(rng, base)`` prepares one GRPO group's edit: the source image (a random photo view, with pasted objects
  where the edit needs one — an object to recolour or to remove, a subject to put in front of a new background),
  the requested attribute (a colour, an object, a material, a background, a tone), the alternatives a
  wrong-attribute edit may use, the intended region and a *decoy* region (where a wrong-region edit goes), and the
  words an instruction uses to name them.
* ``render(plan, image, attribute, region, feather)`` draws the edit on ``image`` and returns ``(full, support)``:
  the fully edited image and a soft ``[H, W]`` support (where the edit acts). Candidate kinds (`candidates`) then
  fade, cut, misplace or degrade it. The *ideal* edit — the requested attribute in the intended region at full
  strength — is the reference the ground-truth measures (`truth`) compare against.

Everything is float32 ``[H, W, 3]`` in [0, 1]. Randomness lives in ``plan``; fills that an ideal and a candidate
must share (a texture crop, a background) are drawn once per plan and cached in ``plan.fills``.

``plan(..., varied=True)`` (the diverse recipe) also draws what a policy gets wrong in real instructions: a decoy
of the *same* kind as the target (only its colour or place tells them apart: "the red ball", not "the blue one"),
positions relative to another object ("the cup left of the box") and two regions in one instruction ("make the
ball on the left and the box at the top red"). ``varied=False`` makes exactly the classic generator's draws.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from spatialreward.synth import objects as obj
from spatialreward.synth import regions as reg
from spatialreward.synth import textures as tex

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luma(image: np.ndarray) -> np.ndarray:
    return image @ LUMA


@dataclass
class EditPlan:
    """One group's edit. ``words`` fills instruction templates; ``fills`` caches per-attribute fills."""

    operation: str
    family: str  # instruction template family (instructions.TEMPLATES key)
    source: np.ndarray
    attribute: str
    alternatives: tuple[str, ...]
    region: reg.Region
    decoy: reg.Region
    words: dict[str, str]
    is_global: bool = False
    clean: np.ndarray | None = None  # remove: the photo without the pasted objects
    fills: dict[str, np.ndarray] = field(default_factory=dict)
    seed: int = 0  # for fills drawn lazily (deterministic per attribute)
    info: dict[str, Any] = field(default_factory=dict)  # move / resize: the objects (by box) and where they go

    def fill(self, key: str, make: Callable[[np.random.Generator], np.ndarray]) -> np.ndarray:
        """The fill ``key``, made once per plan with its own generator (so it does not depend on call order)."""
        if key not in self.fills:
            self.fills[key] = make(np.random.default_rng([self.seed, zlib.crc32(key.encode())]))
        return self.fills[key]

    def on_source(self, key: str, image: np.ndarray, make: Callable[[], np.ndarray]) -> np.ndarray:
        """``make()``, cached when ``image`` is the plan's source (most candidates render on it)."""
        if image is not self.source:
            return make()
        return self.fill(f"source:{key}", lambda _: make())


def whole_region(size: int) -> reg.Region:
    return reg.Region(mask=np.ones((size, size), dtype=bool), shape="whole", position="centre",
                      box=(0, 0, size, size))


# ---------------------------------------------------------------------------------------------------------------
# Pixel transforms shared by operations
# ---------------------------------------------------------------------------------------------------------------


def colourise(image: np.ndarray, colour: str) -> np.ndarray:
    """Paint ``image`` in ``colour`` keeping its shading and texture.

    The colour is shifted by half of the *smooth* luminance deviation (so a dark area turns dark red, a bright one
    light red) plus all of the fine detail (so texture survives a recolour, as it does in a real one).
    """
    c = np.array(obj.COLOURS[colour], dtype=np.float32)
    y = luma(image)
    y_smooth = ndimage.gaussian_filter(y, 2.0 * image.shape[0] / 224)
    shift = 0.5 * (y_smooth - float(c @ LUMA)) + (y - y_smooth)
    return np.clip(c + shift[..., None], 0, 1)


def shade_fill(fill: np.ndarray, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A material fill lit like ``image`` under ``mask`` (luminance ratio to the region's mean, damped)."""
    y = luma(image)
    mean = float(y[mask].mean()) if mask.any() else float(y.mean())
    shading = np.clip(0.6 + 0.4 * y / max(mean, 0.05), 0.4, 1.5)
    return np.clip(fill * shading[..., None], 0, 1)


def diffuse_fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A fast inpainting: normalised Gaussian convolution of the known pixels at three scales, coarse to fine.

    Much faster than ``skimage.restoration.inpaint_biharmonic`` and, like real quick inpainting, it leaves a smooth
    smear where texture was — which the naturalness measure notices. Only the mask's neighbourhood is computed.
    """
    out = image.copy()
    if not mask.any():
        return out
    size = image.shape[0]
    pad = size // 5
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    sl = (slice(max(ys[0] - pad, 0), ys[-1] + pad + 1), slice(max(xs[0] - pad, 0), xs[-1] + pad + 1))
    img, m = image[sl], mask[sl]
    known = (~m).astype(np.float32)
    filled = img.copy()
    for sigma in (size / 10, size / 25, size / 60):
        num = ndimage.gaussian_filter(img * known[..., None], (sigma, sigma, 0))
        den = ndimage.gaussian_filter(known, sigma)[..., None]
        est = num / np.maximum(den, 1e-4)
        trust = np.clip(den * 4, 0, 1)  # only where enough known pixels are near
        filled = np.where(m[..., None], filled * (1 - trust) + est * trust, filled)
    out[sl] = filled
    return out.astype(np.float32)


# Global tones: key → (function, adjective phrase for "Make the photo …", noun phrase for "Give the image …").
_SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], dtype=np.float32)


def _grey(x: np.ndarray) -> np.ndarray:
    return np.repeat(luma(x)[..., None], 3, axis=2)


def _sat(x: np.ndarray, k: float) -> np.ndarray:
    return _grey(x) + k * (x - _grey(x))


TONES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str, str]] = {
    "warm": (lambda x: x * np.float32([1.1, 1.0, 0.78]) + np.float32([0.05, 0.02, 0.0]),
             "warmer", "a warm colour tone"),
    "cool": (lambda x: x * np.float32([0.8, 0.96, 1.12]) + np.float32([0.0, 0.01, 0.05]),
             "cooler", "a cool, bluish tone"),
    "bw": (_grey, "black and white", "a black-and-white look"),
    "sepia": (lambda x: x @ _SEPIA.T, "sepia-toned", "a sepia tone"),
    "bright": (lambda x: 1 - (1 - x) ** 1.9, "brighter", "more brightness"),
    "dark": (lambda x: x**1.9, "darker", "a darker exposure"),
    "contrast": (lambda x: 0.5 + 0.5 * np.tanh(3.2 * (x - 0.5)) / np.tanh(1.6), "more contrasty",
                 "stronger contrast"),
    "faded": (lambda x: _sat(0.22 + 0.62 * x, 0.65), "faded", "a faded, washed-out look"),
    "vivid": (lambda x: _sat(x, 1.9), "more vivid", "more saturated colours"),
    "muted": (lambda x: _sat(x, 0.3), "muted", "muted, desaturated colours"),
    "vintage": (lambda x: 0.55 * (x @ _SEPIA.T) + 0.45 * (0.18 + 0.7 * x), "look vintage", "a vintage film look"),
    "night": (lambda x: x**1.7 * np.float32([0.5, 0.65, 1.05]), "look like it was shot at night",
              "a night-time look"),
    "golden": (lambda x: 1 - np.clip(1 - x * np.float32([1.12, 0.98, 0.7]), 0, 1) ** 1.5, "glow like golden hour",
               "a golden-hour glow"),
}


def tone(image: np.ndarray, key: str) -> np.ndarray:
    return np.clip(TONES[key][0](image), 0, 1).astype(np.float32)


def _blend(image: np.ndarray, target: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return (image + alpha[..., None] * (target - image)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Planning helpers
# ---------------------------------------------------------------------------------------------------------------


def _object_box(rng: np.random.Generator, size: int, cell: tuple[int, int]) -> tuple[int, int, int, int]:
    return reg.cell_box(rng, size, cell, (0.55, 0.85))


def _pick(rng: np.random.Generator, pool) -> str:
    pool = list(pool)
    return pool[int(rng.integers(len(pool)))]


def _far_colours(colour: str, min_deg: float) -> list[str]:
    """Chromatic colours at least ``min_deg`` of hue from ``colour`` (achromatic colours are far from all)."""
    if colour not in obj.CHROMATIC:
        return list(obj.CHROMATIC)
    h = obj.colour_hue(colour)
    return [c for c in obj.CHROMATIC if obj.hue_distance(h, obj.colour_hue(c)) >= min_deg]


SIMILAR_DECOY = 0.35  # share of object edits (varied plans) whose decoy is the same kind of object as the target
RELATIVE_POSITION = 0.3  # share of object targets (varied plans) named by where they are from the other object


def _paste_objects(rng: np.random.Generator, base: np.ndarray, count: int, *, avoid_colour: str | None = None,
                   similar: bool = False):
    """Paste ``count`` objects of distinct kinds in non-adjacent cells (``similar``: the second is the first's kind
    in another colour). Returns ``(image, [(spec, alpha, support), ...])``, the target first."""
    size = base.shape[0]
    cells: list[tuple[int, int]] = []
    for _ in range(count):
        cells.append(reg.pick_cell(rng, exclude=tuple(cells)))
    colours = [c for c in obj.COLOURS if avoid_colour is None or c in _far_colours(avoid_colour, 60)]
    specs: list[obj.ObjectSpec] = []
    for i, cell in enumerate(cells):
        if i == 1 and similar:
            kind, colour = specs[0].kind, _pick(rng, [c for c in colours if c != specs[0].colour])
        else:
            kind, colour = _pick(rng, [k for k in obj.OBJECT_KINDS if k not in {sp.kind for sp in specs}]), None
        specs.append(obj.ObjectSpec(kind, colour or _pick(rng, colours), _object_box(rng, size, cell)))
    img, placed = base, []
    for spec in specs:
        img, alpha, support = obj.paste_object(img, spec)
        placed.append((spec, alpha, support))
    return img, placed


def _paste_pair(rng: np.random.Generator, base: np.ndarray, *, avoid_colour: str | None = None,
                similar: bool = False):
    """Paste a target object and a distractor object in two non-adjacent cells (of another kind, or of the same
    kind in another colour when ``similar``). Returns ``(source, target_spec, target_alpha, target_support,
    decoy_spec, decoy_alpha, decoy_support)``."""
    img, ((spec_a, alpha_a, sup_a), (spec_b, alpha_b, sup_b)) = _paste_objects(
        rng, base, 2, avoid_colour=avoid_colour, similar=similar)
    return img, spec_a, alpha_a, sup_a, spec_b, alpha_b, sup_b


def _object_region(alpha: np.ndarray, spec: obj.ObjectSpec) -> reg.Region:
    mask = alpha > 0.5
    return reg.Region(mask=mask, shape="object", position=reg.position_of(mask), box=spec.box)


def _area_pair(rng: np.random.Generator, image: np.ndarray) -> tuple[reg.Region, reg.Region]:
    cell_a = reg.pick_cell(rng)
    cell_b = reg.pick_cell(rng, exclude=(cell_a,))
    return reg.area_region(rng, image, cell_a), reg.area_region(rng, image, cell_b)


def _target_words(region: reg.Region, noun: str, rng: np.random.Generator, *, colour: str | None = None,
                  ref: tuple[str, np.ndarray] | None = None) -> dict[str, str]:
    """Words naming the target: ``thing``, ``pos`` ("in the upper-left") and ``target`` ("the ball in the upper-left").

    ``colour`` goes into ``target`` ("the red ball …": a same-kind decoy is told apart by it). ``ref = (noun,
    mask)`` of another object lets ``pos`` be relative to it ("left of the box") in `RELATIVE_POSITION` of the cases
    where one direction clearly dominates."""
    phrase = None
    if ref is not None and rng.random() < RELATIVE_POSITION:
        phrase = _relative_phrase(rng, region.mask, ref)
    phrase = phrase or _pick(rng, reg.POSITION_PHRASES[region.position])
    named = f"{colour} {noun}" if colour else noun
    return {"thing": noun, "pos": phrase, "target": f"the {named} {phrase}"}


def _relative_phrase(rng: np.random.Generator, mask: np.ndarray, ref: tuple[str, np.ndarray]) -> str | None:
    """"left of the box" when the target's centroid is clearly (1.5×) further along one axis than the other from the
    reference object's; None for a diagonal layout (then the absolute position names it)."""
    noun, ref_mask = ref
    (ty, tx), (ry, rx) = (np.argwhere(m).mean(0) for m in (mask, ref_mask))
    dy, dx = ty - ry, tx - rx
    if abs(dx) > 1.5 * abs(dy):
        side = "left" if dx < 0 else "right"
    elif abs(dy) > 1.5 * abs(dx):
        side = "above" if dy < 0 else "below"
    else:
        return None
    return f"{_pick(rng, reg.RELATIVE_PHRASES[side])} the {noun}"


TWO_REGIONS = 0.15  # share of recolour edits (varied plans) that name two objects


def _varied_words(rng: np.random.Generator, region: reg.Region, spec: obj.ObjectSpec, decoy_spec: obj.ObjectSpec,
                  decoy: reg.Region, varied: bool, similar: bool) -> dict[str, str]:
    """`_target_words` of an object target: a same-kind decoy makes the target's colour part of its name; a decoy
    of another kind can be the reference of a relative position. ``varied=False``: the classic draws exactly."""
    if not varied:
        return _target_words(region, spec.kind, rng)
    if similar:
        return _target_words(region, spec.kind, rng, colour=spec.colour)
    return _target_words(region, spec.kind, rng, ref=(decoy_spec.kind, decoy.mask))


def _recentred(box: tuple[int, int, int, int], centre: tuple[float, float], size: int,
               scale: float = 1.0) -> tuple[int, int, int, int]:
    """``box`` scaled by ``scale`` and moved to ``centre`` (y, x), clipped to the image."""
    h, w = (box[2] - box[0]) * scale, (box[3] - box[1]) * scale
    cy, cx = centre
    y0, x0 = int(round(cy - h / 2)), int(round(cx - w / 2))
    return max(y0, 0), max(x0, 0), min(int(round(cy + h / 2)), size), min(int(round(cx + w / 2)), size)


def _box_centre(box: tuple[int, int, int, int]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _relocation_region(base: np.ndarray, origin: reg.Region, support: np.ndarray, spec: obj.ObjectSpec) -> reg.Region:
    """Where a move or resize acts: the object's old footprint (``support``: body and shadow) and its new one
    (``spec``). ``box`` stays the old object's box: `render` finds the object by it."""
    _, _, new_support = obj.paste_object(base, spec)
    mask = reg.dilate(support > 0.3, 1) | (new_support > 0.5)
    return reg.Region(mask=mask, shape="object", position=origin.position, box=origin.box)


def _relocate(plan: EditPlan, image: np.ndarray, support: np.ndarray, spec: obj.ObjectSpec, feather: float):
    """Clear an object (its ``support``: body and shadow) back to the photo under it, then paste ``spec``: a move
    or a resize. Returns ``(image, support of both)``."""
    alpha = reg.soft_alpha(reg.dilate(support > 0.3, 1), feather)
    cleared = _blend(image, plan.clean, alpha)
    placed, _, new_support = obj.paste_object(cleared, spec)
    return placed, np.maximum(alpha, new_support)


# ---------------------------------------------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------------------------------------------


class Recolour:
    """Paint an object or an area in a named colour, keeping its shading."""

    name = "recolour"
    is_global = False

    def plan(self, rng: np.random.Generator, base: np.ndarray, varied: bool = True) -> EditPlan:
        colour = _pick(rng, obj.CHROMATIC)
        u = rng.random()
        if varied and u < TWO_REGIONS:  # two objects named in one instruction; the decoy is a third
            source, placed = _paste_objects(rng, base, 3, avoid_colour=colour)
            (spec_a, alpha_a, _), (spec_b, alpha_b, _), (spec_c, alpha_c, _) = placed
            first, second = _object_region(alpha_a, spec_a), _object_region(alpha_c, spec_c)
            mask = first.mask | second.mask
            ys, xs = np.nonzero(mask)
            region = reg.Region(mask=mask, shape="object", position=reg.position_of(mask),
                                box=(int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1))
            decoy = _object_region(alpha_b, spec_b)
            words = _target_words(first, spec_a.kind, rng)
            words["target"] = f"{words['target']} and {_target_words(second, spec_c.kind, rng)['target']}"
            family = "recolour_two"
        elif u < 0.55:
            similar = varied and rng.random() < SIMILAR_DECOY
            source, spec_a, alpha_a, _, spec_b, alpha_b, _ = _paste_pair(rng, base, avoid_colour=colour,
                                                                         similar=similar)
            region, decoy = _object_region(alpha_a, spec_a), _object_region(alpha_b, spec_b)
            words = _varied_words(rng, region, spec_a, spec_b, decoy, varied, similar)
            family = "recolour_object"
        else:
            source = base
            region, decoy = _area_pair(rng, base)
            words = _target_words(region, reg.SHAPE_NOUNS[region.shape], rng)
            family = "recolour_area"
        words["colour"] = colour
        alts = tuple(_far_colours(colour, 100))
        return EditPlan(self.name, family, source, colour, alts, region, decoy, words)

    def render(self, plan: EditPlan, image: np.ndarray, attribute: str, region: reg.Region, feather: float):
        alpha = reg.soft_alpha(region.mask, feather)
        painted = plan.on_source(f"colourise:{attribute}", image, lambda: colourise(image, attribute))
        return _blend(image, painted, alpha), alpha

    def describe(self, attribute: str) -> str:
        return attribute


class AddObject:
    """Add a coloured object, with a cast shadow, at a named position."""

    name = "add"
    is_global = False

    def plan(self, rng: np.random.Generator, base: np.ndarray, varied: bool = True) -> EditPlan:
        size = base.shape[0]
        kind, colour = _pick(rng, obj.OBJECT_KINDS), _pick(rng, obj.CHROMATIC + ("white", "black"))
        cell_a = reg.pick_cell(rng)
        cell_b = reg.pick_cell(rng, exclude=(cell_a,))
        box_a, box_b = _object_box(rng, size, cell_a), _object_box(rng, size, cell_b)
        attribute = f"{colour}:{kind}"
        _, alpha_a, sup_a = obj.paste_object(base, obj.ObjectSpec(kind, colour, box_a))
        _, _, sup_b = obj.paste_object(base, obj.ObjectSpec(kind, colour, box_b))
        region = reg.Region(mask=sup_a > 0.5, shape="object", position=reg.position_of(alpha_a > 0.5), box=box_a)
        decoy = reg.Region(mask=sup_b > 0.5, shape="object", position=reg.position_of(sup_b > 0.5), box=box_b)
        alts = [f"{c}:{kind}" for c in _far_colours(colour, 100)]
        alts += [f"{colour}:{k}" for k in obj.OBJECT_KINDS if k != kind]
        words = {"thing": kind, "colour": colour, "pos": _pick(rng, reg.POSITION_PHRASES[region.position]),
                 "article": "an" if colour[0] in "aeiou" else "a"}
        words["target"] = f"{words['article']} {colour} {kind} {words['pos']}"
        return EditPlan(self.name, "add", base, attribute, tuple(alts), region, decoy, words)

    def render(self, plan: EditPlan, image: np.ndarray, attribute: str, region: reg.Region, feather: float):
        colour, kind = attribute.split(":")
        full, _, support = obj.paste_object(image, obj.ObjectSpec(kind, colour, region.box))
        return full, support

    def describe(self, attribute: str) -> str:
        colour, kind = attribute.split(":")
        return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {kind}"


class RemoveObject:
    """Remove a pasted object (and its shadow). The ideal is the photo as it was before the paste."""

    name = "remove"
    is_global = False

    def plan(self, rng: np.random.Generator, base: np.ndarray, varied: bool = True) -> EditPlan:
        similar = varied and rng.random() < SIMILAR_DECOY
        source, spec_a, alpha_a, sup_a, spec_b, _, sup_b = _paste_pair(rng, base, similar=similar)
        region = reg.Region(mask=reg.dilate(sup_a > 0.3, 1), shape="object", position=reg.position_of(alpha_a > 0.5),
                            box=spec_a.box)
        decoy = reg.Region(mask=reg.dilate(sup_b > 0.3, 1), shape="object", position=reg.position_of(sup_b > 0.5),
                           box=spec_b.box)
        words = _varied_words(rng, region, spec_a, spec_b, decoy, varied, similar)
        words["colour"] = spec_a.colour
        # Wrong attribute for a removal: the object was swapped for another one instead of removed.
        alts = tuple(f"swap:{c}:{k}" for k in obj.OBJECT_KINDS if k != spec_a.kind for c in ("red", "blue", "yellow"))
        plan = EditPlan(self.name, "remove", source, "remove", alts, region, decoy, words, clean=base)
        return plan

    def render(self, plan: EditPlan, image: np.ndarray, attribute: str, region: reg.Region, feather: float,
               fill_mix: float = 0.0):
        alpha = reg.soft_alpha(region.mask, feather)
        if attribute == "remove":
            patch = plan.clean
            if fill_mix > 0:  # a quick inpainting leaves a smear: mix some in
                if image is plan.source:  # the usual case: the same fill for every candidate of the group
                    fill = plan.fill(f"diffuse:{region.box}", lambda _: diffuse_fill(image, region.mask))
                else:
                    fill = diffuse_fill(image, region.mask)
                patch = patch * (1 - fill_mix) + fill * fill_mix
            return _blend(image, patch, alpha), alpha
        _, colour, kind = attribute.split(":")
        swapped, _, support = obj.paste_object(plan.clean, obj.ObjectSpec(kind, colour, region.box))
        alpha = np.maximum(alpha, support)
        return _blend(image, swapped, alpha), alpha

    def describe(self, attribute: str) -> str:
        if attribute == "remove":
            return "removed"
        _, colour, kind = attribute.split(":")
        return f"replaced by a {colour} {kind}"


class Retexture:
    """Give an object or an area a material: brick, grass, gravel, wood, marble, tiles, sand, water."""

    name = "texture"
    is_global = False

    def plan(self, rng: np.random.Generator, base: np.ndarray, varied: bool = True) -> EditPlan:
        material = _pick(rng, tex.MATERIALS)
        if rng.random() < 0.5:
            similar = varied and rng.random() < SIMILAR_DECOY
            source, spec_a, alpha_a, _, spec_b, alpha_b, _ = _paste_pair(rng, base, similar=similar)
            region, decoy = _object_region(alpha_a, spec_a), _object_region(alpha_b, spec_b)
            words = _varied_words(rng, region, spec_a, spec_b, decoy, varied, similar)
            family = "texture_object"
        else:
            source = base
            region, decoy = _area_pair(rng, base)
            words = _target_words(region, reg.SHAPE_NOUNS[region.shape], rng)
            family = "texture_area"
        words["material"] = tex.MATERIALS[material]
        alts = tuple(m for m in tex.MATERIALS if m != material)
        return EditPlan(self.name, family, source, material, alts, region, decoy, words, seed=int(rng.integers(2**31)))

    def render(self, plan: EditPlan, image: np.ndarray, attribute: str, region: reg.Region, feather: float):
        size = image.shape[0]
        fill = plan.fill(attribute, lambda r: tex.material(r, attribute, size))
        alpha = reg.soft_alpha(region.mask, feather)
        shaded = plan.on_source(f"shade:{attribute}:{region.box}:{region.area}", image,
                                lambda: shade_fill(fill, image, region.mask))
        return _blend(image, shaded, alpha), alpha

    def describe(self, attribute: str) -> str:
        return tex.MATERIALS[attribute]


class Background:
    """Replace the background behind a subject (a large pasted object, or the middle of the photo)."""

    name = "background"
    is_global = False

    def plan(self, rng: np.random.Generator, base: np.ndarray, varied: bool = True) -> EditPlan:
        size = base.shape[0]
        side = rng.uniform(0.42, 0.6) * size
        cy, cx = size / 2 + rng.uniform(-0.08, 0.08) * size, size / 2 + rng.uniform(-0.08, 0.08) * size
        box = (int(cy - side / 2), int(cx - side / 2 * rng.uniform(0.8, 1.0)),
               int(cy + side / 2), int(cx + side / 2 * rng.uniform(0.8, 1.0)))
        if rng.random() < 0.6:
            spec = obj.ObjectSpec(_pick(rng, obj.OBJECT_KINDS), _pick(rng, obj.COLOURS), box)
            source, alpha, _ = obj.paste_object(base, spec)
            subject_mask = alpha > 0.5
            noun, family = spec.kind, "background_object"
        else:
            source = base
            u, v = reg._grid(size, box)
            subject_mask = u * u + v * v <= 1.0
            noun, family = "subject", "background_subject"
        bg_key = _pick(rng, tex.BACKGROUNDS)
        if bg_key == "blur":
            family = "background_blur"
        subject = reg.Region(mask=subject_mask, shape="subject", position="centre", box=box)
        region = reg.Region(mask=~subject_mask, shape="background", position="centre", box=(0, 0, size, size))
        words = {"thing": noun, "background": tex.BACKGROUNDS[bg_key], "target": "the background"}
        alts = tuple(b for b in tex.BACKGROUNDS if b != bg_key)
        return EditPlan(self.name, family, source, bg_key, alts, region, subject, words, seed=int(rng.integers(2**31)))

    def render(self, plan: EditPlan, image: np.ndarray, attribute: str, region: reg.Region, feather: float):
        if attribute == "blur":
            fill = plan.on_source("blur", image, lambda: tex.background(np.random.default_rng(plan.seed), "blur", image))
        else:
            fill = plan.fill(attribute, lambda r: tex.background(r, attribute, image))
        alpha = reg.soft_alpha(region.mask, feather)
        return _blend(image, fill, alpha), alpha

    def describe(self, attribute: str) -> str:
        return tex.BACKGROUNDS[attribute]


class GlobalTone:
    """A whole-image tone or style change (warmer, black and white, vintage, …); the region is the whole image."""

    name = "tone"
    is_global = True

    def plan(self, rng: np.random.Generator, base: np.ndarray, varied: bool = True) -> EditPlan:
        size = base.shape[0]
        key = _pick(rng, TONES)
        decoy = reg.area_region(rng, base, reg.pick_cell(rng))  # where a "region only" edit goes
        words = {"adj": TONES[key][1], "noun": TONES[key][2], "target": "the whole image"}
        alts = tuple(k for k in TONES if k != key)
        return EditPlan(self.name, "tone", base, key, alts, whole_region(size), decoy, words, is_global=True)

    def render(self, plan: EditPlan, image: np.ndarray, attribute: str, region: reg.Region, feather: float):
        if region.shape == "whole":
            alpha = np.ones(image.shape[:2], np.float32)
        else:  # a "region only" candidate: the tone inside one area
            alpha = reg.soft_alpha(region.mask, feather)
        toned = plan.on_source(f"tone:{attribute}", image, lambda: tone(image, attribute))
        return _blend(image, toned, alpha), alpha

    def describe(self, attribute: str) -> str:
        return TONES[attribute][1]


class _Relocation:
    """Move and resize: ``plan.info["objects"]`` holds each object (by its box) with its support, and `placed`
    says where, at which size, an object ends up for an attribute; where it was, the photo shows again."""

    is_global = False

    def placed(self, plan: EditPlan, spec: obj.ObjectSpec, attribute: str, size: int) -> obj.ObjectSpec:
        raise NotImplementedError

    def render(self, plan: EditPlan, image: np.ndarray, attribute: str, region: reg.Region, feather: float):
        spec, support = plan.info["objects"][region.box]
        return _relocate(plan, image, support, self.placed(plan, spec, attribute, image.shape[0]), feather)


class MoveObject(_Relocation):
    """Move an object (and its shadow) to a named place; where it was, the photo shows again."""

    name = "move"

    def plan(self, rng: np.random.Generator, base: np.ndarray, varied: bool = True) -> EditPlan:
        size = base.shape[0]
        similar = varied and rng.random() < SIMILAR_DECOY
        source, spec_a, alpha_a, sup_a, spec_b, alpha_b, sup_b = _paste_pair(rng, base, similar=similar)
        origin, decoy_origin = _object_region(alpha_a, spec_a), _object_region(alpha_b, spec_b)
        # Destinations: cell centres where the object, at its size, stays clear of both objects.
        margin = size // 20
        taken = [(y0 - margin, x0 - margin, y1 + margin, x1 + margin) for y0, x0, y1, x1 in (spec_a.box, spec_b.box)]
        cs = size / 3.0
        cells = {f"to:{p}": _recentred(spec_a.box, ((c[0] + 0.5) * cs, (c[1] + 0.5) * cs), size)
                 for c, p in reg.CELL_NAMES.items()}
        dests = {k: box for k, box in cells.items() if not any(_overlap(box, t) for t in taken)}
        if len(dests) < 2:  # crowded: any cell but the objects' own
            dests = {k: box for k, box in cells.items() if k[3:] not in (origin.position, decoy_origin.position)}
        keys = sorted(dests)
        attribute = keys[int(rng.integers(len(keys)))]
        info = {"objects": {spec_a.box: (spec_a, sup_a), spec_b.box: (spec_b, sup_b)}, "destinations": dests}
        region = _relocation_region(base, origin, sup_a, self._moved(spec_a, dests[attribute], size))
        decoy = _relocation_region(base, decoy_origin, sup_b, self._moved(spec_b, dests[attribute], size))
        words = _varied_words(rng, origin, spec_a, spec_b, decoy_origin, varied, similar)
        where = attribute.split(":")[1]
        words.update(colour=spec_a.colour, dest=_pick(rng, reg.DESTINATION_PHRASES[where]),
                     dest_at=_pick(rng, reg.POSITION_PHRASES[where]))
        alts = tuple(k for k in keys if k != attribute)
        return EditPlan(self.name, "move", source, attribute, alts, region, decoy, words, clean=base, info=info)

    @staticmethod
    def _moved(spec: obj.ObjectSpec, dest: tuple, size: int) -> obj.ObjectSpec:
        """``spec`` at its own size, centred on the destination box ``dest``."""
        return replace(spec, box=_recentred(spec.box, _box_centre(dest), size))

    def placed(self, plan: EditPlan, spec: obj.ObjectSpec, attribute: str, size: int) -> obj.ObjectSpec:
        return self._moved(spec, plan.info["destinations"][attribute], size)

    def describe(self, attribute: str) -> str:
        return f"moved {reg.DESTINATION_PHRASES[attribute.split(':')[1]][0]}"


class ResizeObject(_Relocation):
    """Make an object bigger or smaller about its centre; where it shrinks from, the photo shows again."""

    name = "resize"
    FACTORS = {"bigger": (1.35, 1.7), "smaller": (0.45, 0.7)}

    def plan(self, rng: np.random.Generator, base: np.ndarray, varied: bool = True) -> EditPlan:
        size = base.shape[0]
        attribute = ("bigger", "smaller")[int(rng.integers(2))]
        similar = varied and rng.random() < SIMILAR_DECOY
        source, spec_a, alpha_a, sup_a, spec_b, alpha_b, sup_b = _paste_pair(rng, base, similar=similar)
        factors = {k: float(rng.uniform(*r)) for k, r in self.FACTORS.items()}
        info = {"objects": {spec_a.box: (spec_a, sup_a), spec_b.box: (spec_b, sup_b)}, "factors": factors}
        origin, decoy_origin = _object_region(alpha_a, spec_a), _object_region(alpha_b, spec_b)
        region = _relocation_region(base, origin, sup_a, self._scaled(spec_a, factors[attribute], size))
        decoy = _relocation_region(base, decoy_origin, sup_b, self._scaled(spec_b, factors[attribute], size))
        words = _varied_words(rng, origin, spec_a, spec_b, decoy_origin, varied, similar)
        words["colour"] = spec_a.colour
        family = "resize_up" if attribute == "bigger" else "resize_down"
        alts = tuple(k for k in self.FACTORS if k != attribute)
        return EditPlan(self.name, family, source, attribute, alts, region, decoy, words, clean=base, info=info)

    @staticmethod
    def _scaled(spec: obj.ObjectSpec, factor: float, size: int) -> obj.ObjectSpec:
        return replace(spec, box=_recentred(spec.box, _box_centre(spec.box), size, scale=factor))

    def placed(self, plan: EditPlan, spec: obj.ObjectSpec, attribute: str, size: int) -> obj.ObjectSpec:
        return self._scaled(spec, plan.info["factors"][attribute], size)

    def describe(self, attribute: str) -> str:
        return f"made {attribute}"


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


OPERATIONS = {op.name: op for op in (Recolour(), AddObject(), RemoveObject(), Retexture(), Background(), GlobalTone(),
                                     MoveObject(), ResizeObject())}
# How often each operation is drawn (global tone edits are about a sixth of groups, local ones share the rest).
OPERATION_WEIGHTS = {"recolour": 0.17, "add": 0.13, "remove": 0.12, "texture": 0.12, "background": 0.1,
                     "tone": 0.16, "move": 0.1, "resize": 0.1}
# The classic recipe (synth-v1) draws from the first six only, with these weights.
CLASSIC_OPERATION_WEIGHTS = {"recolour": 0.2, "add": 0.17, "remove": 0.15, "texture": 0.15, "background": 0.13,
                             "tone": 0.2}
