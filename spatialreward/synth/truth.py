"""Ground truth of a synthetic edit: what changed where (mask, boxes), named measurements, and four sub-scores.

We know every part of a candidate: the source S, the deliberate *content* C (the edit, before any degradation),
the edited image E the student sees (C plus artifacts, quantised to uint8), the ideal edit T (requested attribute,
intended region, full strength) and the intended mask M. The measures compare them; the sub-scores are smooth
functions of the measures, so scores spread continuously and a better edit always scores higher.

Change mask and boxes
    ``diff = gauss(mean_c |C − S|, σ=0.7) > 0.03`` (≈ 8/255), components under 0.2 % of the image dropped, the 4
    largest kept. Boxes are their bounding boxes in 0–1000 (`spatialreward.boxes.mask_to_boxes`), largest first.
    A no-op has none; a candidate whose deliberate change is global (a tone, a colour cast) has the whole image
    ``[[0, 0, 1000, 1000]]`` and an all-true mask. Artifacts are measured from E − C and never make a region.

Measures (all unitless, images in [0, 1])
    coverage        |diff ∩ M| / |M|: how much of the intended region changed.
    progress        ⟨C−S, T−S⟩ / ‖T−S‖² over M: how far along the ideal change the edit went (1 = all the way,
                    2 = twice as far).
    match           on the pixels of M where C differs from S (> 0.004): 1 − Σ|(C−S) − k(T−S)| / Σ|k(T−S)|, k the
                    least-squares scale. Whether what changed, changed *the right way*, whatever its strength
                    (wrong colour, material or background → low; 0 when nothing in M changed).
    direction       informational: cosine(C−S, T−S) on the same pixels.
    hue_error_deg   recolours only, informational: hue angle between the edit's mean colour in M and the
                    requested colour.
    leak_fraction   share of the image that changed outside M (dilated 2 px); for global edits, the share whose
                    change no smooth global colour map explains (robust cubic fit of S → C at half resolution,
                    residual > 0.045).
    leak_energy     sum of |C − S| outside M (global edits: of the unexplained residual) / number of pixels.
    seam            outline sharpness of C minus that of S + gauss(C − S, σ=1 px) on the change outline (luma), minus
                    the same for T′: a hard-pasted patch scores high, a feathered one ~0. T′ is the full-strength
                    rendering of what the candidate did (T itself, or the wrong attribute / wrong region).
    smear           texture lost inside the change: 1 − HF(C) / min(HF(T′), HF(S) on a ring around it), clipped
                    to [0, 1], HF(x) = |luma − gauss(luma, 1)| (a blurry inpainting fill scores high).
    clip_excess     share of near-black/near-white luma pixels in the change beyond max(S, T′) (overdone tones).
    ssim_loss       1 − SSIM(E, C) on luma (7×7 window, as skimage), whole image; ``ssim_loss_local``: the same
                    over the edited area (dilated diff ∪ M; the whole image for global edits).
    residual_rms, blockiness, changed_fraction   informational: RMS of E − C; 8×8 block-edge step excess of E
                    over C; share of the image in the change mask.

Sub-scores (0–25, higher is better). Instruction following, consistency and naturalness judge the deliberate
content C; artifacts judge the degradation E − C.
    instruction_following = 25 · (0.15 · coverage + 0.85 · sqrt(aligned · amount)),
                            aligned = clip((match − 0.2) / 0.6, 0, 1), amount = progress if ≤ 1 else 1/progress
    consistency           = 25 / (1 + 6 · (leak_fraction + 5 · leak_energy))
    naturalness           = 25 · exp(−(10 · seam + 1.5 · smear + 4 · clip_excess))
    artifacts             = 25 · exp(−(3 · ssim_loss + 1.5 · ssim_loss_local + 6 · chroma_loss)), chroma_loss
                            (colour bleeding the luma SSIM cannot see) measured in the diverse recipe only
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spatialreward.boxes import mask_to_boxes
from spatialreward.synth import regions as reg
from spatialreward.types import SCORE_MAX

CHANGE_THRESHOLD = 0.03
MAX_BOXES = 4
MIN_AREA_FRACTION = 0.002


def min_area(size: int) -> int:
    """Smallest component kept as an edit region: 0.2 % of the image (100 px at 224²), at least 4 px."""
    return max(4, int(round(MIN_AREA_FRACTION * size * size)))


def _absdiff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b).mean(axis=2)


def diff_mask(source: np.ndarray, content: np.ndarray, *, keep: int | None = None,
              change: np.ndarray | None = None) -> np.ndarray:
    """Where the deliberate content changed: thresholded smoothed difference, components under `min_area`
    dropped; with ``keep``, only the ``keep`` largest components. ``change`` may pass ``mean_c |C − S|`` in."""
    return diff_masks(source, content, keeps=(keep,), change=change)[0]


def diff_masks(source: np.ndarray, content: np.ndarray, *, keeps: tuple[int | None, ...],
               change: np.ndarray | None = None) -> list[np.ndarray]:
    """`diff_mask` for several ``keep`` values at the cost of one labelling."""
    d = ndimage.gaussian_filter(_absdiff(content, source) if change is None else change, 0.7)
    return largest_components(d > CHANGE_THRESHOLD, keeps=keeps, min_pixels=min_area(source.shape[0]))


def largest_components(mask: np.ndarray, *, keeps: tuple[int | None, ...], min_pixels: int) -> list[np.ndarray]:
    """For each ``keep``: ``mask`` without components under ``min_pixels``, with only the ``keep`` largest (all
    when None). Components are 8-connected, as in `spatialreward.boxes.mask_to_boxes`."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return [mask.copy() for _ in keeps]
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-areas, kind="stable")
    good = [i + 1 for i in order if areas[i] >= min_pixels]
    out = []
    for keep in keeps:
        lut = np.zeros(n + 1, dtype=bool)
        lut[good if keep is None else good[:keep]] = True
        out.append(lut[labels])
    return out


