"""Named student sizes, registered like timm's ``@register_model``: a name maps to a function returning a config.

A preset function only returns a `StudentConfig` (caller overrides win); `build_student` below is the one
builder that turns a preset name or a config into a network. Registering a name twice warns and keeps the newer function, as timm
does, so a notebook can redefine a preset while experimenting.

    >>> from spatialreward.student import list_presets, preset_config
    >>> list_presets()
    ['nano', 'small', 'tiny']
    >>> preset_config("nano", img_size=96).img_size
    96
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace

from spatialreward.student.model import Student, StudentConfig

PresetFn = Callable[..., StudentConfig]
_PRESETS: dict[str, PresetFn] = {}


def register_preset(fn: PresetFn) -> PresetFn:
    """Register ``fn`` under its ``__name__``; a duplicate name warns and the newer function wins."""
    name = fn.__name__
    if name in _PRESETS:
        warnings.warn(f"student preset {name!r} is registered twice; the later definition wins", stacklevel=2)
    _PRESETS[name] = fn
    return fn


def list_presets() -> list[str]:
    """Registered preset names, sorted."""
    return sorted(_PRESETS)


def preset_config(name: str, **overrides) -> StudentConfig:
    """The `StudentConfig` of preset ``name`` with ``overrides`` applied."""
    if name not in _PRESETS:
        raise KeyError(f"unknown student preset {name!r}; choose one of {', '.join(list_presets())}")
    return _PRESETS[name](**overrides)


def build_student(cfg: StudentConfig | str, **overrides) -> Student:
    """The one builder: a config (or a preset name plus overrides) → a `Student` in train mode."""
    if isinstance(cfg, str):
        cfg = preset_config(cfg, **overrides)
    elif overrides:
        cfg = replace(cfg, **overrides)
    return Student(cfg)


# ---------------------------------------------------------------------------------------------------------------
# Presets. Widths follow DeiT (ViT-Ti 192, ViT-S 384; Touvron et al. 2021); nano is ours.
# ---------------------------------------------------------------------------------------------------------------


@register_preset
def nano(**overrides) -> StudentConfig:
    """Smallest student, sized to distil to the targets within 30 minutes on a 2-core CPU.

    The ViT sees 112 px with patch 16, a 7×7 token grid (49 tokens per stream), so one forward + backward of an
    8-edit group costs tens of milliseconds; the mask head subdivides each token 4× to place box edges finer than
    16 px. The model takes 224 px (``quality_scale=2``): the ViT sees it average-pooled, and weight-free pixel
    statistics (``pixel_detail``) see every pixel, where artifacts live. The decoder is light (the cross-attention
    MLP on the two pooled rows, a narrow change MLP, no change block), so scoring a group's candidates against its
    cached source costs less than encoding them; at the 30-minute budget it made 16 % more steps and matched the
    full decoder on the generalisation report. Against `nano_v1` (112 px, no pixel statistics), 30 minutes on the
    10,000-group diverse set: see the README's issue-16 section.
    """
    cfg = replace(nano_v1(), pixel_stats=True, pixel_detail=True, quality_scale=2, quality_dim=0,
                  cross_mlp="pooled", change_mlp_ratio=1.0, change_depth=0)
    return replace(cfg, **overrides)


@register_preset
def nano_v1(**overrides) -> StudentConfig:
    """`nano` before 2026-12-07: 112-px input, no pixel statistics; the preset of the README's earlier fidelity
    reports (their scripts take ``PRESET=nano_v1`` to reproduce them).

    Pixel statistics were off because at 112 px they did not help (800 steps on 3000 synthetic groups: held-out
    pairwise accuracy 0.783 with, 0.798 without) and cost ~13 % of the step time; 224 px with patch 32 and pixel
    statistics matched 112 px per step (0.809 vs 0.808) at twice the time per step.
    """
    cfg = StudentConfig(
        img_size=112, patch_size=16, embed_dim=128, depth=4, num_heads=4, mlp_ratio=3.0,
        head_dim=192, cross_heads=4, mask_subdivision=4, pixel_stats=False, region_floor=0.05,
    )
    return replace(cfg, **overrides)


@register_preset
def tiny(**overrides) -> StudentConfig:
    """ViT-Ti width (192, depth 12, 3 heads) at 224 px: the size to distil on one GPU."""
    cfg = StudentConfig(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, head_dim=256, cross_heads=3)
    return replace(cfg, **overrides)


@register_preset
def small(**overrides) -> StudentConfig:
    """ViT-S width (384, depth 12, 6 heads) at 224 px: the largest student, for the real teacher's labels."""
    cfg = StudentConfig(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, head_dim=384, cross_heads=6)
    return replace(cfg, **overrides)
