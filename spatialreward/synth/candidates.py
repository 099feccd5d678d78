"""Candidate kinds: the G edits of one GRPO group, of deliberately spread quality.

Local edits (recolour, add, remove, texture, background) use these eight kinds, in this priority order (a group of
G < 8 candidates takes the first G; G > 8 adds more correct / partial / over-edit / artifact variants):

==================  ===================================================================================
correct             the requested attribute in the intended region, strength 0.85–1, feather jittered
partial             half-done: strength 0.3–0.6, or full strength on only 35–65 % of the region
no_op               nothing changed (the source plus invisible jitter noise)
over_edit           correct, plus a collateral local change elsewhere (recolour, added object, texture)
artifacts           correct, then noise / blur / JPEG blockiness / seams / colour banding, local or global
wrong_attribute     the right place, the wrong attribute (red asked, blue given; another material,
                    background or object; for removals: the object swapped for another one)
wrong_region        the right attribute on the decoy region (the other object, another area; for a
                    background change: the subject instead of the background)
global              correct, plus a whole-image change: a colour cast of the requested colour (recolour),
                    a texture overlay (texture) or a random tone (others). Its region is the whole image.
==================  ===================================================================================

Tone edits (a tone/style change of the whole image) cannot go to a wrong region nor spill globally, so two kinds are
substituted: ``wrong_region`` → ``region_only`` (the tone applied inside a random area only) and ``global`` →
``overdone`` (the tone pushed 1.6–2.3× past the ideal, clipping shadows and highlights).

The diverse recipe also builds *compound* failures (``params["compound"]``), as edit models produce them: a quarter
of ``artifacts`` candidates degrade a half-done edit (partial + artifacts), and a quarter of ``wrong_attribute``
recolours / retextures leak past the region (right place + wrong attribute + leak). The truth scores what they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spatialreward.synth import artifacts as art
from spatialreward.synth import failures as fail
from spatialreward.synth import objects as obj
from spatialreward.synth import operations as ops
from spatialreward.synth import regions as reg
from spatialreward.synth import textures as tex
from spatialreward.synth.truth import diff_mask

KINDS = ("correct", "partial", "no_op", "over_edit", "artifacts", "wrong_attribute", "wrong_region", "global")
GLOBAL_SUBSTITUTES = {"wrong_region": "region_only", "global": "overdone"}
ALL_KINDS = KINDS + tuple(GLOBAL_SUBSTITUTES.values())
_EXTRA_KINDS = ("correct", "partial", "over_edit", "artifacts")
COMPOUND_SHARE = 0.25  # diverse recipe: share of artifacts / wrong-attribute candidates with a second failure
LEAKY_OPERATIONS = ("recolour", "texture")  # edits painted through a mask, which can spill past it


def kinds_for(count: int, is_global: bool) -> list[str]:
    """The kinds of a group of ``count`` candidates (see the module docstring)."""
    if count < 2:
        raise ValueError(f"a group needs at least 2 candidates, got {count}")
    kinds = list(KINDS[:count]) + [_EXTRA_KINDS[i % len(_EXTRA_KINDS)] for i in range(max(0, count - len(KINDS)))]
    if is_global:
        kinds = [GLOBAL_SUBSTITUTES.get(k, k) for k in kinds]
    return kinds


@dataclass
class Draft:
    """One candidate before measurement: its deliberate ``content`` and the ``edited`` image shown to judges."""

    kind: str
    content: np.ndarray
    edited: np.ndarray
    global_change: bool
    applied: str  # the attribute actually applied ("" for a no-op)
    params: dict[str, Any] = field(default_factory=dict)
    own_ideal: np.ndarray | None = None  # full-strength rendering of what it did, when that is not the ideal


def _feather(rng: np.random.Generator, size: int) -> float:
    """Edge softness of a region edit: a quarter are pasted with a hard edge (less natural), the rest feathered."""
    if rng.random() < 0.25:
        return 0.0
    return float(rng.uniform(0.5, 1.6) * size / 224)


def _render(op, plan: ops.EditPlan, image: np.ndarray, attribute: str, region: reg.Region, feather: float,
            params: dict) -> tuple[np.ndarray, np.ndarray]:
    if op.name == "remove" and attribute == "remove":
        mix = params.setdefault("fill_mix", round(float(params.pop("_fill_mix", 0.0)), 4))
        return op.render(plan, image, attribute, region, feather, fill_mix=mix)
    return op.render(plan, image, attribute, region, feather)


def _strength_blend(source: np.ndarray, full: np.ndarray, strength) -> np.ndarray:
    if isinstance(strength, np.ndarray):
        strength = strength[..., None]
    return np.clip(source + strength * (full - source), 0, 1).astype(np.float32)


def choose_wrong_attribute(rng: np.random.Generator, op, plan: ops.EditPlan, ideal: np.ndarray) -> str:
    """An alternative attribute whose change points away from the ideal one (cosine < 0.35 over the intended
    region); among four random alternatives, the first that does, else the least aligned."""
    s, m = plan.source, plan.region.mask
    target = (ideal - s)[m].ravel()
    best, best_cos = plan.alternatives[0], 2.0
    for i in rng.permutation(len(plan.alternatives))[:4]:
        alt = plan.alternatives[int(i)]
        full, _ = op.render(plan, s, alt, plan.region, 1.0 * s.shape[0] / 224)
        d = (full - s)[m].ravel()
        cos = float(d @ target) / (np.linalg.norm(d) * np.linalg.norm(target) + 1e-9)
        if cos < 0.35:
            return alt
        if cos < best_cos:
            best, best_cos = alt, cos
    return best


def _free_region(rng: np.random.Generator, image: np.ndarray, avoid: np.ndarray) -> reg.Region:
    """An area region that does not touch ``avoid`` (dilated by a few pixels); the least overlapping of six tries."""
    size = image.shape[0]
    grown = reg.dilate(avoid, max(2, size // 40))
    best, best_overlap = None, None
    for _ in range(6):
        region = reg.area_region(rng, image, reg.pick_cell(rng))
        overlap = int((region.mask & grown).sum())
        if overlap == 0:
            return region
        if best_overlap is None or overlap < best_overlap:
            best, best_overlap = region, overlap
    return reg.Region(mask=best.mask & ~grown, shape=best.shape, position=best.position, box=best.box)


def collateral(rng: np.random.Generator, plan: ops.EditPlan, image: np.ndarray) -> tuple[np.ndarray, str]:
    """A change nobody asked for, away from the intended region (inside the subject for background edits)."""
    size = image.shape[0]
    if plan.operation == "background":
        mask = reg.half_cut(rng, plan.decoy.mask, keep=(0.5, 0.9))
        region = reg.Region(mask=mask, shape="subject", position="centre", box=plan.decoy.box)
    elif plan.is_global:
        region = reg.area_region(rng, image, reg.pick_cell(rng))
    else:
        region = _free_region(rng, image, plan.region.mask)
    what = ("recolour", "add", "texture")[int(rng.integers(3))] if plan.operation != "background" else "recolour"
    feather = _feather(rng, size)
    if what == "recolour":
        colour = obj.CHROMATIC[int(rng.integers(len(obj.CHROMATIC)))]
        full = ops._blend(image, ops.colourise(image, colour), reg.soft_alpha(region.mask, feather))
        return full, f"recolour:{colour}"
    if what == "add":
        kind = obj.OBJECT_KINDS[int(rng.integers(len(obj.OBJECT_KINDS)))]
        colour = list(obj.COLOURS)[int(rng.integers(len(obj.COLOURS)))]
        box = reg.cell_box(rng, size, reg.cell_of(region.position), (0.45, 0.7))
        spec = obj.ObjectSpec(kind, colour, box)
        full, _, support = obj.paste_object(image, spec)
        if plan.region.mask.any() and not plan.is_global:  # keep the intended region itself untouched
            keep = reg.dilate(plan.region.mask, 1)
            full = np.where(keep[..., None], image, full)
        return full, f"add:{colour}:{kind}"
    material = list(tex.MATERIALS)[int(rng.integers(len(tex.MATERIALS)))]
    fill = ops.shade_fill(tex.material(rng, material, size), image, region.mask)
    return ops._blend(image, fill, reg.soft_alpha(region.mask, feather)), f"texture:{material}"


def _global_spill(rng: np.random.Generator, plan: ops.EditPlan, image: np.ndarray) -> tuple[np.ndarray, str]:
    """A whole-image change on top of an edit (the "re-rendered everything" failure)."""
    if plan.operation == "recolour":
        amount = rng.uniform(0.3, 0.5)
        return _strength_blend(image, ops.colourise(image, plan.attribute), amount), f"colour cast {amount:.2f}"
    if plan.operation == "texture":
        fill = plan.fill(plan.attribute, lambda r: tex.material(r, plan.attribute, image.shape[0]))
        amount = rng.uniform(0.2, 0.35)
        whole = np.ones(image.shape[:2], dtype=bool)
        return _strength_blend(image, ops.shade_fill(fill, image, whole), amount), f"texture overlay {amount:.2f}"
    key = list(ops.TONES)[int(rng.integers(len(ops.TONES)))]
    amount = rng.uniform(0.6, 1.0)
    return _strength_blend(image, ops.tone(image, key), amount), f"tone {key} {amount:.2f}"


MIN_ARTIFACT_RMS = 0.012  # ≈ 3/255 over the degraded area: below it, blur on a flat region is no artifact at all


def _add_artifacts(rng: np.random.Generator, plan: ops.EditPlan, content: np.ndarray, params: dict) -> np.ndarray:
    """Degrade ``content`` visibly: draw a degradation; when it barely changes anything (blur on a flat area),
    draw again (up to 4 times), and at last fall back to strong noise, which always shows."""
    s, size = plan.source, plan.source.shape[0]
    for attempt in range(5):
        art_kind = art.ARTIFACT_TYPES[int(rng.integers(len(art.ARTIFACT_TYPES)))] if attempt < 4 else "noise"
        severity = float(rng.uniform(0.45, 1.0)) if attempt < 4 else 1.0
        local = not plan.is_global and (art_kind == "seams" or rng.random() < 0.6)
        if local:
            area = diff_mask(s, content)
            area = reg.dilate(area if area.any() else plan.region.mask, max(1, size // 75))
        elif art_kind == "seams":  # a global edit still gets its seam somewhere: around a random area
            area = plan.decoy.mask
        else:
            area = None
        edited = art.degrade(rng, content, art_kind, severity, area)
        where = area if area is not None else np.ones(s.shape[:2], dtype=bool)
        if float(np.sqrt(((edited - content)[where] ** 2).mean())) >= MIN_ARTIFACT_RMS:
            break
    params.update(artifact=art_kind, severity=round(severity, 4), scope="local" if area is not None else "global")
    return edited


MIN_ARTIFACT_EVIDENCE = 0.12  # the truth's artifact exponent: 25·e^−0.12 ≈ 22.2, below what jitter alone costs


def artifact_evidence(content: np.ndarray, edited: np.ndarray, where: np.ndarray | None) -> float:
    """The exponent the truth's artifacts sub-score would give ``edited`` over ``content`` (luma SSIM loss over the
    frame and over ``where``, chroma SSIM loss): how visible a degradation is, before jitter."""
    from spatialreward.synth.truth import _chroma, _luma, _ssim_map

    ssim = _ssim_map(_luma(edited), _luma(content))
    local = ssim[where] if where is not None and where.any() else ssim
    chroma = np.mean([1.0 - _ssim_map(_chroma(edited, k), _chroma(content, k)).mean() for k in (1, 2)])
    return float(3.0 * (1.0 - ssim.mean()) + 1.5 * (1.0 - local.mean()) + 6.0 * max(float(chroma), 0.0))


def _family_artifacts(rng: np.random.Generator, plan: ops.EditPlan, content: np.ndarray, params: dict,
                      families: tuple[str, ...]) -> np.ndarray:
    """Degrade ``content`` with one of ``families`` (`failures.ARTIFACT_FAMILIES`) at a random strength, local to
    the edit (60 % of local edits) or over the frame. The strength spreads from faint to strong on purpose: the
    truth scores the evidence (E − C), so a faint artifact is labelled nearly clean. A draw whose evidence stays
    under `MIN_ARTIFACT_EVIDENCE` (blur on a flat area; a few pixels on a tone edit, judged over the frame) is
    redrawn stronger, up to 4 times: an artifact candidate must be visibly worse than the jitter every candidate
    gets."""
    s, size = plan.source, plan.source.shape[0]
    strength = float(rng.uniform(0.3, 1.0))
    for _ in range(4):
        name = families[int(rng.integers(len(families)))]
        family = fail.ARTIFACT_FAMILIES[name]
        local = family.local_only or (not plan.is_global and rng.random() < 0.6)
        if local and not plan.is_global:
            area = diff_mask(s, content)
            area = reg.dilate(area if area.any() else plan.region.mask, max(1, size // 75))
        elif local:
            area = plan.decoy.mask
        else:
            area = None
        p: dict[str, Any] = {}
        edited = fail.degrade(rng, content, name, strength, area, p)
        if artifact_evidence(content, edited, None if plan.is_global else area) >= MIN_ARTIFACT_EVIDENCE:
            break
        strength = min(1.0, strength + 0.3)
    params.update(family=name, strength_failure=round(strength, 4), scope="local" if area is not None else "global",
                  family_params=p)
    return edited


def _family_over_edit(rng: np.random.Generator, plan: ops.EditPlan, content: np.ndarray, params: dict,
                      families: tuple[str, ...]) -> tuple[np.ndarray, bool]:
    """``content`` plus an over-edit of one of ``families``; returns it and whether it changed the whole frame.
    Tone edits skip frame-wide filters (their consistency measure cannot tell those from the tone itself)."""
    if plan.is_global:
        families = tuple(f for f in families if not fail.OVER_EDIT_FAMILIES[f].hidden_in_global_edits) or families
    name = families[int(rng.integers(len(families)))]
    family = fail.OVER_EDIT_FAMILIES[name]
    strength = float(rng.uniform(0.25, 1.0))
    protect = np.zeros(content.shape[:2], bool) if plan.is_global else plan.region.mask

    def free_region() -> reg.Region:
        if plan.is_global:
            return reg.area_region(rng, content, reg.pick_cell(rng))
        return _free_region(rng, content, plan.region.mask)

    p: dict[str, Any] = {}
    out = family.apply(rng, content, strength, {"plan": plan, "protect": protect, "free_region": free_region}, p)
    params.update(family=name, strength_failure=round(strength, 4), family_params=p)
    return np.clip(out, 0, 1).astype(np.float32), family.frame


def make_candidate(rng: np.random.Generator, op, plan: ops.EditPlan, kind: str, ideal: np.ndarray,
                   failures: fail.FailurePools | None = None) -> Draft:
    """Build one candidate of ``kind`` (before jitter and quantisation). ``failures`` draws artifacts and
    over-edits from those families (the diverse recipe); None keeps the classic generator's five artifact types
    and its collateral over-edit (byte-identical to ``synth-v1``)."""
    s = plan.source
    size = s.shape[0]
    params: dict[str, Any] = {}
    if op.name == "remove":
        params["_fill_mix"] = rng.uniform(0.0, 0.35)

    def correct(strength_range=(0.85, 1.0)) -> tuple[np.ndarray, float]:
        feather = _feather(rng, size)
        full, _ = _render(op, plan, s, plan.attribute, plan.region, feather, params)
        strength = float(rng.uniform(*strength_range))
        params.update(strength=round(strength, 4), feather=round(feather, 3))
        return _strength_blend(s, full, strength), strength

    global_change = plan.is_global
    applied = plan.attribute
    own_ideal = None
    if kind == "no_op":
        content, applied, global_change = s.copy(), "", False
        params.pop("_fill_mix", None)
    elif kind == "correct":
        content, _ = correct()
    elif kind == "partial":
        if plan.is_global or rng.random() < 0.5:
            content, _ = correct((0.3, 0.6))
            params["partial"] = "faint"
        else:
            full, support = _render(op, plan, s, plan.attribute, plan.region, _feather(rng, size), params)
            cut = reg.half_cut(rng, support > 0.5)
            weight = reg.soft_alpha(cut, 1.0 * size / 224)
            content = _strength_blend(s, full, weight)
            params.update(partial="cut", kept=round(float(cut.sum() / max((support > 0.5).sum(), 1)), 4))
    elif kind in ("wrong_region", "region_only"):
        feather = _feather(rng, size)
        full, _ = _render(op, plan, s, plan.attribute, plan.decoy, feather, params)
        strength = float(rng.uniform(0.85, 1.0))
        content = _strength_blend(s, full, strength)
        params.update(strength=round(strength, 4), region=plan.decoy.position)
        global_change, own_ideal = False, full
    elif kind == "wrong_attribute":
        applied = choose_wrong_attribute(rng, op, plan, ideal)
        region = plan.region
        if failures is not None and op.name in LEAKY_OPERATIONS and rng.random() < COMPOUND_SHARE:
            leak = max(2, size // 16)  # ~14 px at 224: the paint runs well past the region's edge
            region = reg.Region(mask=reg.dilate(region.mask, leak), shape=region.shape, position=region.position,
                                box=region.box)
            params.update(compound="leak", leak_px=leak)
        full, _ = _render(op, plan, s, applied, region, _feather(rng, size), params)
        strength = float(rng.uniform(0.85, 1.0))
        content = _strength_blend(s, full, strength)
        params["strength"] = round(strength, 4)
        own_ideal = full
    elif kind == "over_edit" and failures is not None:
        content, _ = correct()
        content, frame = _family_over_edit(rng, plan, content, params, failures.over_edits)
        global_change = global_change or frame
    elif kind == "over_edit":
        content, _ = correct()
        content, what = collateral(rng, plan, content)
        params["collateral"] = what
    elif kind == "global":
        content, _ = correct()
        content, what = _global_spill(rng, plan, content)
        params["global"] = what
        global_change = True
    elif kind == "overdone":
        full, _ = _render(op, plan, s, plan.attribute, plan.region, 1.0, params)
        gain = float(rng.uniform(1.6, 2.3))
        content = _strength_blend(s, full, gain)
        params["gain"] = round(gain, 4)
    elif kind == "artifacts":
        if failures is not None and rng.random() < COMPOUND_SHARE:
            content, _ = correct((0.3, 0.6))  # a half-done edit that is also degraded
            params["compound"] = "partial"
        else:
            content, _ = correct()
    else:
        raise ValueError(f"unknown candidate kind {kind!r}; known: {', '.join(ALL_KINDS)}")
    params.pop("_fill_mix", None)

    edited = content
    if kind == "artifacts" and failures is not None:
        edited = _family_artifacts(rng, plan, content, params, failures.artifacts)
    elif kind == "artifacts":
        edited = _add_artifacts(rng, plan, content, params)
    return Draft(kind=kind, content=content, edited=edited, global_change=global_change, applied=applied,
                 params=params, own_ideal=own_ideal)