def boxes_of(mask: np.ndarray) -> list[list[float]]:
    """0–1000 boxes of a change mask, largest first (the truth ``boxes``)."""
    b = mask_to_boxes(mask, min_area=min_area(mask.shape[0]), max_boxes=MAX_BOXES)
    return [[round(float(v), 3) for v in row] for row in b]


# ---------------------------------------------------------------------------------------------------------------
# Image statistics
# ---------------------------------------------------------------------------------------------------------------


def _grad(y: np.ndarray) -> np.ndarray:
    """L1 gradient magnitude of a luma image ``[H, W]`` (forward differences, edge-padded)."""
    return np.abs(np.diff(y, axis=1, append=y[:, -1:])) + np.abs(np.diff(y, axis=0, append=y[-1:]))


@dataclass
class Reference:
    """Per-group statistics of S and T, computed once and shared by the group's candidates."""

    source: np.ndarray
    ideal: np.ndarray
    intended: np.ndarray
    is_global: bool
    seam_ideal: float  # the ideal edit's own outline sharpness (objects have crisp edges; that is natural)
    hf_source: np.ndarray
    hf_ideal: np.ndarray
    clip_source: np.ndarray
    clip_ideal: np.ndarray
    outside: np.ndarray  # outside the dilated intended region
    box: tuple[slice, slice]  # bounding box of the intended region
    ideal_delta: np.ndarray  # T − S on the intended pixels, [N, 3]
    target_hue: float | None = None


def _sharp(x: np.ndarray) -> np.ndarray:
    """Edge sharpness of an RGB image, on luma: |∇y| − |∇ gauss(y, 1)| (high on hard steps, ~0 on soft ones)."""
    y = _luma(x)
    return _grad(y) - _grad(ndimage.gaussian_filter(y, 1.0))


def _hf(x: np.ndarray) -> np.ndarray:
    """High-frequency detail ``[H, W]`` of an RGB image: |luma − gauss(luma, 1)|."""
    return _hf_luma(_luma(x))


def _hf_luma(y: np.ndarray) -> np.ndarray:
    return np.abs(y - ndimage.gaussian_filter(y, 1.0))


def _luma(x: np.ndarray) -> np.ndarray:
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def _clipped(x: np.ndarray) -> np.ndarray:
    return _clipped_luma(_luma(x))


def _clipped_luma(y: np.ndarray) -> np.ndarray:
    return (y <= 0.02) | (y >= 0.98)


def _band(mask: np.ndarray, r: int) -> np.ndarray:
    return reg.dilate(mask, r) & ~reg.erode(mask, r)


