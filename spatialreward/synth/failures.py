"""Failure families: the many ways an edit model degrades an image (artifacts) or changes too much (over-edits).

Why families: a student trained on one generator's five artifact types learns *those five*, not "an artifact". Each
family here is a small function with randomised parameters and a ``strength`` in (0, 1]; every candidate records its
family name (``params["family"]``, ``meta["failure_family"]``), and whole families can be held out of training
(`SynthConfig.heldout_families`) so an evaluation split measures the unseen ones.

Artifact families degrade the deliberate content C into the shown image E (``E ≠ C``); the truth scores them from
the image evidence E − C (SSIM loss in `truth`), so a faint JPEG scores close to clean and a strong one low.
Over-edit families change the content C itself where nobody asked; `truth` scores them through consistency (leak
outside the intended region, or the change no smooth global colour map explains) and naturalness.

All functions take and return float32 ``[H, W, 3]`` in [0, 1]; parameters scale with the image side (224 = 1).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from spatialreward.synth import objects as obj
from spatialreward.synth import regions as reg

Params = dict[str, Any]


def _jpeg(image: np.ndarray, quality: int, subsampling: int = 2) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(
        buf, format="JPEG", quality=int(quality), subsampling=subsampling)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0


def _ycc(image: np.ndarray) -> np.ndarray:
    m = np.array([[0.299, 0.587, 0.114], [-0.1687, -0.3313, 0.5], [0.5, -0.4187, -0.0813]], np.float32)
    return image @ m.T


def _rgb(ycc: np.ndarray) -> np.ndarray:
    m = np.array([[1.0, 0.0, 1.402], [1.0, -0.34414, -0.71414], [1.0, 1.772, 0.0]], np.float32)
    return ycc @ m.T


def _resize(image: np.ndarray, side: int, resample) -> np.ndarray:
    pil = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.asarray(pil.resize((side, side), resample), dtype=np.float32) / 255.0


# ---------------------------------------------------------------------------------------------------------------
# Artifact families: E = degrade(C)
# ---------------------------------------------------------------------------------------------------------------


def jpeg(rng, image, strength, area, p: Params) -> np.ndarray:
    """Compression blocking and ringing: one or two JPEG passes, quality 70 (faint) … 4 (strong)."""
    quality = int(round(70 - 66 * strength))
    passes = 1 + int(rng.random() < 0.3)
    sub = int(rng.choice([0, 1, 2]))
    p.update(quality=quality, passes=passes, subsampling=sub)
    out = image
    for k in range(passes):
        if k:  # a second pass on a shifted grid: re-saved after a crop
            dy, dx = int(rng.integers(1, 8)), int(rng.integers(1, 8))
            out = np.roll(_jpeg(np.roll(out, (-dy, -dx), (0, 1)), quality + 10, sub), (dy, dx), (0, 1))
        else:
            out = _jpeg(out, max(quality, 2), sub)
    return out


def chroma_shift(rng, image, strength, area, p: Params) -> np.ndarray:
    """Colour bleeding: the chroma planes shifted against luma and smeared (a misregistered or subsampled chroma)."""
    scale = image.shape[0] / 224
    shift = max(1, int(round((1 + 5 * strength) * scale)))
    dy, dx = [int(v) for v in rng.choice([-shift, 0, shift], size=2)]
    if dy == 0 and dx == 0:
        dx = shift
    ycc = _ycc(image)
    bleed = (0.5 + 2.5 * strength) * scale
    chroma = ndimage.gaussian_filter(np.roll(ycc[..., 1:], (dy, dx), (0, 1)), (bleed, bleed, 0))
    gain = 1.0 + float(rng.uniform(0.2, 0.8)) * strength  # oversaturated bleed
    p.update(shift=[dy, dx], bleed=round(bleed, 3), chroma_gain=round(gain, 3))
    return _rgb(np.concatenate([ycc[..., :1], chroma * gain], axis=2))


def unsharp_mask(image: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    """``image + amount · (image − blur)``: halos when strong and wide, sharpening when narrow (per channel)."""
    return image + amount * (image - ndimage.gaussian_filter(image, (sigma, sigma, 0)))


def halo(rng, image, strength, area, p: Params) -> np.ndarray:
    """Halos around edges: an over-strong, wide unsharp mask (bright and dark rims along every contour)."""
    sigma = float(rng.uniform(2.0, 6.0)) * image.shape[0] / 224
    amount = 0.6 + 2.4 * strength
    p.update(sigma=round(sigma, 3), amount=round(amount, 3))
    return unsharp_mask(image, sigma, amount)


def ghosting(rng, image, strength, area, p: Params) -> np.ndarray:
    """Ghosting / double edges: a faint displaced copy of the content over itself."""
    scale = image.shape[0] / 224
    dist = (2 + 8 * rng.random()) * scale
    angle = rng.uniform(0, 2 * np.pi)
    dy, dx = int(round(dist * np.sin(angle))), int(round(dist * np.cos(angle)))
    if dy == 0 and dx == 0:
        dx = 2
    alpha = 0.15 + 0.4 * strength
    p.update(offset=[dy, dx], alpha=round(alpha, 3))
    return (1 - alpha) * image + alpha * np.roll(image, (dy, dx), (0, 1))


def smear(rng, image, strength, area, p: Params) -> np.ndarray:
    """Smeared / melted texture: a directional motion blur or a median filter that wipes out fine detail."""
    scale = image.shape[0] / 224
    if rng.random() < 0.5:
        length = max(3, int(round((3 + 12 * strength) * scale)))
        angle = float(rng.uniform(0, 180))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0
        kernel = ndimage.rotate(kernel, angle, reshape=False, order=1)
        kernel /= max(kernel.sum(), 1e-6)
        p.update(mode="motion", length=length, angle=round(angle, 1))
        return np.stack([ndimage.convolve(image[..., c], kernel, mode="nearest") for c in range(3)], axis=2)
    size = max(3, int(round((3 + 6 * strength) * scale)) | 1)
    p.update(mode="median", size=size)
    return ndimage.median_filter(image, size=(size, size, 1))


def checkerboard(rng, image, strength, area, p: Params) -> np.ndarray:
    """Upsampling patterns: a transposed-convolution checkerboard (period 2 or 4) riding on the local contrast."""
    h, w = image.shape[:2]
    period = int(rng.choice([2, 4]))
    yy, xx = np.mgrid[0:h, 0:w]
    pattern = (((yy // (period // 2)) + (xx // (period // 2))) % 2 * 2 - 1).astype(np.float32)
    amp = 0.03 + 0.12 * strength
    coarse = _resize(_resize(image, max(8, h // period), Image.Resampling.BILINEAR), h, Image.Resampling.NEAREST)
    mix = 0.3 * strength
    p.update(period=period, amplitude=round(amp, 4), blockiness_mix=round(mix, 3))
    base = (1 - mix) * image + mix * coarse
    return base * (1 + amp * pattern[..., None]) + 0.5 * amp * pattern[..., None] * 0.2


def aliasing(rng, image, strength, area, p: Params) -> np.ndarray:
    """Aliasing and jaggies: resampled down without a low-pass filter and back up by nearest neighbour."""
    side = image.shape[0]
    factor = 1.5 + 3.0 * strength
    small = max(8, int(round(side / factor)))
    p.update(factor=round(factor, 3))
    idx = np.round(np.linspace(0, side - 1, small)).astype(int)
    down = image[idx][:, idx]
    up = np.round(np.linspace(0, small - 1, side)).astype(int)
    return down[up][:, up]


def posterise(rng, image, strength, area, p: Params) -> np.ndarray:
    """Posterisation and banding: too few levels per channel (sometimes on luma only, so gradients band)."""
    levels = int(round(24 - 20 * strength))
    luma_only = bool(rng.random() < 0.4)
    p.update(levels=levels, luma_only=luma_only)
    if luma_only:
        ycc = _ycc(image)
        ycc[..., 0] = np.round(ycc[..., 0] * (levels - 1)) / (levels - 1)
        return _rgb(ycc)
    return np.round(image * (levels - 1)) / (levels - 1)


def noise(rng, image, strength, area, p: Params) -> np.ndarray:
    """Noise of several kinds: Gaussian, signal-dependent shot noise, chroma blotches, impulse, or banded stripes."""
    h, w = image.shape[:2]
    mode = str(rng.choice(["gaussian", "shot", "chroma", "impulse", "stripes"]))
    p["mode"] = mode
    if mode == "gaussian":
        sigma = 0.015 + 0.08 * strength
        p["sigma"] = round(sigma, 4)
        return image + rng.normal(0, sigma, image.shape).astype(np.float32)
    if mode == "shot":
        photons = 600.0 / (0.3 + 6 * strength) ** 2
        p["photons"] = round(photons, 2)
        return (rng.poisson(np.clip(image, 0, 1) * photons) / photons).astype(np.float32)
    if mode == "chroma":
        sigma = 0.03 + 0.12 * strength
        blob = 1.0 + 1.5 * rng.random()
        field = ndimage.gaussian_filter(rng.normal(0, 1, (h, w, 2)).astype(np.float32), (blob, blob, 0)) * blob
        p.update(sigma=round(sigma, 4), blob=round(blob, 3))
        ycc = _ycc(image)
        ycc[..., 1:] += sigma * field
        return _rgb(ycc)
    if mode == "impulse":
        share = 0.005 + 0.06 * strength
        hit = rng.random((h, w)) < share
        value = (rng.random((h, w)) < 0.5).astype(np.float32)
        p["share"] = round(share, 4)
        return np.where(hit[..., None], value[..., None], image)
    amp = 0.02 + 0.08 * strength
    freq = rng.uniform(0.08, 0.5)
    phase = rng.uniform(0, 2 * np.pi)
    axis = int(rng.integers(2))
    line = np.sin(freq * np.arange(h if axis == 0 else w) + phase).astype(np.float32)
    stripes = line[:, None] if axis == 0 else line[None, :]
    p.update(amplitude=round(amp, 4), frequency=round(float(freq), 4), axis=axis)
    return image + amp * stripes[..., None] + rng.normal(0, amp / 3, image.shape).astype(np.float32)


def local_blur(rng, image, strength, area, p: Params) -> np.ndarray:
    """Local blur: a Gaussian or box defocus, as when a generated patch comes back soft."""
    sigma = (0.8 + 3.2 * strength) * image.shape[0] / 224
    if rng.random() < 0.5:
        p.update(mode="gaussian", sigma=round(sigma, 3))
        return ndimage.gaussian_filter(image, (sigma, sigma, 0))
    size = max(2, int(round(2.5 * sigma)))
    p.update(mode="box", size=size)
    return ndimage.uniform_filter(image, (size, size, 1))


def warp(rng, image, strength, area, p: Params) -> np.ndarray:
    """Warped geometry: a smooth random displacement field (wobbly lines, melted shapes)."""
    h, w = image.shape[:2]
    scale = h / 224
    amp = (1.0 + 5.0 * strength) * scale
    smooth = float(rng.uniform(6, 16)) * scale
    dy, dx = (ndimage.gaussian_filter(rng.normal(0, 1, (h, w)).astype(np.float32), smooth) for _ in range(2))
    norm = max(float(np.abs(dy).max()), float(np.abs(dx).max()), 1e-6)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    coords = [yy + amp * dy / norm, xx + amp * dx / norm]
    p.update(amplitude=round(amp, 3), smoothness=round(smooth, 3))
    return np.stack([ndimage.map_coordinates(image[..., c], coords, order=1, mode="reflect") for c in range(3)], 2)


def _blob(rng, area: np.ndarray | None, size: int, frac: tuple[float, float]) -> np.ndarray:
    """A soft-edged random blob inside ``area`` (or anywhere), ``frac`` of the side across."""
    r = max(3, int(round(size * rng.uniform(*frac) / 2)))
    if area is not None and area.any():
        ys, xs = np.nonzero(area)
        k = int(rng.integers(len(ys)))
        cy, cx = int(ys[k]), int(xs[k])
    else:
        cy, cx = (int(v) for v in rng.integers(r, size - r, size=2))
    yy, xx = np.mgrid[0:size, 0:size]
    wobble = 1 + 0.25 * np.sin(np.arctan2(yy - cy, xx - cx) * int(rng.integers(2, 5)) + rng.uniform(0, 6.3))
    return np.hypot(yy - cy, xx - cx) < r * wobble


def duplicate_patch(rng, image, strength, area, p: Params) -> np.ndarray:
    """A duplicated patch: content from elsewhere in the frame cloned over part of the edit (a copy-paste error)."""
    size = image.shape[0]
    blob = _blob(rng, area, size, (0.12, 0.12 + 0.25 * strength))
    dy, dx = (int(v) for v in rng.integers(size // 6, size // 2, size=2) * rng.choice([-1, 1], size=2))
    alpha = ndimage.gaussian_filter(blob.astype(np.float32), 1.0)[..., None] * (0.6 + 0.4 * strength)
    p.update(offset=[dy, dx], blob_pixels=int(blob.sum()))
    return image + alpha * (np.roll(image, (dy, dx), (0, 1)) - image)


def inpaint_smudge(rng, image, strength, area, p: Params) -> np.ndarray:
    """An inpainting smudge: a blob filled with a blurred, slightly off-colour average of its surroundings."""
    size = image.shape[0]
    blob = _blob(rng, area, size, (0.1, 0.1 + 0.25 * strength))
    sigma = (4 + 8 * strength) * size / 224
    fill = ndimage.gaussian_filter(image, (sigma, sigma, 0))
    tint = rng.normal(0, 0.04 * strength, 3).astype(np.float32)
    alpha = ndimage.gaussian_filter(blob.astype(np.float32), 1.5 * size / 224)[..., None]
    p.update(sigma=round(sigma, 3), blob_pixels=int(blob.sum()))
    return image + alpha * (fill + tint - image)


def seam(rng, image, strength, area, p: Params) -> np.ndarray:
    """A seam at the region border: the patch misaligned by a pixel or two, outlined, maybe off in brightness."""
    size = image.shape[0]
    scale = size / 224
    if area is None or not area.any():
        area = np.zeros(image.shape[:2], dtype=bool)
        area[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = True
    shift = max(1, int(round((1 + 2 * strength) * scale)))
    dy, dx = (shift, 0) if rng.random() < 0.5 else (0, shift)
    gain = 1.0 + float(rng.uniform(-0.12, 0.12)) * strength
    out = np.where(area[..., None], np.roll(image, (dy, dx), axis=(0, 1)) * gain, image)
    edge = area & ~ndimage.binary_erosion(area, iterations=max(1, int(round(scale))))
    tone = np.float32(0.95 if rng.random() < 0.5 else 0.05)
    line = 0.2 + 0.6 * strength
    p.update(shift=[dy, dx], gain=round(gain, 3), line=round(line, 3))
    return np.where(edge[..., None], out * (1 - line) + tone * line, out)


@dataclass(frozen=True)
class Family:
    """One failure family: its function, whether it needs a local area (``local_only``) and may cover the frame."""

    name: str
    apply: Callable[..., np.ndarray]
    local_only: bool = False
    feather: bool = True  # blend into the area with a soft edge (a seam's hard edge is the point)


ARTIFACT_FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("jpeg", jpeg), Family("chroma_shift", chroma_shift), Family("halo", halo), Family("ghosting", ghosting),
    Family("smear", smear), Family("checkerboard", checkerboard), Family("aliasing", aliasing),
    Family("posterise", posterise), Family("noise", noise), Family("local_blur", local_blur), Family("warp", warp),
    Family("duplicate_patch", duplicate_patch, local_only=True), Family("inpaint_smudge", inpaint_smudge,
                                                                        local_only=True),
    Family("seam", seam, local_only=True, feather=False),
)}


def degrade(rng: np.random.Generator, image: np.ndarray, family: str, strength: float,
            area: np.ndarray | None, params: Params) -> np.ndarray:
    """Apply artifact ``family`` at ``strength`` in (0, 1]; ``area`` (bool) limits it (soft edge), None = frame."""
    fam = ARTIFACT_FAMILIES[family]
    out = np.clip(fam.apply(rng, image, strength, area, params), 0, 1).astype(np.float32)
    if area is None or not fam.feather:
        return out
    weight = ndimage.gaussian_filter(area.astype(np.float32), 1.5 * image.shape[0] / 224)[..., None]
    return (image + weight * (out - image)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Over-edit families: C' = over_edit(C), a change nobody asked for
# ---------------------------------------------------------------------------------------------------------------


def tone_shift(rng, image, strength, ctx, p: Params) -> np.ndarray:
    """A global tone or colour shift: exposure, contrast, gamma and white balance all drift a little."""
    s = strength
    gain = 1 + rng.uniform(-0.25, 0.25) * s
    gamma = float(np.exp(rng.uniform(-0.35, 0.35) * s))
    wb = (1 + rng.uniform(-0.15, 0.15, 3) * s).astype(np.float32)
    contrast = 1 + rng.uniform(-0.3, 0.3) * s
    p.update(gain=round(float(gain), 3), gamma=round(gamma, 3), white_balance=[round(float(v), 3) for v in wb],
             contrast=round(float(contrast), 3))
    x = np.clip(image * gain * wb, 0, 1) ** gamma
    return (x - 0.5) * contrast + 0.5


def second_object(rng, image, strength, ctx, p: Params) -> np.ndarray:
    """A second object (the plan's other object or area) changed too: recoloured or darkened."""
    plan = ctx["plan"]
    mask = plan.decoy.mask if plan.decoy.mask.any() else ctx["free_region"]().mask
    colour = obj.CHROMATIC[int(rng.integers(len(obj.CHROMATIC)))]
    from spatialreward.synth.operations import _blend, colourise

    alpha = reg.soft_alpha(mask, 1.0 * image.shape[0] / 224) * (0.4 + 0.6 * strength)
    p.update(colour=colour, where=plan.decoy.position)
    return _blend(image, colourise(image, colour), alpha)


def background_rerender(rng, image, strength, ctx, p: Params) -> np.ndarray:
    """The background re-rendered: everything away from the edit subtly resynthesised (re-blurred, re-sharpened,
    re-coloured), as a model that regenerates the whole frame does."""
    size = image.shape[0]
    keep = reg.dilate(ctx["protect"], max(2, size // 30))
    sigma = (0.6 + 1.6 * strength) * size / 224
    soft = ndimage.gaussian_filter(image, (sigma, sigma, 0))
    detail = rng.normal(0, 0.01 + 0.03 * strength, image.shape).astype(np.float32)
    detail = ndimage.gaussian_filter(detail, (0.7, 0.7, 0))
    cast = (1 + rng.uniform(-0.08, 0.08, 3) * strength).astype(np.float32)
    redone = np.clip(soft * cast + detail, 0, 1)
    alpha = 1.0 - reg.soft_alpha(keep, 2.0 * size / 224)
    p.update(sigma=round(sigma, 3))
    return image + alpha[..., None] * (redone - image)


def frame_shift(rng, image, strength, ctx, p: Params) -> np.ndarray:
    """The whole frame shifted, zoomed or re-cropped (the edit model did not keep the camera)."""
    size = image.shape[0]
    zoom = 1 + float(rng.uniform(0.0, 0.12)) * strength
    shift = (rng.uniform(-1, 1, 2) * (1 + 6 * strength) * size / 224).astype(np.float32)
    centre = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    coords = [(yy - centre) / zoom + centre - shift[0], (xx - centre) / zoom + centre - shift[1]]
    p.update(zoom=round(zoom, 4), shift=[round(float(v), 2) for v in shift])
    return np.stack([ndimage.map_coordinates(image[..., c], coords, order=1, mode="nearest") for c in range(3)], 2)


def sharpen_all(rng, image, strength, ctx, p: Params) -> np.ndarray:
    """Sharpening everywhere: an unsharp mask over the whole frame."""
    sigma = float(rng.uniform(0.8, 2.0)) * image.shape[0] / 224
    amount = 0.5 + 2.0 * strength
    p.update(sigma=round(sigma, 3), amount=round(amount, 3))
    return unsharp_mask(image, sigma, amount)


def denoise_all(rng, image, strength, ctx, p: Params) -> np.ndarray:
    """Denoising everywhere: fine texture wiped off the whole frame (a median or a smoothing filter)."""
    size = max(3, int(round((3 + 4 * strength) * image.shape[0] / 224)) | 1)
    p.update(size=size)
    return ndimage.median_filter(image, size=(size, size, 1))


def extra_object(rng, image, strength, ctx, p: Params) -> np.ndarray:
    """An extra object added elsewhere in the frame."""
    plan, size = ctx["plan"], image.shape[0]
    region = ctx["free_region"]()
    kind = obj.OBJECT_KINDS[int(rng.integers(len(obj.OBJECT_KINDS)))]
    colour = list(obj.COLOURS)[int(rng.integers(len(obj.COLOURS)))]
    box = reg.cell_box(rng, size, reg.cell_of(region.position), (0.3 + 0.3 * strength, 0.45 + 0.3 * strength))
    full, _, _ = obj.paste_object(image, obj.ObjectSpec(kind, colour, box))
    if plan.region.mask.any() and not plan.is_global:
        full = np.where(reg.dilate(plan.region.mask, 1)[..., None], image, full)
    p.update(object=f"{colour}:{kind}", where=region.position)
    return full


def collateral_patch(rng, image, strength, ctx, p: Params) -> np.ndarray:
    """A local recolour or texture somewhere else (the old generator's over-edit, kept as one family)."""
    from spatialreward.synth.candidates import collateral

    full, what = collateral(rng, ctx["plan"], image)
    p["collateral"] = what
    return image + (0.5 + 0.5 * strength) * (full - image)


@dataclass(frozen=True)
class OverEdit:
    name: str
    apply: Callable[..., np.ndarray]
    frame: bool = False  # changes the whole frame: its region is the whole image
    # A frame-wide filter or colour map: a tone edit's consistency measure (the change no smooth global colour map
    # explains, above a threshold) cannot tell it from the tone edit itself, so tone edits do not draw it.
    hidden_in_global_edits: bool = False


OVER_EDIT_FAMILIES: dict[str, OverEdit] = {f.name: f for f in (
    OverEdit("tone_shift", tone_shift, frame=True, hidden_in_global_edits=True),
    OverEdit("second_object", second_object),
    OverEdit("background_rerender", background_rerender, hidden_in_global_edits=True),
    OverEdit("frame_shift", frame_shift, frame=True),
    OverEdit("sharpen_all", sharpen_all, frame=True, hidden_in_global_edits=True),
    OverEdit("denoise_all", denoise_all, frame=True, hidden_in_global_edits=True),
    OverEdit("extra_object", extra_object),
    OverEdit("collateral_patch", collateral_patch),
)}

ALL_FAMILIES = tuple(ARTIFACT_FAMILIES) + tuple(OVER_EDIT_FAMILIES)
DEFAULT_HELDOUT_FAMILIES = ("checkerboard", "frame_shift")


def check_families(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` if every one is a known family, else a ValueError naming the unknown ones and the known ones."""
    unknown = [n for n in names if n not in ALL_FAMILIES]
    if unknown:
        raise ValueError(f"heldout_families={list(names)}: unknown failure families {unknown}; known: "
                         f"{', '.join(ALL_FAMILIES)}")
    return tuple(names)


@dataclass(frozen=True)
class FailurePools:
    """The artifact and over-edit families one group may draw from (training excludes the held-out ones)."""

    artifacts: tuple[str, ...]
    over_edits: tuple[str, ...]

    @classmethod
    def split(cls, heldout: tuple[str, ...], *, evaluation: bool) -> "FailurePools":
        """Training pools: every family but ``heldout``; evaluation pools: only the held-out ones of each kind
        (all of that kind when none of it is held out)."""
        held = set(check_families(heldout))

        def pick(names):
            chosen = [n for n in names if (n in held) == evaluation]
            if not chosen and not evaluation:
                raise ValueError(f"heldout_families={sorted(held)} holds out every family of a kind "
                                 f"({', '.join(names)}): keep at least one for training")
            return tuple(chosen) if chosen else tuple(names)

        return cls(pick(ARTIFACT_FAMILIES), pick(OVER_EDIT_FAMILIES))