def _crop_box(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    h, w = mask.shape
    return slice(max(ys[0] - pad, 0), min(ys[-1] + pad + 1, h)), slice(max(xs[0] - pad, 0), min(xs[-1] + pad + 1, w))


def outline_seam(source: np.ndarray, content: np.ndarray, diff: np.ndarray) -> float:
    """How much sharper the change's outline is than the same change softened (C − S blurred, σ = 1 px at 224).

    A pasted patch with a hard edge scores high, a feathered edit low. Texture inside the change adds the same
    amount to a candidate and to its ideal, whose value `measure` subtracts.
    """
    if not diff.any() or diff.mean() > 0.6:  # no outline, or a global change: nothing pasted to seam
        return 0.0
    size = source.shape[0]
    r = max(1, int(round(size / 224)))
    # Work on the change's bounding box only (plus room for the filters): most edits are small.
    ys, xs = _crop_box(diff, 6 * r)
    band = _band(diff[ys, xs], r)
    if not band.any():
        return 0.0
    src, con = source[ys, xs], content[ys, xs]
    sigma = 1.0 * size / 224
    softened = src + ndimage.gaussian_filter(con - src, (sigma, sigma, 0))
    excess = _sharp(con)[band] - _sharp(softened)[band]
    return float(np.clip(excess, 0, None).mean())


def reference(source: np.ndarray, ideal: np.ndarray, intended: np.ndarray, *, is_global: bool,
              target_hue: float | None = None) -> Reference:
    size = source.shape[0]
    margin = max(1, int(round(2 * size / 224)))
    ym, xm = _crop_box(intended, 0)
    return Reference(
        box=(ym, xm), ideal_delta=(ideal[ym, xm] - source[ym, xm])[intended[ym, xm]],
        source=source, ideal=ideal, intended=intended, is_global=is_global,
        seam_ideal=outline_seam(source, ideal, diff_mask(source, ideal, keep=None)),
        hf_source=_hf(source), hf_ideal=_hf(ideal),
        clip_source=_clipped(source), clip_ideal=_clipped(ideal),
        outside=~reg.dilate(intended, margin),
        target_hue=target_hue,
    )


def _ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM map of two ``[H, W]`` images in [0, 1]: 7×7 uniform window and the constants of Wang et al. (2004),
    as ``skimage.metrics.structural_similarity`` computes it by default."""
    c1, c2 = 0.01**2, 0.03**2
    f = lambda x: ndimage.uniform_filter(x, 7)  # noqa: E731
    mu_a, mu_b = f(a), f(b)
    saa = f(a * a) - mu_a * mu_a
    sbb = f(b * b) - mu_b * mu_b
    sab = f(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))


def _poly_features(x: np.ndarray) -> np.ndarray:
    """Cubic colour features ``[N, 20]`` of pixels ``[N, 3]`` (all monomials of r, g, b up to degree 3)."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    one = np.ones_like(r)
    feats = [one, r, g, b, r * r, g * g, b * b, r * g, r * b, g * b,
             r**3, g**3, b**3, r * r * g, r * r * b, g * g * r, g * g * b, b * b * r, b * b * g, r * g * b]
    return np.stack(feats, axis=1)


def unexplained_residual(source: np.ndarray, content: np.ndarray) -> np.ndarray:
    """``[H, W]`` mean |C − f(S)| for the best smooth global colour map f (cubic, fit twice: the second fit
    ignores pixels the first could not explain, so a local change does not bend the fit)."""
    h, w, _ = source.shape
    feats = _poly_features(source.reshape(-1, 3))  # [N, 20] float32
    ys = content.reshape(-1, 3)
    sample = np.arange(0, h * w, 2)  # every other pixel is plenty for 20 coefficients
    keep = sample
    for _ in range(2):
        a = feats[keep].astype(np.float64)
        # Normal equations with a tiny ridge: a 20×20 solve instead of an SVD of the whole design matrix.
        coef = np.linalg.solve(a.T @ a + 1e-6 * np.eye(a.shape[1]), a.T @ ys[keep].astype(np.float64))
        resid = np.abs(feats @ coef.astype(np.float32) - ys).mean(axis=1)
        good = resid[sample] < max(0.02, 2.0 * float(np.median(resid[sample])))
        keep = sample[good] if good.sum() > 200 else sample
    return resid.reshape(h, w).astype(np.float32)


def _hue_error(edited: np.ndarray, mask: np.ndarray, target_hue: float) -> float:
    from spatialreward.synth.objects import hue_distance, hue_of

    if not mask.any():
        return 180.0
    mean = edited[mask].mean(axis=0)
    return round(hue_distance(float(hue_of(mean)), target_hue), 2)


# ---------------------------------------------------------------------------------------------------------------
# Measures and scores
# ---------------------------------------------------------------------------------------------------------------


def measure(ref: Reference, content: np.ndarray, edited: np.ndarray, diff: np.ndarray,
            own_ideal: np.ndarray | None = None, change: np.ndarray | None = None,
            chroma: bool = False) -> dict[str, float]:
    """All named measures of one candidate (see the module docstring). ``diff`` is the content's change mask.

    ``own_ideal`` is the full-strength rendering of what the candidate actually did when that differs from the
    ideal (another attribute, another region): naturalness judges how well it did *that* (a gravel fill is not a
    smear because sand was asked); instruction following judges whether it was the right thing.

    ``chroma`` adds ``chroma_loss`` (1 − SSIM of E and C on the two chroma planes, averaged), which the artifacts
    sub-score then uses: luma SSIM alone is blind to colour bleeding. The classic recipe leaves it out (its bytes
    stay those of ``synth-v1``).
    """
    s, m = ref.source, ref.intended
    change = _absdiff(content, s) if change is None else change  # [H, W] mean_c |C − S|
    if own_ideal is not None:
        hf_own, clip_own = _hf(own_ideal), _clipped(own_ideal)
        seam_own = outline_seam(s, own_ideal, diff_mask(s, own_ideal))
    else:
        hf_own, clip_own, seam_own = ref.hf_ideal, ref.clip_ideal, ref.seam_ideal
    size = s.shape[0]
    n_pixels = float(size * size)
    coverage = float((diff & m).sum()) / max(int(m.sum()), 1)

    ym, xm = ref.box  # the intended region's bounding box: all of the image only for global edits
    mc = m[ym, xm]
    # Instruction following judges the deliberate content C (artifacts are judged apart, from E − C).
    dc = (content[ym, xm] - s[ym, xm])[mc]  # [N, 3]
    tt = ref.ideal_delta  # [N, 3]
    tt2, dtt = float((tt * tt).sum()), float((dc * tt).sum())
    progress = dtt / tt2 if tt2 > 1e-9 else 0.0
    # Direction and match only where the candidate changed something: half a region done right is aligned, not
    # half-aligned (coverage and progress already say "half").
    acted = (change[ym, xm] > 0.004)[mc]  # not `diff`: a faint global tone is below its threshold
    dca, tta = dc[acted], tt[acted]
    dd2a, tt2a, dta = float((dca * dca).sum()), float((tta * tta).sum()), float((dca * tta).sum())
    direction = dta / math.sqrt(dd2a * tt2a) if dd2a > 1e-9 and tt2a > 1e-9 else 0.0
    # Match: the change's pattern against the ideal's at the best scale k (so faint or overdone still match, a
    # brick wall where a wooden one was asked does not, even when both erase the same busy background).
    if tt2a > 1e-9:
        k = max(dta / tt2a, 0.0)
        match = 1.0 - float(np.abs(dca - k * tta).sum()) / max(float(np.abs(k * tta).sum()), 1e-9)
    else:
        match = 0.0

    # Consistency: change nobody asked for, as a share of the whole image.
    if ref.is_global:
        # Half resolution is plenty for a share of the image, and four times cheaper.
        resid = unexplained_residual(s[::2, ::2], content[::2, ::2])
        unexplained = ndimage.gaussian_filter(resid, 0.5) > 1.5 * CHANGE_THRESHOLD
        leak_fraction = float(unexplained.mean())
        leak_energy = float((resid * unexplained).mean())
    else:
        outside = ref.outside
        leak_fraction = float((diff & outside).sum()) / n_pixels
        leak_energy = float(change[outside].sum()) / n_pixels

    # Naturalness of the deliberate content: outline seams, texture smear, clipping — all on the change's
    # neighbourhood (a crop: most changes are small).
    luma_e, luma_c = _luma(edited), _luma(content)
    r = max(1, int(round(size / 224)))
    if diff.any():
        seam = max(0.0, outline_seam(s, content, diff) - seam_own)
        ys, xs = _crop_box(diff, 5 * r)
        d = diff[ys, xs]
        ring = reg.dilate(d, 4 * r) & ~reg.dilate(d, r)
        hf_in = float(_hf_luma(luma_c[ys, xs])[d].mean())
        hf_ref = float(hf_own[ys, xs][d].mean())
        if ring.any():
            hf_ref = min(hf_ref, float(ref.hf_source[ys, xs][ring].mean()))
        smear = float(np.clip(1.0 - (hf_in + 0.002) / (hf_ref + 0.002), 0, 1))
        clip_now = float(_clipped_luma(luma_c[ys, xs])[d].mean())
        clip_ref = max(float(ref.clip_source[ys, xs][d].mean()), float(clip_own[ys, xs][d].mean()))
        clip_excess = max(0.0, clip_now - clip_ref)
    else:
        seam = smear = clip_excess = 0.0

    # Artifacts: structure lost between the deliberate content and what the viewer gets.
    ssim = _ssim_map(luma_e, luma_c)
    ssim_loss = float(1.0 - ssim.mean())
    if ref.is_global:
        ssim_loss_local = ssim_loss
    else:
        near = diff | m
        ys, xs = _crop_box(near, 3 * r)
        ssim_loss_local = float(1.0 - ssim[ys, xs][reg.dilate(near[ys, xs], 3 * r)].mean())
    residual = edited - content
    residual_rms = float(np.sqrt((residual**2).mean()))
    blockiness = _blockiness(luma_e) - _blockiness(luma_c)

    out = {
        "coverage": coverage, "progress": progress, "direction": direction, "match": max(match, -1.0),
        "leak_fraction": leak_fraction, "leak_energy": leak_energy,
        "seam": seam, "smear": smear, "clip_excess": clip_excess,
        "ssim_loss": max(ssim_loss, 0.0), "ssim_loss_local": max(ssim_loss_local, 0.0),
        "residual_rms": residual_rms, "blockiness": blockiness,
        "changed_fraction": float(diff.mean()),
    }
    if ref.target_hue is not None:
        out["hue_error_deg"] = _hue_error(edited, diff & m, ref.target_hue)
    if chroma:
        out["chroma_loss"] = max(0.0, float(np.mean([1.0 - _ssim_map(_chroma(edited, k), _chroma(content, k)).mean()
                                                     for k in (1, 2)])))
    return {k: round(float(v), 5) for k, v in out.items()}


def _chroma(x: np.ndarray, k: int) -> np.ndarray:
    """Chroma plane ``k`` (1 = Cb, 2 = Cr) of an RGB image, shifted to [0, 1] like luma (for `_ssim_map`)."""
    w = ((-0.1687, -0.3313, 0.5), (0.5, -0.4187, -0.0813))[k - 1]
    return 0.5 + w[0] * x[..., 0] + w[1] * x[..., 1] + w[2] * x[..., 2]


def _blockiness(x: np.ndarray) -> float:
    """Mean |step| across 8-px block edges minus the mean |step| elsewhere (JPEG blocking makes it positive);
    ``x`` is a luma image ``[H, W]``."""
    steps = np.abs(np.diff(x, axis=1))  # [H, W-1]; step j is between columns j and j+1
    cols = np.arange(steps.shape[1])
    at_edge = (cols % 8) == 7
    return float(steps[:, at_edge].mean() - steps[:, ~at_edge].mean())


def subscores(m: dict[str, float]) -> list[float]:
    """``[instruction_following, consistency, naturalness, artifacts]`` in 0–25 from the measures."""
    aligned = min(max((m["match"] - 0.2) / 0.6, 0.0), 1.0)  # match 0.2 → 0, 0.8 → 1
    p = max(m["progress"], 0.0)
    amount = p if p <= 1.0 else 1.0 / p  # going twice as far as asked counts like going half way
    follow = 0.15 * m["coverage"] + 0.85 * math.sqrt(aligned * amount)
    s1 = SCORE_MAX * min(max(follow, 0.0), 1.0)
    s2 = SCORE_MAX / (1.0 + 6.0 * (m["leak_fraction"] + 5.0 * m["leak_energy"]))
    s3 = SCORE_MAX * math.exp(-(10.0 * m["seam"] + 1.5 * m["smear"] + 4.0 * m["clip_excess"]))
    s4 = SCORE_MAX * math.exp(-(3.0 * m["ssim_loss"] + 1.5 * m["ssim_loss_local"] + 6.0 * m.get("chroma_loss", 0.0)))
    return [round(min(max(v, 0.0), SCORE_MAX), 3) for v in (s1, s2, s3, s4)]
